//! The [`Store`] trait over SQLite: each call is a read on the pool or a
//! job for the writer, running one of the queries of `accounts.rs`,
//! `rooms.rs` or `messages.rs`.

use async_trait::async_trait;

use super::{SqliteStore, accounts, backend, messages, retention, rooms};
use crate::model::{AccountId, Message, RoomId, SessionId};
use crate::store::{
    AccountAcks, AccountHook, AccountRecord, AccountSummary, CommitHook, Conversation, Counts,
    DiskReserve, HookScope, MembershipHook, NewMessage, PendingAppend, Retention, RoomRecord,
    SessionRecord, Store, StoreError, Suspension, hand_to_hook,
};

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(
        &self,
        name: &str,
        key: &str,
        password_hash: &str,
        lobby: RoomId,
        on_commit: AccountHook,
    ) -> Result<AccountId, StoreError> {
        let (name, key, hash) = (name.to_owned(), key.to_owned(), password_hash.to_owned());
        self.write_then(
            move |c| accounts::create(c, &name, &key, &hash, lobby),
            move |value| on_commit(value),
        )
        .await
    }

    async fn account_by_key(&self, key: &str) -> Result<Option<AccountRecord>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| accounts::by_key(c, &key)).await
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        self.read(move |c| accounts::by_id(c, id)).await
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        self.write(move |c| accounts::delete(c, id)).await
    }

    async fn accounts(&self) -> Result<Vec<AccountSummary>, StoreError> {
        self.read(accounts::all).await
    }

    async fn operators(&self) -> Result<Vec<AccountId>, StoreError> {
        self.read(accounts::operators).await
    }

    async fn grant_operator(&self, account: AccountId) -> Result<(), StoreError> {
        self.write(move |c| accounts::grant_operator(c, account))
            .await
    }

    async fn create_session(
        &self,
        token_hash: [u8; 32],
        account: AccountId,
        keep: usize,
    ) -> Result<(SessionId, Vec<SessionId>), StoreError> {
        self.write(move |c| accounts::create_session(c, &token_hash, account, keep))
            .await
    }

    async fn session_by_token(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.read(move |c| accounts::session_by_token(c, &token_hash))
            .await
    }

    async fn delete_session(&self, id: SessionId) -> Result<(), StoreError> {
        self.write(move |c| accounts::delete_session(c, id)).await
    }

    async fn end_sessions(&self, account: AccountId) -> Result<Vec<SessionId>, StoreError> {
        self.write(move |c| accounts::end_sessions(c, account))
            .await
    }

    async fn suspend(
        &self,
        account: AccountId,
        suspension: Suspension,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.write(move |c| accounts::suspend(c, account, &suspension))
            .await
    }

    async fn restore(&self, account: AccountId) -> Result<bool, StoreError> {
        self.write(move |c| accounts::restore(c, account)).await
    }

    async fn prune(&self, rule: Retention, limit: u32) -> Result<u64, StoreError> {
        let cuts = self.read(move |c| retention::cuts(c, rule, limit)).await?;
        self.write(move |c| retention::prune(c, &cuts, limit).map_err(backend))
            .await
    }

    async fn sessions_alive(&self, ids: Vec<SessionId>) -> Result<Vec<SessionId>, StoreError> {
        self.read(move |c| accounts::sessions_alive(c, &ids)).await
    }

    async fn ensure_room(&self, name: &str, key: &str) -> Result<RoomRecord, StoreError> {
        let (name, key) = (name.to_owned(), key.to_owned());
        self.write(move |c| rooms::ensure(c, &name, &key)).await
    }

    async fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        self.read(rooms::all).await
    }

    async fn memberships(&self) -> Result<Vec<(RoomId, AccountId)>, StoreError> {
        self.read(rooms::memberships).await
    }

    async fn rooms_of(&self, account: AccountId) -> Result<Vec<RoomRecord>, StoreError> {
        self.read(move |c| rooms::of_account(c, account)).await
    }

    async fn join(
        &self,
        account: AccountId,
        room: RoomId,
        on_commit: MembershipHook,
    ) -> Result<bool, StoreError> {
        self.write_then(
            move |c| rooms::join(c, account, room).map_err(backend),
            move |joined| on_commit(joined),
        )
        .await
    }

    async fn leave(
        &self,
        account: AccountId,
        room: RoomId,
        on_commit: MembershipHook,
    ) -> Result<bool, StoreError> {
        self.write_then(
            move |c| rooms::leave(c, account, room),
            move |left| on_commit(left),
        )
        .await
    }

    fn append(&self, m: NewMessage, mut on_commit: Box<dyn CommitHook>) -> PendingAppend {
        if self
            .reserve
            .as_ref()
            .is_some_and(DiskReserve::is_nearly_full)
        {
            return Box::pin(std::future::ready(Err(StoreError::NearlyFull)));
        }
        Box::pin(self.queue(
            move |c| {
                let appended = messages::append(c, m).map_err(backend)?;
                Ok((hand_to_hook(appended, &mut *on_commit), on_commit))
            },
            |(stored, on_commit)| {
                on_commit.committed();
                stored
            },
            false,
        ))
    }

    async fn pending(
        &self,
        account: AccountId,
        after: u64,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        self.read(move |c| messages::pending(c, account, after, up_to, limit))
            .await
    }

    async fn last_message_id(&self) -> Result<u64, StoreError> {
        self.read(messages::last_id).await
    }

    async fn ack(&self, acks: Vec<AccountAcks>) -> Result<(), StoreError> {
        self.write(move |c| messages::ack(c, acks)).await
    }

    async fn history(
        &self,
        conversation: Conversation,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<Message>, StoreError> {
        self.read(move |c| messages::history(c, conversation, after, limit, newest))
            .await
    }

    async fn nth_newest(
        &self,
        conversation: Conversation,
        after: u64,
        n: u32,
    ) -> Result<Option<u64>, StoreError> {
        if n == 0 {
            return Ok(None);
        }
        self.read(move |c| messages::nth_newest(c, conversation, after, n))
            .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.read(messages::counts).await
    }

    fn set_hook_scope(&self, scope: HookScope) {
        let _ = self.hook_scope.set(scope);
    }

    async fn close(&self) {
        self.shut_down().await
    }
}
