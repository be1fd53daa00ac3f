//! One link to a peer: the handshake, then a reader and a writer until it
//! drops; and the dialler that keeps an operator's link up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use super::frame::{self, Facts, FrameError, PeerMessage, RoutedBody, VERSION};
use super::handshake::{self, NoiseError, Transport};
use super::{Mesh, clean, lock};
use crate::core::names::{account_key, room_key};

/// Frames queued for one peer before the link is judged stuck and cut.
pub(super) const PEER_QUEUE: usize = 8192;

/// A registered live link.
pub(super) struct Peer {
    pub link: u64,
    pub address: String,
    pub outbound: bool,
    pub tx: mpsc::Sender<Bytes>,
    /// Set to cut the link.
    pub cut: Arc<Notify>,
}

impl Peer {
    /// Queues bytes for this peer, `node`. A peer whose queue is full is
    /// cut, so one stuck link cannot hold up the rest; it resynchronises
    /// when it relinks.
    pub fn offer(&self, node: &str, bytes: &Bytes) -> bool {
        match self.tx.try_send(bytes.clone()) {
            Ok(()) => {
                crate::metrics::mesh_frame_out();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    peer = node,
                    "peer {node} fell too far behind: cutting the link"
                );
                self.cut.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Largest frame before a link is accepted: a hello is far smaller.
const HANDSHAKE_FRAME: usize = 4096;
/// How long the whole handshake may take: the Noise messages, the hellos
/// and the readies.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A link quiet for this long is sent a ping.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A link that has said nothing for this long is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(15);
/// Messages from one peer being stored at once; more waits, which stops
/// reading from that peer.
const IN_FLIGHT: usize = 1024;
/// Queued frame bytes sealed and written at once, at most (give or take a
/// frame).
const WRITE_BATCH: usize = 256 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest node name.
pub const MAX_NODE_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the link")]
    Closed,
    #[error("the peer sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Noise(#[from] NoiseError),
    #[error("the peer refused the link: {0}")]
    Refused(String),
    #[error("refused the peer: {0}")]
    Refusing(String),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("the peer said nothing for {0:?}")]
    Idle(Duration),
    #[error("the handshake took longer than {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
}

/// Whether a node name is acceptable: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The reading half of a link: Noise messages in, frames out.
struct Reader {
    half: OwnedReadHalf,
    transport: Transport,
    /// Ciphertext not yet opened: at most one partial message beyond what
    /// one read brought.
    wire: BytesMut,
    /// The frame stream, opened.
    plain: BytesMut,
    /// Largest frame taken: small until the link is accepted.
    max: usize,
}

impl Reader {
    async fn read(&mut self) -> Result<PeerMessage, LinkError> {
        loop {
            if let Some(message) = frame::decode_within(&mut self.plain, self.max)? {
                return Ok(message);
            }
            if self.transport.open(&mut self.wire, &mut self.plain)? {
                continue;
            }
            if self.half.read_buf(&mut self.wire).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }
}

/// The writing half of a link: frames in, Noise messages out.
struct Writer {
    half: OwnedWriteHalf,
    transport: Transport,
    /// Reused for each write's ciphertext.
    out: BytesMut,
}

impl Writer {
    /// Seals a run of encoded frames and writes it.
    async fn write_plain(&mut self, plain: &[u8]) -> Result<(), LinkError> {
        self.out.clear();
        self.transport.seal(plain, &mut self.out)?;
        self.half.write_all(&self.out).await?;
        Ok(())
    }

    async fn write(&mut self, message: &PeerMessage) -> Result<(), LinkError> {
        let mut plain = BytesMut::new();
        frame::encode(message, &mut plain)?;
        self.write_plain(&plain).await
    }
}

/// Refuses the peer with a reason it will log, and logs it here too.
async fn refuse(writer: &mut Writer, reason: String) -> LinkError {
    tracing::warn!("refusing a peer: {reason}");
    let _ = writer
        .write(&PeerMessage::Refuse {
            reason: reason.clone(),
        })
        .await;
    LinkError::Refusing(reason)
}

/// Runs the exchange of hellos over the encrypted link; returns the peer's
/// node name. The Noise handshake has already proven the secret.
async fn exchange_hellos(
    mesh: &Mesh,
    reader: &mut Reader,
    writer: &mut Writer,
    outbound: bool,
) -> Result<String, LinkError> {
    writer
        .write(&PeerMessage::Hello {
            node: mesh.inner.me.clone(),
            instance: mesh.inner.instance,
            version: VERSION,
        })
        .await?;
    let peer = match reader.read().await? {
        PeerMessage::Hello {
            node,
            instance,
            version,
        } => match admit(mesh, &node, instance, version, outbound) {
            Ok(()) => node,
            Err(reason) => return Err(refuse(writer, reason).await),
        },
        PeerMessage::Refuse { reason } => return Err(LinkError::Refused(clean(&reason))),
        _ => return Err(refuse(writer, "the first frame must be hello".into()).await),
    };
    writer.write(&PeerMessage::Ready).await?;
    match reader.read().await? {
        PeerMessage::Ready => Ok(peer),
        PeerMessage::Refuse { reason } => Err(LinkError::Refused(clean(&reason))),
        _ => Err(refuse(writer, "expected ready".into()).await),
    }
}

/// Whether a peer that said hello may link; if not, the reason it is
/// refused, from the first check that fails.
fn admit(
    mesh: &Mesh,
    peer: &str,
    instance: u64,
    version: u32,
    outbound: bool,
) -> Result<(), String> {
    if version != VERSION {
        return Err(format!(
            "peer protocol version {version} is not spoken here (this node speaks {VERSION})"
        ));
    }
    if !valid_node_name(peer) {
        return Err("invalid node name".into());
    }
    if peer == mesh.inner.me {
        return Err(format!("{peer} is this node's own name"));
    }
    // An operator's own /peer-connect overrides an earlier /peer-kill.
    if !outbound && lock(&mesh.inner.killed).contains(peer) {
        return Err(format!("an operator dropped the link to {peer}"));
    }
    if lock(&mesh.inner.peers).contains_key(peer) {
        return Err(format!("already linked to {peer}"));
    }
    let clash = {
        let state = mesh.state();
        state.is_reachable(peer) && state.instance_of(peer) != Some(instance)
    };
    if clash {
        return Err(format!("a node named {peer} is already in the mesh"));
    }
    Ok(())
}

/// Runs the Noise handshake and the hellos on a fresh connection, within
/// [`HANDSHAKE_TIMEOUT`]; on success returns the halves and the peer's name.
async fn open(
    mesh: &Mesh,
    mut stream: TcpStream,
    outbound: bool,
) -> Result<(Reader, Writer, String), LinkError> {
    let _ = stream.set_nodelay(true);
    let secret = mesh.inner.secret.clone().unwrap_or_default();
    let opening = async {
        let transport = if outbound {
            handshake::initiate(&mut stream, &secret).await?
        } else {
            handshake::respond(&mut stream, &secret).await?
        };
        let (read, write) = stream.into_split();
        let mut reader = Reader {
            half: read,
            transport: transport.clone(),
            wire: BytesMut::with_capacity(1024),
            plain: BytesMut::with_capacity(1024),
            max: HANDSHAKE_FRAME,
        };
        let mut writer = Writer {
            half: write,
            transport,
            out: BytesMut::with_capacity(1024),
        };
        let peer = exchange_hellos(mesh, &mut reader, &mut writer, outbound).await?;
        Ok::<_, LinkError>((reader, writer, peer))
    };
    let (mut reader, writer, peer) = tokio::time::timeout(HANDSHAKE_TIMEOUT, opening)
        .await
        .map_err(|_| LinkError::HandshakeTimeout)??;
    reader.max = frame::MAX_FRAME;
    Ok((reader, writer, peer))
}

/// Serves a connection a peer opened to us.
pub(super) async fn run(
    mesh: Mesh,
    stream: TcpStream,
    address: String,
    outbound: bool,
    handshaking: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), LinkError> {
    let (reader, writer, peer) = open(&mesh, stream, outbound).await?;
    drop(handshaking);
    serve(mesh, reader, writer, peer, address, outbound).await
}

/// Keeps a link to `address` up until aborted: dials, and redials with
/// backoff when the link drops or the attempt fails. The first attempt's
/// outcome goes to `first`.
pub(super) async fn dial(
    mesh: Mesh,
    id: u64,
    address: String,
    node: Arc<Mutex<Option<String>>>,
    first: oneshot::Sender<Result<String, String>>,
    persist: bool,
) {
    let mut first = Some(first);
    let mut backoff = BACKOFF_MIN;
    let mut stop = mesh.inner.shutdown.subscribe();
    loop {
        let attempt = async {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&address))
                .await
                .map_err(|_| LinkError::HandshakeTimeout)??;
            open(&mesh, stream, true).await
        };
        match attempt.await {
            Ok((reader, writer, peer)) => {
                *lock(&node) = Some(peer.clone());
                if let Some(first) = first.take() {
                    let _ = first.send(Ok(peer.clone()));
                }
                backoff = BACKOFF_MIN;
                let ended = serve(
                    mesh.clone(),
                    reader,
                    writer,
                    peer.clone(),
                    address.clone(),
                    true,
                )
                .await;
                tracing::warn!(peer = %peer, "link to {peer} at {address} dropped: {}", match ended {
                    Ok(()) => "closed".to_owned(),
                    Err(e) => e.to_string(),
                });
            }
            Err(e) => {
                tracing::warn!(address = %address, "linking to {address} failed: {e}");
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e.to_string()));
                    if !persist {
                        lock(&mesh.inner.dialers).retain(|d| d.id != id);
                        return;
                    }
                }
            }
        }
        // Jitter keeps two nodes that dial each other from colliding forever.
        let jitter = Duration::from_millis(rand::random::<u64>() % 100);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs an established link until it drops, is cut, or the node stops.
async fn serve(
    mesh: Mesh,
    reader: Reader,
    writer: Writer,
    peer: String,
    address: String,
    outbound: bool,
) -> Result<(), LinkError> {
    let Some(Registered { link, rx, cut }) = register(&mesh, &peer, address, outbound)? else {
        return Ok(());
    };
    let writing = tokio::spawn(write_loop(writer, rx, cut.clone(), peer.clone()));
    // Whether the link ends by itself or the task serving it is aborted
    // (`/peer-kill` stops a dialler mid-link), it is unregistered.
    let _registration = Registration {
        mesh: mesh.clone(),
        peer: peer.clone(),
        link,
        writing,
    };
    let outcome = read_loop(&mesh, reader, &peer, &cut).await;
    if let Err(e) = &outcome {
        tracing::warn!(peer = %peer, "link to {peer} ended: {e}");
    }
    outcome
}

/// A link just entered in the peer table.
struct Registered {
    link: u64,
    /// What is queued for the peer.
    rx: mpsc::Receiver<Bytes>,
    /// Set to cut the link.
    cut: Arc<Notify>,
}

/// Enters an established link in the peer table, with everything this node
/// knows queued for the newcomer; `None` when the node is stopping.
fn register(
    mesh: &Mesh,
    peer: &str,
    address: String,
    outbound: bool,
) -> Result<Option<Registered>, LinkError> {
    let (tx, rx) = mpsc::channel::<Bytes>(PEER_QUEUE);
    let cut = Arc::new(Notify::new());
    let link = mesh.next_id();
    if *mesh.inner.shutdown.borrow() {
        return Ok(None);
    }
    {
        let mut peers = lock(&mesh.inner.peers);
        if peers.contains_key(peer) {
            // The other direction won the race; this one goes.
            return Err(LinkError::Protocol(format!("already linked to {peer}")));
        }
        peers.insert(
            peer.to_owned(),
            Peer {
                link,
                address: address.clone(),
                outbound,
                tx: tx.clone(),
                cut: cut.clone(),
            },
        );
    }
    tracing::info!(peer = %peer, address = %address, "linked to {peer}");
    // Everything known goes to the newcomer, so a healed partition converges
    // in one exchange. Taken after registering, so nothing published in
    // between is missed; records are versioned, so their order does not
    // matter. Encoded outside the locks that the commit path needs.
    let known: Vec<_> = mesh.state().records().cloned().collect();
    for record in known {
        if let Some(bytes) = frame::to_bytes(&PeerMessage::State(record)) {
            let _ = tx.try_send(bytes);
        }
    }
    drop(tx);
    mesh.publish_links();
    Ok(Some(Registered { link, rx, cut }))
}

/// Writes what is queued for the peer, and a ping when nothing has been
/// for a while; a failed write cuts the link.
async fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Bytes>,
    cut: Arc<Notify>,
    peer: String,
) {
    let mut plain = BytesMut::new();
    loop {
        let next = tokio::time::timeout(PING_EVERY, rx.recv()).await;
        let result = match next {
            Ok(Some(bytes)) => {
                // What else is queued goes out in the same messages: a
                // burst of small frames costs one seal and one write.
                plain.clear();
                plain.extend_from_slice(&bytes);
                while plain.len() < WRITE_BATCH
                    && let Ok(more) = rx.try_recv()
                {
                    plain.extend_from_slice(&more);
                }
                writer.write_plain(&plain).await
            }
            Ok(None) => return,
            Err(_) => writer.write(&PeerMessage::Ping).await,
        };
        if let Err(e) = result {
            tracing::warn!(peer = %peer, "writing to {peer} failed: {e}");
            cut.notify_one();
            return;
        }
    }
}

/// Reads and handles the peer's messages until the link fails, goes idle,
/// is cut, or the node stops; the work they leave runs on tasks, at most
/// [`IN_FLIGHT`] at once.
async fn read_loop(
    mesh: &Mesh,
    mut reader: Reader,
    peer: &str,
    cut: &Notify,
) -> Result<(), LinkError> {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut stop = mesh.inner.shutdown.subscribe();
    loop {
        let message = tokio::select! {
            read = tokio::time::timeout(IDLE_LIMIT, reader.read()) => match read {
                Ok(Ok(message)) => message,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(LinkError::Idle(IDLE_LIMIT)),
            },
            _ = cut.notified() => return Ok(()),
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        };
        let Some(work) = handle(mesh, peer, message)? else {
            continue;
        };
        // A full set of slots stops reading this peer, but not a cut or a
        // shutdown.
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit,
            _ = cut.notified() => return Ok(()),
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        };
        let Ok(permit) = permit else {
            return Ok(());
        };
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// A link's place among the peers; dropping it takes the link down.
struct Registration {
    mesh: Mesh,
    peer: String,
    link: u64,
    writing: tokio::task::JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.writing.abort();
        let removed = {
            let mut peers = lock(&self.mesh.inner.peers);
            let ours = peers.get(&self.peer).is_some_and(|p| p.link == self.link);
            if ours {
                peers.remove(&self.peer);
            }
            ours
        };
        if removed {
            self.mesh.publish_links();
        }
    }
}

/// Handles one message from a linked peer; returns the work it leaves to
/// finish (a store, an answer), which the link runs under its bound.
fn handle(
    mesh: &Mesh,
    peer: &str,
    message: PeerMessage,
) -> Result<Option<BoxFuture<'static, ()>>, LinkError> {
    crate::metrics::mesh_frame_in();
    if let Err(what) = well_formed(&message) {
        return Err(LinkError::Protocol(what));
    }
    match message {
        PeerMessage::State(record) => mesh.received_record(peer, record),
        PeerMessage::Speech(speech) => return Ok(mesh.received_speech(peer, speech)),
        PeerMessage::Routed(routed) => return Ok(mesh.received_routed(peer, routed)),
        PeerMessage::Ping => {}
        PeerMessage::Hello { .. } | PeerMessage::Ready | PeerMessage::Refuse { .. } => {
            return Err(LinkError::Protocol(
                "handshake message on an established link".into(),
            ));
        }
    }
    Ok(None)
}

/// Checks the names a message carries, since they reach users' screens and
/// other nodes: a node, account or room name must be one this node would
/// accept from its own users.
fn well_formed(message: &PeerMessage) -> Result<(), String> {
    let node = |n: &str| {
        if valid_node_name(n) {
            Ok(())
        } else {
            Err(format!("invalid node name {:?}", truncate(n)))
        }
    };
    let account = |n: &str| {
        account_key(n)
            .map(|_| ())
            .map_err(|_| format!("invalid account name {:?}", truncate(n)))
    };
    match message {
        PeerMessage::State(record) => {
            node(&record.node)?;
            match &record.facts {
                Facts::Links { peers, store } => {
                    store.as_deref().map_or(Ok(()), store_id)?;
                    peers.iter().try_for_each(|p| node(p))
                }
                Facts::Accounts { accounts } => accounts.iter().try_for_each(|(a, _)| account(a)),
                Facts::Presence { online } => online.iter().try_for_each(|a| account(a)),
            }
        }
        PeerMessage::Speech(speech) => {
            node(&speech.origin)?;
            account(&speech.from)?;
            if let Some(stored) = &speech.stored {
                store_id(&stored.store)?;
                shown(&stored.shown)?;
            }
            room_key(&speech.room)
                .map(|_| ())
                .map_err(|_| format!("invalid room name {:?}", truncate(&speech.room)))
        }
        PeerMessage::Routed(routed) => {
            node(&routed.src)?;
            node(&routed.dst)?;
            match &routed.body {
                RoutedBody::Deliver { from, to, .. } => {
                    // The shown sender may carry a node: `name@node`.
                    shown(from)?;
                    account(to)
                }
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// A sender as a store holds it: an account name, or `name@node`.
fn shown(name: &str) -> Result<(), String> {
    let (account, node) = name.split_once('@').unwrap_or((name, "x"));
    if account_key(account).is_ok() && valid_node_name(node) {
        Ok(())
    } else {
        Err(format!("invalid sender {:?}", truncate(name)))
    }
}

/// A shared store's id: short and printable.
fn store_id(id: &str) -> Result<(), String> {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!("invalid store id {:?}", truncate(id)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}
