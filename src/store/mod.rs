//! Durable state behind one trait, so the core never sees SQL and a second
//! backend (PostgreSQL) slots in beside the embedded SQLite one.
//!
//! Every mutation that the core acknowledges to a user returns only after it
//! is committed; the SQLite backend batches concurrent mutations into one
//! transaction (group commit) so many sends share one fsync.

mod lock;
mod postgres;
mod reserve;
mod sqlite;

pub use lock::{DataDirLock, LOCK_FILE};
pub use postgres::PostgresStore;
pub use reserve::DiskReserve;
pub use sqlite::{Copied, SqliteStore, backup as backup_sqlite};

use async_trait::async_trait;

use std::sync::Arc;

use crate::model::{AccountId, Message, RoomId, SessionId, Target};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the name is already taken")]
    NameTaken,
    #[error("the store is closed")]
    Closed,
    /// A session was asked for an account that is suspended.
    #[error("this account is suspended")]
    Suspended,
    /// The data dir cannot be used: another server holds its lock, or it
    /// is not a directory.
    #[error("{0}")]
    InUse(String),
    /// Free disk space is under the reserve: new messages are refused,
    /// while reads and small writes such as logins go on.
    #[error("disk nearly full: new messages are refused until space is freed")]
    NearlyFull,
    /// The database could not grow (SQLITE_FULL): nothing of the failed
    /// transaction was stored.
    #[error("disk full: the server could not store this; try again later")]
    DiskFull,
    /// The database records a schema version this code does not know:
    /// a newer meshtalk wrote it.
    #[error(
        "the database has schema version {found}, and this server knows up to {known}: \
         it was written by a newer meshtalk"
    )]
    UnknownSchema { found: i64, known: i64 },
    /// The backend failed: its own error, said as it is.
    #[error(transparent)]
    Database(Arc<dyn std::error::Error + Send + Sync>),
    /// `context` says what could not be done; the error why is the source.
    #[error("{context}: {source}")]
    Failed {
        context: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A failure with no error value behind it.
    #[error("{0}")]
    Backend(String),
}

impl StoreError {
    /// The backend's own error, kept as the source.
    pub fn database(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Database(Arc::new(e))
    }

    /// What could not be done, and the error why.
    pub fn failed(
        context: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Failed {
            context: context.into(),
            source: Arc::new(e),
        }
    }
}

/// An account as stored.
#[derive(Debug, Clone)]
pub struct AccountRecord {
    pub id: AccountId,
    pub name: String,
    pub password_hash: String,
    pub created_ms: i64,
    /// Set while an operator has the account suspended.
    pub suspended: Option<Suspension>,
}

/// An operator's suspension of an account: its log-ins are refused until
/// an operator restores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// The operator who suspended it, as the account name they act under.
    pub by: String,
    /// Why, as the operator gave it; may be empty.
    pub reason: String,
    pub since_ms: i64,
}

/// An account as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub id: AccountId,
    pub name: String,
    /// When it was registered: the earlier of two clashing claims on a name
    /// across the mesh keeps the bare name.
    pub created_ms: i64,
}

/// A live session found by its token.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: SessionId,
    pub account_id: AccountId,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct RoomRecord {
    pub id: RoomId,
    pub name: String,
}

/// A message to store. Exactly one of the two recipients is set.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: AccountId,
    pub sender_name: String,
    pub recipient: Option<(AccountId, String)>,
    pub room: Option<(RoomId, String)>,
    pub body: String,
    pub client_msg_id: Option<String>,
    pub sent_at_ms: i64,
}

/// What an append committed, for its commit hook: the stored message, or
/// the earlier one with the same `client_msg_id`. The hook takes it whole,
/// so it can hand the message on without copying its texts.
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: Message,
    pub duplicate: bool,
}

/// The answer to an append, once committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: u64,
    pub sent_at_ms: i64,
    /// An earlier message had this `client_msg_id`; nothing new was stored.
    pub duplicate: bool,
}

/// Hands what an append stored to its hook and returns the answer; the
/// hook's [`CommitHook::committed`] is still to run once the commit is known.
pub(crate) fn hand_to_hook(appended: Appended, hook: &mut dyn CommitHook) -> Stored {
    let stored = Stored {
        id: appended.message.id,
        sent_at_ms: appended.message.sent_at_ms,
        duplicate: appended.duplicate,
    };
    hook.stored(appended);
    stored
}

/// What history keeps: messages stored since `before_ms`, if set, and the
/// newest `keep_per_room` of each room, if set. Direct messages waiting in
/// an inbox are kept whatever the rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub before_ms: Option<i64>,
    pub keep_per_room: Option<u32>,
}

/// Runs right after an account is created, with its id.
pub type AccountHook = Box<dyn FnOnce(&AccountId) + Send>;

/// Runs right after a membership change commits, with its outcome.
pub type MembershipHook = Box<dyn FnOnce(&bool) + Send>;

/// A queued append: resolves once the message is committed.
pub type PendingAppend =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Stored, StoreError>> + Send>>;

/// What an append does with its message, in two steps.
///
/// [`stored`](Self::stored) takes the message on the store's writer as
/// soon as it has its id, on SQLite before the commit: whatever the hook
/// wraps it in is allocated there, beside the message's own texts, not on
/// the thread that runs hooks, where every message's memory crossed one
/// more thread's allocator arena (see docs/performance.md). It must have no
/// effect anyone can see, since the commit may still fail (then the hook
/// is dropped).
///
/// [`committed`](Self::committed) runs right after the commit, before the
/// sender is answered, in commit order; it must not block.
pub trait CommitHook: Send {
    fn stored(&mut self, appended: Appended);
    fn committed(self: Box<Self>);
}

/// A [`CommitHook`] of two closures: `wrap` makes what the message
/// becomes, on the writer, and `then` gets it once the commit stands.
pub fn commit_hook<T: Send + 'static>(
    wrap: impl FnOnce(Appended) -> T + Send + 'static,
    then: impl FnOnce(T) + Send + 'static,
) -> Box<dyn CommitHook> {
    Box::new(TwoSteps {
        wrap: Some(wrap),
        made: None,
        then,
    })
}

/// A [`CommitHook`] that hands the message, as stored, to `then` once
/// committed.
pub fn after_commit(then: impl FnOnce(Appended) + Send + 'static) -> Box<dyn CommitHook> {
    commit_hook(|appended| appended, then)
}

struct TwoSteps<W, T, F> {
    wrap: Option<W>,
    made: Option<T>,
    then: F,
}

impl<W, T, F> CommitHook for TwoSteps<W, T, F>
where
    W: FnOnce(Appended) -> T + Send,
    T: Send,
    F: FnOnce(T) + Send,
{
    fn stored(&mut self, appended: Appended) {
        if let Some(wrap) = self.wrap.take() {
            self.made = Some(wrap(appended));
        }
    }

    fn committed(self: Box<Self>) {
        if let Some(made) = self.made {
            (self.then)(made);
        }
    }
}

/// Runs a run of commit hooks, passed as `run`. The store calls the hooks
/// of commits that finish together inside one call, so whatever they notify
/// can gather their effects and act once per run.
pub type HookScope = fn(run: &mut dyn FnMut());

/// Whose history to read.
#[derive(Debug, Clone, Copy)]
pub enum Conversation {
    Room(RoomId),
    Direct(AccountId, AccountId),
}

/// What one account has been shown: direct messages (and messages whose
/// room the caller did not know) by id, and the newest id per room.
#[derive(Debug, Clone, Default)]
pub struct AccountAcks {
    pub account: AccountId,
    pub ids: Vec<u64>,
    pub rooms: Vec<(RoomId, u64)>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub messages: u64,
    pub accounts: u64,
    pub rooms: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an account, a member of `lobby`; `on_commit` gets its id
    /// right after the commit, in commit order with appends.
    async fn create_account(
        &self,
        name: &str,
        key: &str,
        password_hash: &str,
        lobby: RoomId,
        on_commit: AccountHook,
    ) -> Result<AccountId, StoreError>;
    async fn account_by_key(&self, key: &str) -> Result<Option<AccountRecord>, StoreError>;
    async fn account_by_id(&self, id: AccountId) -> Result<Option<AccountRecord>, StoreError>;
    /// Removes the account with its sessions, memberships and inbox.
    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError>;
    /// Every account, sorted by name key.
    async fn accounts(&self) -> Result<Vec<AccountSummary>, StoreError>;
    /// Accounts granted operator rights; a deleted account's grant goes with it.
    async fn operators(&self) -> Result<Vec<AccountId>, StoreError>;
    async fn grant_operator(&self, account: AccountId) -> Result<(), StoreError>;

    /// Opens a session; if the account then has more than `keep`, the
    /// oldest go, and their ids are returned with the new one. A suspended
    /// account gets [`StoreError::Suspended`].
    async fn create_session(
        &self,
        token_hash: [u8; 32],
        account: AccountId,
        keep: usize,
    ) -> Result<(SessionId, Vec<SessionId>), StoreError>;
    async fn session_by_token(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<SessionRecord>, StoreError>;
    async fn delete_session(&self, id: SessionId) -> Result<(), StoreError>;
    /// Ends every session of the account; returns the ones that went.
    async fn end_sessions(&self, account: AccountId) -> Result<Vec<SessionId>, StoreError>;
    /// Suspends the account (a suspension already there is replaced) and
    /// ends its sessions, in one transaction, so no session opened
    /// meanwhile outlives it: [`Store::create_session`] refuses a suspended
    /// account with [`StoreError::Suspended`]. Returns the sessions ended.
    async fn suspend(
        &self,
        account: AccountId,
        suspension: Suspension,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Lifts the account's suspension; false if it had none.
    async fn restore(&self, account: AccountId) -> Result<bool, StoreError>;
    /// Of these sessions, the ones that still exist.
    async fn sessions_alive(&self, ids: Vec<SessionId>) -> Result<Vec<SessionId>, StoreError>;

    /// Returns the room, creating it first if no room has this key.
    async fn ensure_room(&self, name: &str, key: &str) -> Result<RoomRecord, StoreError>;
    async fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError>;
    /// Every (room, account) membership.
    async fn memberships(&self) -> Result<Vec<(RoomId, AccountId)>, StoreError>;
    /// The rooms one account is a member of.
    async fn rooms_of(&self, account: AccountId) -> Result<Vec<RoomRecord>, StoreError>;
    /// The id the database keeps of itself: the same for every node that
    /// opens it, so nodes that find they share one know that accounts,
    /// rooms and messages stored by one are there for the others. `None`
    /// for a store only one node ever opens.
    fn shared_id(&self) -> Option<String> {
        None
    }
    /// Adds a membership; the member's catch-up cursor starts at the newest
    /// message, so joining does not replay old speech. False if already a
    /// member. `on_commit` runs right after the commit, in commit order with
    /// appends, so a message committed after the join always sees the member.
    async fn join(
        &self,
        account: AccountId,
        room: RoomId,
        on_commit: MembershipHook,
    ) -> Result<bool, StoreError>;
    /// False if the account was not a member. `on_commit` as for `join`.
    async fn leave(
        &self,
        account: AccountId,
        room: RoomId,
        on_commit: MembershipHook,
    ) -> Result<bool, StoreError>;

    /// Queues a message for storage (and, for a direct message, for the
    /// recipient's inbox) before returning; the future resolves once it is
    /// durably committed. Messages queued one after another are committed in
    /// that order. `on_commit` runs once the message is committed, in commit
    /// order, even if the caller has gone.
    fn append(&self, message: NewMessage, on_commit: Box<dyn CommitHook>) -> PendingAppend;
    /// What waits for an account with `after < id <= up_to`, oldest first, at
    /// most `limit`: its inbox and the room speech of others since its
    /// acknowledged cursor in each room.
    async fn pending(
        &self,
        account: AccountId,
        after: u64,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;
    /// The newest message id, 0 when there is none.
    async fn last_message_id(&self) -> Result<u64, StoreError>;
    /// Marks messages as shown, for many accounts in one write: for each,
    /// removes `ids` from its inbox (an id that is not there counts for its
    /// room), and moves each room's cursor to at least the given id.
    async fn ack(&self, acks: Vec<AccountAcks>) -> Result<(), StoreError>;
    /// History after a cursor, oldest first; with `newest`, the last `limit`.
    async fn history(
        &self,
        conversation: Conversation,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<Message>, StoreError>;
    /// The id of the `n`th newest message of a conversation after a
    /// cursor, if it has that many: where its last `n` begin.
    async fn nth_newest(
        &self,
        conversation: Conversation,
        after: u64,
        n: u32,
    ) -> Result<Option<u64>, StoreError>;
    async fn counts(&self) -> Result<Counts, StoreError>;
    /// Deletes up to `limit` messages that `rule` lets go, in one short
    /// transaction; never a direct message still waiting in an inbox.
    /// Returns how many went: fewer than `limit` when none are left.
    async fn prune(&self, rule: Retention, limit: u32) -> Result<u64, StoreError>;
    /// From now on runs each run of commit hooks inside `scope`.
    fn set_hook_scope(&self, scope: HookScope);
    /// Finishes what is in flight and stops accepting work.
    async fn close(&self);
}

pub(crate) fn message_target(recipient: Option<String>, room: Option<String>) -> Target {
    match (recipient, room) {
        (_, Some(room)) => Target::Room(room),
        (Some(user), None) => Target::User(user),
        (None, None) => Target::User(String::new()),
    }
}
