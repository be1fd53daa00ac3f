//! The [`Store`] trait over PostgreSQL: mutations with commit hooks go to
//! the writer; everything else is a query on the pool.

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::PostgresStore;
use super::writer::{Done, Op, Work};
use crate::model::{AccountId, Message, RoomId, SessionId};
use crate::store::{
    AccountAcks, AccountHook, AccountRecord, AccountSummary, CommitHook, Conversation, Counts,
    HookScope, MembershipHook, NewMessage, PendingAppend, Retention, RoomRecord, SessionRecord,
    Store, StoreError, Suspension,
};

impl PostgresStore {
    /// Queues a mutation for the writer and waits for its answer.
    async fn queue<T>(
        &self,
        work: Work,
        done: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Done,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        if !self.send(Op {
            work,
            done: done(reply),
        }) {
            return Err(StoreError::Closed);
        }
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Hands a mutation to the writer; false once the store is closed.
    fn send(&self, op: Op) -> bool {
        match self.jobs.lock() {
            Ok(jobs) => jobs.as_ref().is_some_and(|jobs| jobs.send(op).is_ok()),
            Err(_) => false,
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_account(
        &self,
        name: &str,
        key: &str,
        password_hash: &str,
        lobby: RoomId,
        on_commit: AccountHook,
    ) -> Result<AccountId, StoreError> {
        let work = Work::CreateAccount {
            name: name.to_owned(),
            key: key.to_owned(),
            hash: password_hash.to_owned(),
            lobby,
        };
        self.queue(work, |reply| Done::Account {
            hook: on_commit,
            reply,
        })
        .await
    }

    async fn account_by_key(&self, key: &str) -> Result<Option<AccountRecord>, StoreError> {
        PostgresStore::account_by_key(self, key).await
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        PostgresStore::account_by_id(self, id).await
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        self.change("DELETE FROM accounts WHERE id = $1", &[&id.0])
            .await
            .map(drop)
    }

    async fn accounts(&self) -> Result<Vec<AccountSummary>, StoreError> {
        self.all_accounts().await
    }

    async fn operators(&self) -> Result<Vec<AccountId>, StoreError> {
        self.all_operators().await
    }

    async fn grant_operator(&self, account: AccountId) -> Result<(), StoreError> {
        self.change(
            "INSERT INTO operators (account_id, granted_ms) VALUES ($1, $2)
                 ON CONFLICT (account_id) DO NOTHING",
            &[&account.0, &crate::model::now_ms()],
        )
        .await
        .map(drop)
    }

    async fn create_session(
        &self,
        token_hash: [u8; 32],
        account: AccountId,
        keep: usize,
    ) -> Result<(SessionId, Vec<SessionId>), StoreError> {
        self.open_session(&token_hash, account, keep).await
    }

    async fn session_by_token(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.session(&token_hash).await
    }

    async fn sessions_alive(&self, ids: Vec<SessionId>) -> Result<Vec<SessionId>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let rows = self
            .rows("SELECT id FROM sessions WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(rows.iter().map(|r| SessionId(r.get(0))).collect())
    }

    async fn delete_session(&self, id: SessionId) -> Result<(), StoreError> {
        self.change("DELETE FROM sessions WHERE id = $1", &[&id.0])
            .await
            .map(drop)
    }

    async fn end_sessions(&self, account: AccountId) -> Result<Vec<SessionId>, StoreError> {
        let rows = self
            .rows(
                "DELETE FROM sessions WHERE account_id = $1 RETURNING id",
                &[&account.0],
            )
            .await?;
        Ok(rows.iter().map(|r| SessionId(r.get(0))).collect())
    }

    async fn suspend(
        &self,
        account: AccountId,
        suspension: Suspension,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.suspend_account(account, &suspension).await
    }

    async fn restore(&self, account: AccountId) -> Result<bool, StoreError> {
        self.change(
            "DELETE FROM suspensions WHERE account_id = $1",
            &[&account.0],
        )
        .await
        .map(|n| n > 0)
    }

    async fn ensure_room(&self, name: &str, key: &str) -> Result<RoomRecord, StoreError> {
        self.room(name, key).await
    }

    async fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        self.all_rooms().await
    }

    async fn memberships(&self) -> Result<Vec<(RoomId, AccountId)>, StoreError> {
        self.all_memberships().await
    }

    async fn prune(&self, rule: Retention, limit: u32) -> Result<u64, StoreError> {
        self.prune_batch(rule, limit).await
    }

    async fn rooms_of(&self, account: AccountId) -> Result<Vec<RoomRecord>, StoreError> {
        self.rooms_of_account(account).await
    }

    fn shared_id(&self) -> Option<String> {
        Some(self.shared_id.clone())
    }

    async fn join(
        &self,
        account: AccountId,
        room: RoomId,
        on_commit: MembershipHook,
    ) -> Result<bool, StoreError> {
        let work = Work::Membership {
            account,
            room,
            join: true,
        };
        self.queue(work, |reply| Done::Member {
            hook: on_commit,
            reply,
        })
        .await
    }

    async fn leave(
        &self,
        account: AccountId,
        room: RoomId,
        on_commit: MembershipHook,
    ) -> Result<bool, StoreError> {
        let work = Work::Membership {
            account,
            room,
            join: false,
        };
        self.queue(work, |reply| Done::Member {
            hook: on_commit,
            reply,
        })
        .await
    }

    fn append(&self, message: NewMessage, on_commit: Box<dyn CommitHook>) -> PendingAppend {
        // Queued before this returns, so appends keep the order they were
        // made in; only the answer is awaited.
        let (reply, answer) = oneshot::channel();
        let queued = self.send(Op {
            work: Work::Append(message),
            done: Done::Append {
                hook: on_commit,
                reply,
            },
        });
        Box::pin(async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            answer.await.unwrap_or(Err(StoreError::Closed))
        })
    }

    async fn pending(
        &self,
        account: AccountId,
        after: u64,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        self.waiting(account, after, up_to, limit).await
    }

    async fn last_message_id(&self) -> Result<u64, StoreError> {
        self.last_id().await
    }

    async fn ack(&self, acks: Vec<AccountAcks>) -> Result<(), StoreError> {
        self.mark_shown(&acks).await
    }

    async fn history(
        &self,
        conversation: Conversation,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<Message>, StoreError> {
        self.conversation(conversation, after, limit, newest).await
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
        self.nth(conversation, after, n).await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.count().await
    }

    fn set_hook_scope(&self, scope: HookScope) {
        let _ = self.hook_scope.set(scope);
    }

    async fn close(&self) {
        self.shut_down().await
    }
}
