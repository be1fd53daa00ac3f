//! The mesh: links to other meshtalk nodes, and everything that travels on
//! them.
//!
//! - [`frame`]: the peer messages and their framing.
//! - [`handshake`]: the Noise handshake keyed by the mesh secret, and the
//!   encrypted transport every frame travels in.
//! - [`state`]: every node's published state, the graph, routes and the
//!   flood seen-set.
//! - [`link`]: one live link: handshake, reader, writer, keepalive; dialling
//!   with backoff.
//!
//! Room speech floods: each node hands it to its local members once and
//! passes it to every peer but the one it came from; (origin, instance,
//! seq) suppresses loops. Each node floods its own links, accounts and
//! presence as versioned records, so every node holds the whole graph and
//! routes point-to-point messages (direct messages, scatter-gather queries)
//! along shortest paths. `docs/mesh.md` is the protocol.

pub mod frame;
pub mod handshake;
mod link;
pub mod state;

pub use link::valid_node_name;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::core::{
    Claim, Core, CoreError, ErrorKind, Gathered, Message, PeerLink, Remote, RemoteDirect, Sent,
    Stats, Target, Topology, UserInfo,
};
use frame::{Answer, Facts, NodeState, PeerMessage, Query, RemoteError, Routed, RoutedBody};
use state::MeshState;

/// How long a scatter-gather query waits for answers.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a direct message waits for its home node to commit it.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/peer-connect` waits for its first attempt: a TCP connect and
/// a handshake, each bounded by 5 s.
const FIRST_ATTEMPT: Duration = Duration::from_secs(11);
/// Requests this node may have waiting on other nodes at once.
const MAX_PENDING: usize = 10_000;
/// Connections that may be in their handshake at once; more are dropped.
const MAX_HANDSHAKES: usize = 64;
/// Longest text from a peer (a refusal, an error) shown to a user.
pub(crate) const MAX_PEER_TEXT: usize = 200;
/// Frames queued for one peer before the link is judged stuck and cut.
const PEER_QUEUE: usize = 8192;

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
    secret: Option<Vec<u8>>,
    query_timeout: Duration,
    state: Mutex<MeshState>,
    /// Counts up each time this node publishes a record.
    version: AtomicU64,
    /// Held while this node's links record is read and published.
    publishing: Mutex<()>,
    /// Sequence numbers of this node's flooded speech.
    speech_seq: AtomicU64,
    peers: Mutex<HashMap<String, Peer>>,
    dialers: Mutex<Vec<Dialer>>,
    /// Nodes an operator dropped: their incoming links are refused until an
    /// operator links to them again.
    killed: Mutex<HashSet<String>>,
    next_id: AtomicU64,
    /// Direct messages waiting for their home node: request → (node, waiter).
    directs: Mutex<HashMap<u64, (String, oneshot::Sender<RoutedBody>)>>,
    queries: Mutex<HashMap<u64, mpsc::Sender<(String, Answer)>>>,
    listeners: Mutex<Vec<(SocketAddr, JoinHandle<()>)>>,
    shutdown: watch::Sender<bool>,
}

/// A registered live link.
struct Peer {
    link: u64,
    address: String,
    outbound: bool,
    tx: mpsc::Sender<Bytes>,
    /// Set to cut the link.
    cut: Arc<tokio::sync::Notify>,
}

/// A standing wish to be linked to an address, kept by `/peer-connect` and
/// `--peer` and retried with backoff until `/peer-kill`.
struct Dialer {
    id: u64,
    address: String,
    /// The node last reached at this address.
    node: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mesh {
    /// Creates this node's mesh, attaches it to the core and starts telling
    /// other nodes about changes here. No link exists until one is made.
    pub fn start(core: Core, config: MeshConfig) -> Mesh {
        let instance = config.instance;
        let (shutdown, _) = watch::channel(false);
        let mesh = Mesh {
            inner: Arc::new(Inner {
                me: config.node.clone(),
                instance,
                secret: config.secret,
                query_timeout: config.query_timeout,
                state: Mutex::new(MeshState::new(&config.node)),
                version: AtomicU64::new(0),
                publishing: Mutex::new(()),
                speech_seq: AtomicU64::new(0),
                peers: Mutex::new(HashMap::new()),
                dialers: Mutex::new(Vec::new()),
                killed: Mutex::new(HashSet::new()),
                next_id: AtomicU64::new(1),
                directs: Mutex::new(HashMap::new()),
                queries: Mutex::new(HashMap::new()),
                listeners: Mutex::new(Vec::new()),
                shutdown,
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

    /// Accepts peer links on `addr`. Returns the address bound.
    pub async fn listen(&self, addr: &str) -> Result<SocketAddr, MeshError> {
        if self.inner.secret.is_none() {
            return Err(MeshError::NoSecret);
        }
        let listen_error = |source| MeshError::Listen {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        let mesh = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stop.wait_for(|stopped| *stopped) => return,
                };
                match accepted {
                    Ok((stream, from)) => {
                        // Strangers get a bounded share of the node until
                        // they prove the secret.
                        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                            tracing::warn!(peer = %from, "too many peer handshakes at once: dropped {from}");
                            continue;
                        };
                        let mesh = mesh.clone();
                        tokio::spawn(async move {
                            if let Err(e) =
                                link::run(mesh, stream, from.to_string(), false, permit).await
                            {
                                tracing::warn!(peer = %from, "mesh link from {from} ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a peer failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        tracing::info!(address = %local, "listening for peers");
        lock(&self.inner.listeners).push((local, task));
        Ok(local)
    }

    /// Links to the node at `addr` and keeps the link up, retrying with
    /// backoff when it drops. With `persist`, a failed first attempt is
    /// retried too (a `--peer` given at start may not be up yet);
    /// otherwise its error is returned and nothing more is tried.
    pub async fn connect(&self, addr: &str, persist: bool) -> Result<String, MeshError> {
        if self.inner.secret.is_none() {
            return Err(MeshError::NoSecret);
        }
        let (first_tx, first_rx) = oneshot::channel();
        let node = Arc::new(Mutex::new(None));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(link::dial(
            self.clone(),
            id,
            addr.to_owned(),
            node.clone(),
            first_tx,
            persist,
        ));
        lock(&self.inner.dialers).push(Dialer {
            id,
            address: addr.to_owned(),
            node,
            task,
        });
        let outcome = match tokio::time::timeout(FIRST_ATTEMPT, first_rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err("the link attempt was abandoned".to_owned()),
            Err(_) => Err(format!("no link within {FIRST_ATTEMPT:?}")),
        };
        match outcome {
            Ok(node) => {
                lock(&self.inner.killed).remove(&node);
                Ok(node)
            }
            Err(why) => {
                if !persist {
                    self.stop_dialer(|d| d.id == id);
                }
                Err(MeshError::Link {
                    addr: addr.to_owned(),
                    why,
                })
            }
        }
    }

    fn stop_dialer(&self, matches: impl Fn(&Dialer) -> bool) -> bool {
        let mut dialers = lock(&self.inner.dialers);
        let before = dialers.len();
        dialers.retain(|d| {
            let stop = matches(d);
            if stop {
                d.task.abort();
            }
            !stop
        });
        dialers.len() != before
    }

    /// Drops the link to `node` (a node name, or the address of a dialler
    /// that has not reached its node yet), stops redialling it, and refuses
    /// its links until an operator links to it again.
    pub fn kill(&self, node: &str) -> Result<(), MeshError> {
        // A dialler that never reached its node is known by its address.
        let stopped = self.stop_dialer(|d| {
            d.address == node || lock(&d.node).as_deref().is_some_and(|n| n == node)
        });
        let cut = lock(&self.inner.peers).get(node).map(|p| p.cut.clone());
        if let Some(cut) = &cut {
            cut.notify_one();
        }
        if cut.is_none() && !stopped {
            return Err(MeshError::NoSuchPeer(node.to_owned()));
        }
        // An address is not a node: there is nothing to refuse by it.
        if valid_node_name(node) {
            lock(&self.inner.killed).insert(node.to_owned());
        }
        tracing::info!(peer = node, "operator dropped the link to {node}");
        Ok(())
    }

    /// The direct links of this node, sorted by node.
    pub fn peers(&self) -> Vec<PeerLink> {
        let mut peers: Vec<PeerLink> = lock(&self.inner.peers)
            .iter()
            .map(|(node, p)| PeerLink {
                node: node.clone(),
                address: p.address.clone(),
                outbound: p.outbound,
            })
            .collect();
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        peers
    }

    /// Every node known and every link both of whose ends report it.
    pub fn topology(&self) -> Topology {
        let state = self.state();
        Topology {
            nodes: state.nodes(),
            links: state.links(),
        }
    }

    /// Closes listeners and links, and stops redialling.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        for (_, task) in lock(&self.inner.listeners).drain(..) {
            task.abort();
        }
        self.stop_dialer(|_| true);
        for peer in lock(&self.inner.peers).values() {
            peer.cut.notify_one();
        }
    }

    fn next_version(&self) -> u64 {
        self.inner.version.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Publishes this node's current links to every node.
    fn publish_links(&self) {
        // Reading the links and numbering the record happen as one step, or
        // two link changes at once could publish the older list last.
        let _publishing = lock(&self.inner.publishing);
        let mut peers: Vec<String> = lock(&self.inner.peers).keys().cloned().collect();
        peers.sort();
        self.publish(Facts::Links { peers });
    }

    fn publish(&self, facts: Facts) {
        let record = NodeState {
            node: self.inner.me.clone(),
            instance: self.inner.instance,
            version: self.next_version(),
            facts,
        };
        self.state().publish(record.clone());
        self.flood(&PeerMessage::State(record), None);
    }

    /// Publishes accounts and presence if they differ from `last`.
    fn publish_local(&self, last: &mut (Vec<(String, i64)>, Vec<String>)) {
        let accounts = self.inner.core.local_accounts();
        if accounts != last.0 {
            last.0 = accounts.clone();
            self.publish(Facts::Accounts { accounts });
        }
        let online = self.inner.core.local_online();
        if online != last.1 {
            last.1 = online.clone();
            self.publish(Facts::Presence { online });
        }
    }

    /// Tells the mesh about account and presence changes, a burst at a time.
    async fn publish_changes(self, mut last: (Vec<(String, i64)>, Vec<String>)) {
        let mut stop = self.inner.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = self.inner.core.local_changed() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            // A login storm becomes one record, not thousands.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.publish_local(&mut last);
        }
    }

    /// Sends `message` to every peer but `except`.
    fn flood(&self, message: &PeerMessage, except: Option<&str>) {
        let Some(bytes) = encode(message) else {
            return;
        };
        let peers = lock(&self.inner.peers);
        for (node, peer) in peers.iter() {
            if Some(node.as_str()) != except {
                offer(node, peer, &bytes);
            }
        }
    }

    /// Sends `message` to one peer.
    fn send_to(&self, peer: &str, message: &PeerMessage) -> bool {
        let Some(bytes) = encode(message) else {
            return false;
        };
        match lock(&self.inner.peers).get(peer) {
            Some(p) => offer(peer, p, &bytes),
            None => false,
        }
    }

    /// Sends a routed message towards its destination.
    fn route(&self, routed: Routed) -> bool {
        let hop = self.state().next_hop(&routed.dst).map(str::to_owned);
        match hop {
            Some(hop) => self.send_to(&hop, &PeerMessage::Routed(routed)),
            None => false,
        }
    }

    fn reply(&self, to: &str, body: RoutedBody) {
        let routed = Routed {
            src: self.inner.me.clone(),
            dst: to.to_owned(),
            hops: frame::MAX_HOPS,
            body,
        };
        if !self.route(routed) {
            tracing::debug!(node = to, "no route back to {to}: reply dropped");
        }
    }

    /// Handles a routed message addressed to this node.
    fn arrived(&self, src: String, body: RoutedBody) -> Option<BoxFuture<'static, ()>> {
        match body {
            RoutedBody::Direct {
                req,
                from,
                to,
                body,
                client_msg_id,
                sent_ms,
            } => {
                let stored = self.inner.core.deliver_remote_direct(
                    &from,
                    &src,
                    &to,
                    &body,
                    client_msg_id.as_deref(),
                    sent_ms,
                );
                let mesh = self.clone();
                Some(Box::pin(async move {
                    let ack = match stored.await {
                        Ok(sent) => RoutedBody::DirectAck {
                            req,
                            stored: Some(frame::Stored {
                                id: sent.id,
                                sent_ms: sent.sent_at_ms,
                                duplicate: sent.duplicate,
                            }),
                            error: None,
                        },
                        Err(e) => RoutedBody::DirectAck {
                            req,
                            stored: None,
                            error: Some(RemoteError {
                                code: e.kind().code().to_owned(),
                                message: e.to_string(),
                            }),
                        },
                    };
                    mesh.reply(&src, ack);
                }))
            }
            RoutedBody::DirectAck { req, .. } => {
                let mut directs = lock(&self.inner.directs);
                // Only the node the message went to may answer for it.
                if directs.get(&req).is_some_and(|(node, _)| *node == src)
                    && let Some((_, waiter)) = directs.remove(&req)
                {
                    let _ = waiter.send(body);
                }
                None
            }
            RoutedBody::Query { req, query } => {
                let mesh = self.clone();
                Some(Box::pin(async move {
                    let answer = match query {
                        Query::Who => Answer::Who {
                            online: mesh.inner.core.local_online(),
                        },
                        Query::Stats => match mesh.inner.core.stats().await {
                            Ok(s) => Answer::Stats {
                                messages: s.messages,
                                accounts: s.accounts,
                                sessions: s.sessions_online,
                                rooms: s.rooms,
                                uptime_secs: s.uptime_secs,
                            },
                            Err(_) => return,
                        },
                    };
                    mesh.reply(&src, RoutedBody::Answer { req, answer });
                }))
            }
            RoutedBody::Answer { req, answer } => {
                if let Some(tx) = lock(&self.inner.queries).get(&req) {
                    let _ = tx.try_send((src, answer));
                }
                None
            }
        }
    }

    /// Asks every reachable node and waits for their answers, or the timeout.
    async fn gather(&self, query: Query) -> (Vec<(String, Answer)>, Vec<String>) {
        let targets = self.state().reachable();
        if targets.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let req = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(targets.len());
        {
            let mut queries = lock(&self.inner.queries);
            if queries.len() >= MAX_PENDING {
                return (Vec::new(), targets);
            }
            queries.insert(req, tx);
        }
        // However this ends, cancelled callers included, the entry goes.
        let _pending = Pending {
            mesh: self.clone(),
            req,
            directs: false,
        };
        for node in &targets {
            self.reply(
                node,
                RoutedBody::Query {
                    req,
                    query: query.clone(),
                },
            );
        }
        let mut answers: Vec<(String, Answer)> = Vec::new();
        let deadline = tokio::time::Instant::now() + self.inner.query_timeout;
        while answers.len() < targets.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((node, answer))) => {
                    let fits = matches!(
                        (&query, &answer),
                        (Query::Who, Answer::Who { .. }) | (Query::Stats, Answer::Stats { .. })
                    );
                    if fits && targets.contains(&node) && !answers.iter().any(|(n, _)| *n == node) {
                        answers.push((node, answer));
                    }
                }
                _ => break,
            }
        }
        let missing = targets
            .into_iter()
            .filter(|t| !answers.iter().any(|(n, _)| n == t))
            .collect();
        (answers, missing)
    }
}

/// A request waiting on another node; dropping it forgets the request, so
/// a caller that gives up leaves nothing behind.
struct Pending {
    mesh: Mesh,
    req: u64,
    /// A direct message (else a query).
    directs: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.directs {
            lock(&self.mesh.inner.directs).remove(&self.req);
        } else {
            lock(&self.mesh.inner.queries).remove(&self.req);
        }
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

/// Queues bytes for a peer; a peer whose queue is full is cut, so one stuck
/// link cannot hold up the rest. It resynchronises when it relinks.
fn offer(node: &str, peer: &Peer, bytes: &Bytes) -> bool {
    match peer.tx.try_send(bytes.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                peer = node,
                "peer {node} fell too far behind: cutting the link"
            );
            peer.cut.notify_one();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

fn encode(message: &PeerMessage) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    match frame::encode(message, &mut buf) {
        Ok(()) => Some(buf.freeze()),
        Err(e) => {
            tracing::warn!(error = %e, "a peer message could not be encoded");
            None
        }
    }
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

    fn flood(&self, message: &Message) {
        let Target::Room(room) = &message.to else {
            return;
        };
        // This runs on the commit path of every room message: a node with
        // no peers does no mesh work at all.
        if lock(&self.inner.peers).is_empty() {
            return;
        }
        let speech = frame::Speech {
            origin: self.inner.me.clone(),
            instance: self.inner.instance,
            seq: self.inner.speech_seq.fetch_add(1, Ordering::Relaxed) + 1,
            room: room.clone(),
            // Peers get the account's name: each shows it as its own view
            // of the claims on that name says.
            from: message
                .from
                .split_once('@')
                .map_or(message.from.as_str(), |(name, _)| name)
                .to_owned(),
            body: message.body.clone(),
            sent_ms: message.sent_at_ms,
        };
        Mesh::flood(self, &PeerMessage::Speech(speech), None);
    }

    fn send_direct(&self, message: RemoteDirect) -> BoxFuture<'static, Result<Sent, CoreError>> {
        let node = message.to.node.clone();
        let req = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        // Registered and routed before this returns, so sends made one
        // after another leave in that order.
        let queued = {
            let mut directs = lock(&self.inner.directs);
            if directs.len() >= MAX_PENDING {
                Err(CoreError::Limit(
                    "too many messages are waiting on other nodes: try again shortly".into(),
                ))
            } else {
                directs.insert(req, (node.clone(), tx));
                Ok(())
            }
        }
        .and_then(|()| {
            let routed = Routed {
                src: self.inner.me.clone(),
                dst: node.clone(),
                hops: frame::MAX_HOPS,
                body: RoutedBody::Direct {
                    req,
                    from: message.from,
                    to: message.to.name.clone(),
                    body: message.body,
                    client_msg_id: message.client_msg_id,
                    sent_ms: message.sent_ms,
                },
            };
            if self.route(routed) {
                Ok(())
            } else {
                lock(&self.inner.directs).remove(&req);
                Err(CoreError::Unreachable(format!(
                    "{}'s home node {node} cannot be reached now: try again later",
                    message.to.name
                )))
            }
        });
        // Dropped with the future, so a caller that gives up leaves nothing.
        let pending = Pending {
            mesh: self.clone(),
            req,
            directs: true,
        };
        Box::pin(async move {
            queued?;
            let answer = tokio::time::timeout(DIRECT_TIMEOUT, rx).await;
            drop(pending);
            match answer {
                Ok(Ok(RoutedBody::DirectAck {
                    stored: Some(s), ..
                })) => Ok(Sent {
                    id: s.id,
                    sent_at_ms: s.sent_ms,
                    duplicate: s.duplicate,
                }),
                Ok(Ok(RoutedBody::DirectAck { error: Some(e), .. })) => Err(CoreError::FromNode {
                    node,
                    kind: ErrorKind::from_code(&e.code),
                    message: clean(&e.message),
                }),
                _ => Err(CoreError::Unreachable(format!(
                    "node {node} did not confirm the message in time: it may or may not be stored"
                ))),
            }
        })
    }

    fn gather_who(&self) -> BoxFuture<'static, Gathered<UserInfo>> {
        let mesh = self.clone();
        Box::pin(async move {
            let (answers, missing) = mesh.gather(Query::Who).await;
            let mut users = Vec::new();
            for (node, answer) in answers {
                if let Answer::Who { online } = answer {
                    // Names reach users' screens: only well-formed ones.
                    let valid = online
                        .into_iter()
                        .filter(|n| crate::core::names::account_key(n).is_ok());
                    users.extend(valid.map(|name| UserInfo {
                        name,
                        online: true,
                        node: node.clone(),
                    }));
                }
            }
            Gathered {
                answers: users,
                missing,
            }
        })
    }

    fn gather_stats(&self) -> BoxFuture<'static, Gathered<Stats>> {
        let mesh = self.clone();
        Box::pin(async move {
            let (answers, missing) = mesh.gather(Query::Stats).await;
            let stats = answers
                .into_iter()
                .filter_map(|(node, answer)| match answer {
                    Answer::Stats {
                        messages,
                        accounts,
                        sessions,
                        rooms,
                        uptime_secs,
                    } => Some(Stats {
                        messages,
                        accounts,
                        sessions_online: sessions,
                        rooms,
                        uptime_secs,
                        node,
                    }),
                    Answer::Who { .. } => None,
                })
                .collect();
            Gathered {
                answers: stats,
                missing,
            }
        })
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
