//! The domain: accounts, sessions, rooms and delivery. No sockets, no SQL.
//!
//! Every gateway drives the same [`Core`]; a gateway translates its protocol
//! onto these calls and holds no chat state of its own, so a message sent over
//! one protocol reaches users on all of them.
//!
//! Invariant: a send is answered only after the store has committed it, and
//! live fan-out happens only after that commit, so nothing a user sees can be
//! lost by a crash.

mod accounts;
mod acks;
mod chat;
mod directory;
mod error;
mod history;
pub mod hub;
mod message;
mod moderation;
pub mod names;
mod operators;
pub mod pace;
mod passwords;
pub mod recent;
mod remote;
mod session;
mod siblings;
pub mod throttle;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

pub use crate::model::{Message, Target, now_ms};
pub use crate::model::{Moderated, Moderation, ModerationRequest};
pub use accounts::Login;
pub use chat::{Inbox, RoomInfo};
pub use directory::{Claim, Gathered, PeerLink, Remote, RemoteDirect, Stats, Topology, UserInfo};
pub use error::{CoreError, ErrorKind};
pub use history::HISTORY_REPLY_BYTES;
pub use hub::{Closed, batch as fan_out_batch};
pub use message::{Delivery, Encoding, Sent};
pub use moderation::MAX_REASON;
pub use throttle::REFUSAL_PAUSE;

use tokio::sync::Notify;

use crate::model::{AccountId, RoomId, SessionId};
use crate::store::{AccountSummary, RoomRecord, Store};
use hub::Hub;

/// Bounds on what one user may ask of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub max_body: usize,
    /// Messages a live stream may fall behind before it is disconnected.
    pub queue_depth: usize,
    /// Rooms one account may be a member of.
    pub max_rooms_per_account: usize,
    /// Rooms on this node; joining a new room past it is refused.
    pub max_rooms: usize,
    /// Sessions one account keeps; a login past it ends the oldest.
    pub max_sessions_per_account: usize,
    /// How fast one session may send; `None` for no limit.
    pub send_rate: Option<SendRate>,
    /// Accounts one address may register before each further one waits
    /// longer; `None` for no limit.
    pub registrations_per_ip: Option<u32>,
}

/// A session's sending allowance: `burst` messages at once, then
/// `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendRate {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 4096,
            queue_depth: 4096,
            max_rooms_per_account: 100,
            max_rooms: 100_000,
            max_sessions_per_account: 64,
            send_rate: None,
            registrations_per_ip: Some(throttle::FREE_REGISTRATIONS),
        }
    }
}

/// Settings the core needs from the command line.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub node: String,
    /// Names whose accounts, if they exist at start, are operators while
    /// this server runs. A name without an account grants nothing.
    pub operators: Vec<String>,
    pub limits: Limits,
}

/// Who is making a call: an authenticated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account: AccountId,
    pub name: String,
    pub session: SessionId,
}

/// The shared core. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// Acknowledgements on their way to the store.
    acks: Arc<acks::Acks>,
    /// The rooms of the latest room messages, for acknowledgements.
    recent: recent::RecentRooms,
    node: String,
    /// Accounts with operator rights: granted ones, and those named at start.
    operators: RwLock<HashSet<AccountId>>,
    /// Delays after failed log-ins, and turns for password checks.
    throttle: throttle::Throttle,
    limits: Limits,
    started: Instant,
    shutting_down: AtomicBool,
    lobby: RoomId,
    /// Name key → every account: sends and look-ups do not touch the store.
    directory: RwLock<HashMap<String, AccountSummary>>,
    rooms: RwLock<Rooms>,
    /// Token hash → session, for tokens seen since start.
    sessions: Mutex<HashMap<[u8; 32], Identity>>,
    /// The room each session speaks in.
    places: Mutex<session::Places>,
    passwords: passwords::PasswordPool,
    /// Counts logouts and deletions, so a token look-up that raced one does
    /// not cache a session that is gone.
    revocations: AtomicU64,
    /// The id of the shared store, when this node runs on one: other nodes
    /// on it (siblings) serve the same accounts.
    shared: Option<String>,
    /// Counts membership changes, so a read of one account's rooms from
    /// the store that raced one is not taken as current.
    memberships_seen: AtomicU64,
    /// Taken in turn by sends that wait to learn a name from the store.
    learning: tokio::sync::Mutex<()>,
    /// The mesh, once one is attached.
    remote: OnceLock<Arc<dyn Remote>>,
    /// Woken when accounts are added or removed, or an account comes online
    /// or goes offline, so the mesh can tell the other nodes.
    changed: Arc<Notify>,
}

#[derive(Default)]
struct Rooms {
    by_key: HashMap<String, RoomRecord>,
    members: HashMap<RoomId, HashSet<AccountId>>,
}

impl Core {
    /// Loads the directory and room memberships and makes sure `lobby` exists.
    pub async fn open(store: Arc<dyn Store>, config: CoreConfig) -> Result<Core, CoreError> {
        store.set_hook_scope(hub::batch_hooks);
        let lobby = store.ensure_room(names::LOBBY, names::LOBBY).await?;
        let directory = store
            .accounts()
            .await?
            .into_iter()
            .map(|account| (account.name.to_ascii_lowercase(), account))
            .collect();
        let mut rooms = Rooms::default();
        for room in store.rooms().await? {
            rooms.members.insert(room.id, HashSet::new());
            rooms.by_key.insert(room.name.to_ascii_lowercase(), room);
        }
        for (room, account) in store.memberships().await? {
            rooms.members.entry(room).or_default().insert(account);
        }
        let operators = operators::resolve(&*store, &directory, &config.operators).await?;
        let changed = Arc::new(Notify::new());
        Ok(Core {
            inner: Arc::new(Inner {
                hub: Hub::new(config.limits.queue_depth, changed.clone()),
                acks: acks::Acks::start(store.clone()),
                recent: recent::RecentRooms::default(),
                changed,
                remote: OnceLock::new(),
                shared: store.shared_id(),
                memberships_seen: AtomicU64::new(0),
                learning: tokio::sync::Mutex::new(()),
                node: config.node,
                operators: RwLock::new(operators),
                throttle: throttle::Throttle::new(config.limits.registrations_per_ip),
                limits: config.limits,
                started: Instant::now(),
                shutting_down: AtomicBool::new(false),
                lobby: lobby.id,
                directory: RwLock::new(directory),
                rooms: RwLock::new(rooms),
                sessions: Mutex::new(HashMap::new()),
                places: Mutex::default(),
                revocations: AtomicU64::new(0),
                passwords: passwords::PasswordPool::new(),
                store,
            }),
        })
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn is_operator(&self, who: &Identity) -> bool {
        self.operators_read().contains(&who.account)
    }

    /// Refuses new work and ends every live stream with a goodbye.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.hub.close_all(Closed::ShuttingDown);
    }

    /// Writes the acknowledgements still in memory, lets the store commit
    /// what it has in flight, then closes it.
    pub async fn close_store(&self) {
        self.inner.acks.close().await;
        self.inner.store.close().await;
    }

    /// Live delivery streams on this node.
    pub fn session_count(&self) -> usize {
        self.inner.hub.session_count()
    }

    /// Acknowledged ids held in memory, not yet written.
    pub fn acks_pending(&self) -> usize {
        self.inner.acks.pending_count()
    }

    /// Whether this node takes work: it is not shutting down, and its store
    /// answers a cheap read.
    pub async fn ready(&self) -> Result<(), CoreError> {
        self.check_running()?;
        self.inner.store.last_message_id().await?;
        Ok(())
    }

    fn check_running(&self) -> Result<(), CoreError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            Err(CoreError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    fn rooms_read(&self) -> std::sync::RwLockReadGuard<'_, Rooms> {
        self.inner.rooms.read().unwrap_or_else(|p| p.into_inner())
    }

    fn rooms_write(&self) -> std::sync::RwLockWriteGuard<'_, Rooms> {
        self.inner.rooms.write().unwrap_or_else(|p| p.into_inner())
    }

    fn directory_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, AccountSummary>> {
        self.inner
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn directory_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, AccountSummary>> {
        self.inner
            .directory
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn operators_read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<AccountId>> {
        self.inner
            .operators
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn operators_write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<AccountId>> {
        self.inner
            .operators
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Identity>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Looks a room up by name (with or without `#`).
    fn room(&self, name: &str) -> Result<RoomRecord, CoreError> {
        let (bare, key) = names::room_key(name)?;
        self.rooms_read()
            .by_key
            .get(&key)
            .cloned()
            .ok_or_else(|| CoreError::NoSuchRoom(bare.to_owned()))
    }
}
