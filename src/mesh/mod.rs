//! The mesh: links to other meshtalk nodes, and everything that travels on
//! them.
//!
//! - [`frame`]: the peer messages and their framing.
//! - [`handshake`]: the Noise handshake keyed by the mesh secret, and the
//!   encrypted transport every frame travels in.
//! - [`state`]: every node's published state, the graph, routes and the
//!   flood seen-set.
//! - `link`: one live link: handshake, hellos, reader, writer, keepalive;
//!   dialling with backoff.
//! - `peers`: this node's links together: listening, dialling, dropping,
//!   the table of live peers and sending to one of them.
//! - `flood`: what goes to every node: this node's records and room speech,
//!   passed on once each.
//! - `routing`: what goes to one node, hop by hop along shortest paths.
//! - `requests`: direct messages and scatter-gather queries waiting on
//!   other nodes, and the answers this node gives theirs.
//! - `siblings`: what nodes on one shared store tell each other after a
//!   commit.
//!
//! This file holds the [`Mesh`] itself and its face to the core
//! ([`Remote`]). `docs/mesh.md` is the protocol.

mod flood;
pub mod frame;
pub mod handshake;
mod link;
mod peers;
mod requests;
mod routing;
mod siblings;
pub mod state;

pub use link::valid_node_name;
pub use requests::QUERY_TIMEOUT;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::core::{
    Claim, Core, CoreError, ErrorKind, Gathered, Message, Moderated, ModerationRequest, PeerLink,
    Remote, RemoteDirect, Sent, Stats, Topology, UserInfo,
};
use crate::model::{AccountId, RoomId, SessionId};
use frame::{Answer, Facts, RoutedBody};
use link::Peer;
use peers::Dialer;
use state::MeshState;

/// Longest text from a peer (a refusal, an error) shown to a user.
pub(crate) const MAX_PEER_TEXT: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("no mesh secret is configured: start the server with --mesh-secret-file")]
    NoSecret,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("could not link to {addr}: {why}")]
    Link { addr: String, why: String },
    #[error("no link to node {0}")]
    NoSuchPeer(String),
}

impl From<MeshError> for CoreError {
    fn from(e: MeshError) -> Self {
        match e {
            MeshError::NoSecret => CoreError::invalid("mesh", e.to_string()),
            MeshError::NoSuchPeer(node) => CoreError::FromNode {
                node,
                kind: ErrorKind::NotFound,
                message: "no link to this node".into(),
            },
            e => CoreError::Unreachable(e.to_string()),
        }
    }
}

/// Settings for this node's part in the mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub node: String,
    /// This run's instance: higher than any earlier run's (see [`next_instance`]).
    pub instance: u64,
    /// The shared secret every node of the mesh holds; linking needs it.
    pub secret: Option<Vec<u8>>,
    pub query_timeout: Duration,
}

/// This node's mesh. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    me: String,
    instance: u64,
    /// The id of the shared store this node runs on, if any.
    store: Option<String>,
    secret: Option<Vec<u8>>,
    query_timeout: Duration,
    state: Mutex<MeshState>,
    /// Request ids, link ids and dialler ids: unique for this run.
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,

    // Flooding (`flood.rs`).
    /// Counts up each time this node publishes a record.
    version: AtomicU64,
    /// Held while this node's links record is read and published.
    publishing: Mutex<()>,
    /// Sequence numbers of this node's flooded speech.
    speech_seq: AtomicU64,
    /// The newest sibling account list not yet caught up with, and whether
    /// a catch-up is running.
    accounts_waiting: Mutex<Option<Vec<String>>>,
    accounts_syncing: AtomicBool,

    // Links (`peers.rs`, `link.rs`).
    peers: Mutex<HashMap<String, Peer>>,
    dialers: Mutex<Vec<Dialer>>,
    /// Nodes an operator dropped: their incoming links are refused until an
    /// operator links to them again.
    killed: Mutex<HashSet<String>>,
    listeners: Mutex<Vec<(SocketAddr, JoinHandle<()>)>>,

    // Requests (`requests.rs`).
    /// Requests waiting for one node's answer (direct messages for their
    /// home node, operators' acts on its accounts): request → (node, waiter).
    awaiting: Mutex<HashMap<u64, (String, oneshot::Sender<RoutedBody>)>>,
    /// Scatter-gather queries waiting for answers: request → collector.
    queries: Mutex<HashMap<u64, mpsc::Sender<(String, Answer)>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mesh {
    /// Creates this node's mesh, attaches it to the core and starts telling
    /// other nodes about changes here. No link exists until one is made.
    pub fn start(core: Core, config: MeshConfig) -> Mesh {
        let (shutdown, _) = watch::channel(false);
        let store = core.shared_store();
        let mesh = Mesh {
            inner: Arc::new(Inner {
                me: config.node.clone(),
                instance: config.instance,
                store: store.clone(),
                secret: config.secret,
                query_timeout: config.query_timeout,
                state: Mutex::new(MeshState::new(&config.node, store)),
                next_id: AtomicU64::new(1),
                shutdown,
                version: AtomicU64::new(0),
                publishing: Mutex::new(()),
                speech_seq: AtomicU64::new(0),
                accounts_waiting: Mutex::new(None),
                accounts_syncing: AtomicBool::new(false),
                peers: Mutex::new(HashMap::new()),
                dialers: Mutex::new(Vec::new()),
                killed: Mutex::new(HashSet::new()),
                listeners: Mutex::new(Vec::new()),
                awaiting: Mutex::new(HashMap::new()),
                queries: Mutex::new(HashMap::new()),
                core: core.clone(),
            }),
        };
        core.set_remote(Arc::new(mesh.clone()));
        mesh.publish_links();
        let accounts = core.local_accounts();
        let online = core.local_online();
        mesh.publish(Facts::Accounts {
            accounts: accounts.clone(),
        });
        mesh.publish(Facts::Presence {
            online: online.clone(),
        });
        tokio::spawn(mesh.clone().publish_changes((accounts, online)));
        mesh
    }

    pub fn node(&self) -> &str {
        &self.inner.me
    }

    fn state(&self) -> MutexGuard<'_, MeshState> {
        lock(&self.inner.state)
    }

    /// A number no other request, link or dialler of this run has.
    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The instance for this run: the wall clock in ms, but always above the
/// last run's, which `path` remembers. A restart whose clock went back would
/// otherwise publish records and speech every other node takes as stale.
pub fn next_instance(path: &std::path::Path) -> u64 {
    let last = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let instance = (crate::core::now_ms().max(1) as u64).max(last.saturating_add(1));
    let saved = path.with_extension("tmp");
    let written =
        std::fs::write(&saved, instance.to_string()).and_then(|()| std::fs::rename(&saved, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot remember the mesh instance");
    }
    instance
}

/// Control characters out, length bounded: text from a peer must not forge
/// lines on a user's screen.
pub(crate) fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_PEER_TEXT)
        .collect()
}

impl Remote for Mesh {
    fn listen(&self, addr: String) -> BoxFuture<'static, Result<String, CoreError>> {
        let mesh = self.clone();
        Box::pin(async move { Ok(mesh.listen(&addr).await?.to_string()) })
    }

    fn connect(&self, addr: String) -> BoxFuture<'static, Result<String, CoreError>> {
        let mesh = self.clone();
        Box::pin(async move { Ok(mesh.connect(&addr, false).await?) })
    }

    fn kill(&self, node: &str) -> Result<(), CoreError> {
        Ok(Mesh::kill(self, node)?)
    }

    fn peers(&self) -> Vec<PeerLink> {
        Mesh::peers(self)
    }

    fn topology(&self) -> Topology {
        Mesh::topology(self)
    }

    fn claims(&self, key: &str) -> Vec<Claim> {
        self.state()
            .claims(key)
            .into_iter()
            .map(|(node, name, created_ms)| Claim {
                node,
                name,
                created_ms,
            })
            .collect()
    }

    fn accounts(&self) -> Vec<UserInfo> {
        self.state()
            .remote_accounts()
            .into_iter()
            .map(|(node, name, online)| UserInfo { name, online, node })
            .collect()
    }

    fn flood(&self, message: &Message, room: RoomId) {
        self.flood_speech(message, room);
    }

    fn is_sibling(&self, node: &str) -> bool {
        self.state().is_sibling(node)
    }

    fn sibling_online(&self) -> BTreeSet<String> {
        self.state().sibling_online()
    }

    fn to_siblings(&self, message: &Message, recipient: AccountId) {
        self.deliver_to_siblings(message, recipient);
    }

    fn membership(&self, room: RoomId, name: &str, account: AccountId, joined: bool) {
        self.to_each_sibling(|| RoutedBody::Member {
            room_id: room.0,
            room: name.to_owned(),
            account: account.0,
            joined,
        });
    }

    fn account_deleted(&self, account: AccountId) {
        self.to_each_sibling(|| RoutedBody::Deleted { account: account.0 });
    }

    fn session_ended(&self, session: SessionId) {
        self.to_each_sibling(|| RoutedBody::Ended { session: session.0 });
    }

    fn sessions_removed(&self, account: AccountId, notice: &str) {
        self.to_each_sibling(|| RoutedBody::Removed {
            account: account.0,
            notice: notice.to_owned(),
        });
    }

    fn moderate(
        &self,
        node: String,
        request: ModerationRequest,
    ) -> BoxFuture<'static, Result<Moderated, CoreError>> {
        Box::pin(self.route_moderation(node, request))
    }

    fn send_direct(&self, message: RemoteDirect) -> BoxFuture<'static, Result<Sent, CoreError>> {
        Box::pin(self.route_direct(message))
    }

    fn gather_who(&self) -> BoxFuture<'static, Gathered<UserInfo>> {
        Box::pin(self.clone().ask_who())
    }

    fn gather_stats(&self) -> BoxFuture<'static, Gathered<Stats>> {
        Box::pin(self.clone().ask_stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_gets_a_higher_instance_even_when_the_clock_went_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh-instance");
        let first = next_instance(&path);
        assert!(next_instance(&path) > first);
        // A previous run whose clock was far ahead.
        let ahead = first + 1_000_000_000;
        std::fs::write(&path, ahead.to_string()).unwrap();
        assert_eq!(next_instance(&path), ahead + 1);
    }
}
