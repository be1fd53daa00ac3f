//! What the client doors share: the gate that admits connections (a cap in
//! all and per address), TLS, the accept loop, the shutdown signal, a way to
//! wait for every connection to finish, and reading and writing a socket
//! with bounded buffers and time limits.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::request_clock::{Progress, RequestClock};
use crate::config::ConnectionBounds;
use crate::core::{Closed, Delivery, Encoding, Inbox, Message};

/// Tells connection tasks to say goodbye and stop.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown { rx })
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// Held by every connection task; the server waits until all are dropped.
pub type Draining = mpsc::Sender<()>;

/// How long a write to one client may block before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Refusals being written at once, at most; past it a refused connection is
/// closed without a word, so a flood at the cap costs no more than that.
const REFUSALS_AT_ONCE: usize = 64;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds as many connections as it may.
    Full,
    /// The address holds as many connections as one address may.
    PerAddress,
}

impl Refusal {
    pub fn text(self) -> &'static str {
        match self {
            Refusal::Full => "too many connections; try again later",
            Refusal::PerAddress => "too many connections from your address",
        }
    }
}

/// Admits connections: at most `max_connections` in all, every door
/// together, and `max_connections_per_ip` from one address, an IPv6
/// address counting as its /64 (what one user has to pick from).
pub struct Gate {
    total: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
    refusals: Arc<Semaphore>,
}

/// An admitted connection's place; gives it back when dropped.
pub struct Pass {
    gate: Arc<Gate>,
    address: IpAddr,
    _permit: OwnedSemaphorePermit,
    /// Counts the connection as open, by door, while it lives.
    _open: Option<crate::metrics::Open>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut counts = self.gate.counts();
        if let Some(n) = counts.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

impl Gate {
    pub fn new(bounds: &ConnectionBounds) -> Arc<Gate> {
        Arc::new(Gate {
            total: Arc::new(Semaphore::new(bounds.max_connections)),
            per_address: Mutex::new(HashMap::new()),
            max_per_address: bounds.max_connections_per_ip,
            refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Pass, Refusal> {
        let address = crate::core::throttle::address_key(address);
        let mut counts = self.counts();
        let n = counts.entry(address).or_insert(0);
        if *n >= self.max_per_address {
            return Err(Refusal::PerAddress);
        }
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        *n += 1;
        drop(counts);
        Ok(Pass {
            gate: self.clone(),
            address,
            _permit: permit,
            _open: None,
        })
    }
}

/// One door's way in: the gate it shares with the other doors, its TLS
/// acceptor if it speaks TLS, and the time a TLS handshake may take.
#[derive(Clone)]
pub struct Door {
    /// Which door this is, for the metrics.
    pub kind: crate::metrics::Door,
    pub gate: Arc<Gate>,
    pub tls: Option<TlsAcceptor>,
    pub handshake_timeout: Duration,
}

/// A client connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The read and write halves; plain TCP keeps tokio's owned halves, whose
    /// readiness-based reads let an idle connection hold no buffer.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(tls) => {
                let (r, w) = tokio::io::split(*tls);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The writing half of a [`Stream`].
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

/// A connection past the gate (and its TLS handshake, if any).
pub struct Accepted {
    pub stream: Stream,
    pub peer: SocketAddr,
    /// Its place at the gate: dropping it lets another connection in.
    pub pass: Pass,
}

/// Accepts connections until shutdown, admits them through the door's gate,
/// completes TLS on a TLS door, and hands each to `handle` on a task of its
/// own. A connection the gate refuses is handed to `refuse` (to say why)
/// and closed.
pub async fn accept_loop<H, HF, R, RF>(
    listener: TcpListener,
    door: Door,
    shutdown: Shutdown,
    draining: Draining,
    handle: H,
    refuse: R,
) where
    H: Fn(Accepted, Shutdown) -> HF + Send + Sync + 'static,
    HF: Future<Output = ()> + Send + 'static,
    R: Fn(Stream, Refusal) -> RF + Send + Sync + 'static,
    RF: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let refuse = Arc::new(refuse);
    let stop = {
        let mut shutdown = shutdown.clone();
        async move { shutdown.wait().await }
    };
    crate::accept::accept_loop(listener, stop, move |tcp, peer| {
        let _ = tcp.set_nodelay(true);
        let admitted = door.gate.admit(peer.ip());
        let door = door.clone();
        match admitted {
            Ok(mut pass) => {
                pass._open = Some(crate::metrics::connection_opened(door.kind));
                let (handle, shutdown, draining) =
                    (handle.clone(), shutdown.clone(), draining.clone());
                tokio::spawn(async move {
                    let Some(stream) = open(&door, tcp, peer).await else {
                        return;
                    };
                    handle(Accepted { stream, peer, pass }, shutdown).await;
                    drop(draining);
                });
            }
            Err(refusal) => {
                crate::metrics::connection_refused();
                // Saying why costs a task and, on a TLS door, a handshake:
                // only so many at once.
                let Ok(permit) = door.gate.refusals.clone().try_acquire_owned() else {
                    return;
                };
                let refuse = refuse.clone();
                tokio::spawn(async move {
                    if let Some(stream) = open(&door, tcp, peer).await {
                        let _ =
                            tokio::time::timeout(door.handshake_timeout, refuse(stream, refusal))
                                .await;
                    }
                    drop(permit);
                });
            }
        }
    })
    .await;
}

/// Completes the TLS handshake on a TLS door, within the door's time limit.
async fn open(door: &Door, tcp: TcpStream, peer: SocketAddr) -> Option<Stream> {
    let Some(acceptor) = &door.tls else {
        return Some(Stream::Plain(tcp));
    };
    match tokio::time::timeout(door.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(Stream::Tls(Box::new(tls))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not finished in time");
            None
        }
    }
}

/// A gRPC or HTTP connection that came through the gate: tonic serves it,
/// and its place at the gate is given back when tonic drops it.
///
/// HTTP/2 has no deadline of its own for a frame begun and never finished,
/// nor for the connection preface: a client sending a byte at a time would
/// hold its connection for ever. So the connection watches the frames go
/// by (their 9-byte headers give their lengths) and fails a read once a
/// frame, or the preface, has been arriving for longer than the read
/// deadline. A connection quiet between frames is HTTP/2 keepalive's
/// business.
pub struct GrpcConnection {
    stream: Stream,
    peer: SocketAddr,
    _pass: Pass,
    clock: Clock,
}

impl GrpcConnection {
    pub fn new(accepted: Accepted, read_timeout: Duration) -> GrpcConnection {
        GrpcConnection {
            stream: accepted.stream,
            peer: accepted.peer,
            _pass: accepted.pass,
            clock: Clock::Frames(FrameClock::new(read_timeout)),
        }
    }

    /// A connection of the HTTP door, which speaks HTTP/1.1 as well: its
    /// first bytes say which HTTP it speaks, and each is timed its way.
    pub fn http(accepted: Accepted, read_timeout: Duration) -> GrpcConnection {
        GrpcConnection {
            stream: accepted.stream,
            peer: accepted.peer,
            _pass: accepted.pass,
            clock: Clock::Http(HttpClock::new(read_timeout)),
        }
    }
}

/// What a connection is held to as its bytes come in.
enum Clock {
    /// HTTP/2 only (the gRPC door): each frame, and the preface, due whole.
    Frames(FrameClock),
    /// The HTTP door.
    Http(HttpClock),
}

impl Clock {
    /// Follows `bytes`; an error ends the connection.
    fn saw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Clock::Frames(frames) => {
                frames.saw(bytes);
                Ok(())
            }
            Clock::Http(http) => http.saw(bytes),
        }
    }

    fn overdue(&self) -> bool {
        match self {
            Clock::Frames(frames) => frames.overdue(),
            Clock::Http(http) => http.overdue(),
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Clock::Frames(frames) => frames.expired(cx),
            Clock::Http(http) => http.expired(cx),
        }
    }
}

/// The HTTP door's clock. The first bytes are due within the deadline;
/// they say which HTTP the client speaks (HTTP/2 opens with its preface,
/// `PRI * HTTP/2.0`, a method HTTP/1.1 never uses). HTTP/2 is then timed
/// frame by frame as on the gRPC door; HTTP/1.1 request by request, each
/// due whole (head and body) within the deadline, with bodies capped at
/// [`request_clock::MAX_BODY`]. Between requests hyper's keep-alive
/// timer rules.
struct HttpClock {
    limit: Duration,
    /// The first bytes, until there are enough to tell.
    first: Vec<u8>,
    speaks: Option<Speaks>,
    /// Until it speaks HTTP/2, when its frame clock takes over.
    deadline: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

enum Speaks {
    Http2(FrameClock),
    Http1(RequestClock),
}

/// Bytes enough to tell the HTTP/2 preface from an HTTP/1.1 request.
const PREFACE_START: &[u8] = b"PRI";

impl HttpClock {
    fn new(limit: Duration) -> HttpClock {
        HttpClock {
            limit,
            first: Vec::with_capacity(PREFACE_START.len()),
            speaks: None,
            deadline: Box::pin(tokio::time::sleep(limit)),
            armed: true,
        }
    }

    fn saw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let bytes = match &self.speaks {
            Some(_) => bytes,
            None => {
                let n = (PREFACE_START.len() - self.first.len()).min(bytes.len());
                self.first.extend_from_slice(&bytes[..n]);
                if self.first.len() < PREFACE_START.len() {
                    return Ok(());
                }
                self.speaks = Some(if self.first == PREFACE_START {
                    Speaks::Http2(FrameClock::new(self.limit))
                } else {
                    Speaks::Http1(RequestClock::default())
                });
                let first = std::mem::take(&mut self.first);
                self.follow(&first)?;
                &bytes[n..]
            }
        };
        self.follow(bytes)
    }

    fn follow(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.speaks {
            Some(Speaks::Http2(frames)) => frames.saw(bytes),
            Some(Speaks::Http1(requests)) => {
                let busy = match requests.saw(bytes) {
                    Progress::Idle => false,
                    Progress::Busy => true,
                    Progress::TooLarge => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "an HTTP request body over the limit",
                        ));
                    }
                };
                if busy && !self.armed {
                    let at = tokio::time::Instant::now() + self.limit;
                    self.deadline.as_mut().reset(at);
                }
                self.armed = busy;
            }
            None => {}
        }
        Ok(())
    }

    fn overdue(&self) -> bool {
        match &self.speaks {
            Some(Speaks::Http2(frames)) => frames.overdue(),
            _ => self.armed && self.deadline.deadline() <= tokio::time::Instant::now(),
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.speaks {
            Some(Speaks::Http2(frames)) => frames.expired(cx),
            _ => self.armed && self.deadline.as_mut().poll(cx).is_ready(),
        }
    }
}

/// The HTTP/2 client connection preface, which a client sends first.
const H2_PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header: a 24-bit length, type, flags, stream id.
const H2_HEADER_LEN: usize = 9;

/// Where an HTTP/2 byte stream is between frames, and since when the frame
/// under way has been arriving.
struct FrameClock {
    limit: Duration,
    /// Bytes of the preface still to come.
    preface: usize,
    header: [u8; H2_HEADER_LEN],
    header_have: usize,
    /// Payload bytes of the current frame still to come.
    payload: usize,
    /// When the unfinished frame's time is up; heeded only while `armed`.
    /// Kept and reset rather than made anew, as frames end and begin.
    deadline: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl FrameClock {
    fn new(limit: Duration) -> FrameClock {
        FrameClock {
            limit,
            preface: H2_PREFACE_LEN,
            header: [0; H2_HEADER_LEN],
            header_have: 0,
            payload: 0,
            // The preface is due from the start.
            deadline: Box::pin(tokio::time::sleep(limit)),
            armed: true,
        }
    }

    fn mid_frame(&self) -> bool {
        self.preface > 0 || self.header_have > 0 || self.payload > 0
    }

    /// Follows `bytes` through the frame structure.
    fn saw(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                bytes = &bytes[n..];
            } else {
                let n = (H2_HEADER_LEN - self.header_have).min(bytes.len());
                self.header[self.header_have..self.header_have + n].copy_from_slice(&bytes[..n]);
                self.header_have += n;
                bytes = &bytes[n..];
                if self.header_have == H2_HEADER_LEN {
                    let h = self.header;
                    self.payload =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.header_have = 0;
                }
            }
        }
        let mid_frame = self.mid_frame();
        if mid_frame && !self.armed {
            let at = tokio::time::Instant::now() + self.limit;
            self.deadline.as_mut().reset(at);
        }
        self.armed = mid_frame;
    }

    /// Whether the unfinished frame's time is up; registers for a wake-up
    /// when it will be.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.armed && self.deadline.as_mut().poll(cx).is_ready()
    }

    /// Whether the unfinished frame's time is up, without waiting for it.
    fn overdue(&self) -> bool {
        self.armed && self.deadline.deadline() <= tokio::time::Instant::now()
    }
}

impl tonic::transport::server::Connected for GrpcConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.stream.tcp().local_addr().ok(),
            remote_addr: Some(self.peer),
        }
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let clock = &mut this.clock;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            // A frame or request trickling in a byte at a time is as late
            // as one that stopped: both are checked against the same
            // deadline.
            Poll::Ready(Ok(())) if !clock.overdue() => {
                Poll::Ready(clock.saw(&buf.filled()[before..]))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if !clock.expired(cx) => Poll::Pending,
            _ => {
                tracing::debug!(peer = %this.peer, "a frame or request unfinished past the read deadline");
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "a frame or request was left unfinished",
                )))
            }
        }
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Time limits of a line or binary connection.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// To log in, from connecting (or from logging out).
    pub login: Duration,
    /// To finish a line or frame once its first byte has arrived.
    pub read: Duration,
}

impl Deadlines {
    pub fn new(bounds: &ConnectionBounds) -> Deadlines {
        Deadlines {
            login: bounds.login_timeout,
            read: bounds.read_timeout,
        }
    }
}

/// Resolves at `deadline`, or never when there is none.
pub async fn expires(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The most one read takes from a socket.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Where this worker thread reads sockets into before keeping the bytes.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Reads what has arrived into `buffer`; `Ok(0)` at the end of input.
///
/// An idle plain connection holds no read buffer. One that has used
/// everything it read gives its buffer back before waiting; once the socket
/// is readable, the bytes are read into the worker thread's scratch space
/// and only as many as arrived are kept. A large buffer per read would
/// instead leave the allocator a hole per connection that later allocations
/// fragment. (A TLS connection reads through rustls, which keeps buffers of
/// its own anyway.)
///
/// `buffer` holds what is left of earlier reads: nothing, or the start of a
/// line or frame. `started` is kept with it: when that unfinished line or
/// frame began arriving. It must be complete within `limit` of that, or the
/// read fails with `TimedOut`, so a client cannot hold a connection by
/// sending a byte at a time. (The caller sets `started` back to `None` as it
/// takes each whole line or frame.)
pub async fn read_more(
    reader: &mut ReadHalf,
    buffer: &mut BytesMut,
    started: &mut Option<Instant>,
    limit: Duration,
) -> std::io::Result<usize> {
    if buffer.is_empty() {
        *started = None;
    } else {
        started.get_or_insert_with(Instant::now);
    }
    let read = read_now(reader, buffer);
    match *started {
        None => read.await,
        Some(started) => match tokio::time::timeout_at((started + limit).into(), read).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("unfinished for over {} s", limit.as_secs()),
            )),
        },
    }
}

async fn read_now(reader: &mut ReadHalf, buffer: &mut BytesMut) -> std::io::Result<usize> {
    if buffer.is_empty() && buffer.capacity() > 0 {
        *buffer = BytesMut::new();
    }
    let reader = match reader {
        ReadHalf::Plain(reader) => reader,
        ReadHalf::Tls(reader) => {
            buffer.reserve(TLS_READ_CHUNK);
            return reader.read_buf(buffer).await;
        }
    };
    loop {
        reader.readable().await?;
        let read = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = reader.try_read(&mut scratch)?;
            buffer.extend_from_slice(&scratch[..n]);
            Ok::<_, std::io::Error>(n)
        });
        match read {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What one read from a TLS connection makes room for.
const TLS_READ_CHUNK: usize = 4096;

/// Writes a short message to a connection being turned away.
pub async fn say_and_close(mut stream: Stream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
}

/// Deliveries written per turn of a connection's loop, at most: enough for
/// one write to carry a burst, few enough that replies are not held back.
pub const PUSH_BATCH: usize = 256;

/// Appends `delivery` in `encoding`'s form to a batch buffer; `encode`
/// runs only for the first connection of that protocol to send it.
///
/// `following` is how many more deliveries the caller is about to append.
/// Room is made for all of them at once, reckoning each the size of this
/// one: the buffer starts empty (see [`write_out`]), and growing it by
/// doubling to a batch of a few hundred copied most of the batch again.
pub fn push_delivery(
    out: &mut Vec<u8>,
    delivery: &Delivery,
    following: usize,
    encoding: Encoding,
    encode: impl FnOnce(&Message, &mut Vec<u8>),
) {
    let bytes = delivery.encoded(encoding, |m| {
        let mut bytes = Vec::new();
        encode(m, &mut bytes);
        bytes
    });
    out.reserve(bytes.len() * (1 + following));
    out.extend_from_slice(bytes);
}

/// Writes `out` in one go, then gives its memory back, so an idle
/// connection holds no write buffer either. A client that does not read for
/// [`WRITE_TIMEOUT`] is given up on rather than holding its task forever.
pub async fn write_out(writer: &mut WriteHalf, out: &mut Vec<u8>) -> std::io::Result<()> {
    let result = write_within_limit(writer, out).await;
    *out = Vec::new();
    result
}

async fn write_within_limit(writer: &mut WriteHalf, out: &[u8]) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let writer = match writer {
        WriteHalf::Plain(writer) => writer,
        WriteHalf::Tls(writer) => {
            let write = async {
                writer.write_all(out).await?;
                writer.flush().await
            };
            return match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(result) => result,
                Err(_) => Err(stopped_reading()),
            };
        }
    };
    // Nearly every batch fits the socket's send buffer: written at once, it
    // needs no timer, which would otherwise be set and cancelled per write
    // on every connection. Only what the socket does not take waits.
    let written = match writer.try_write(out) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == out.len() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out[written..])).await {
        Ok(result) => result,
        Err(_) => Err(stopped_reading()),
    }
}

fn stopped_reading() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")
}

/// The next delivery of a logged-in connection; never resolves before login.
/// Hands `first`, and whatever else the inbox has ready up to
/// [`PUSH_BATCH`], to `take` with how many more are about to follow, so one
/// flush writes them all. A stream found closed is left for the caller's
/// next turn, which reports it.
pub fn take_ready(
    inbox: &mut Option<Inbox>,
    first: Delivery,
    mut take: impl FnMut(Delivery, usize),
) {
    let ready = inbox.as_ref().map_or(0, Inbox::ready);
    take(first, ready.min(PUSH_BATCH - 1));
    let Some(inbox) = inbox else { return };
    for taken in 1..PUSH_BATCH {
        match inbox.next().now_or_never() {
            Some(Ok(message)) => {
                let following = inbox.ready().min(PUSH_BATCH - 1 - taken);
                take(message, following);
            }
            _ => break,
        }
    }
}

pub async fn next_delivery(inbox: &mut Option<Inbox>) -> Result<Delivery, Closed> {
    match inbox {
        Some(inbox) => inbox.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_ipv6_slash_64_counts_as_one_address_at_the_gate() {
        let gate = Gate::new(&ConnectionBounds {
            max_connections: 100,
            max_connections_per_ip: 2,
            login_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = gate.admit(ip("2001:db8:1:2::1")).unwrap();
        let _second = gate.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(matches!(
            gate.admit(ip("2001:db8:1:2:abcd::77")),
            Err(Refusal::PerAddress)
        ));
        // Another /64 is another household.
        let _elsewhere = gate.admit(ip("2001:db8:1:3::1")).unwrap();
        // A place given back is free for the same /64 again.
        drop(first);
        gate.admit(ip("2001:db8:1:2::5")).unwrap();
    }

    fn h2_bytes(payloads: &[usize]) -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for &len in payloads {
            bytes.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 0, 0]);
            bytes.extend_from_slice(&[0, 0, 0, 1]);
            bytes.extend(std::iter::repeat_n(7u8, len));
        }
        bytes
    }

    proptest! {
        // However the bytes are cut into reads, the clock is between frames
        // exactly when every frame is complete.
        #[test]
        fn the_frame_clock_follows_frames_however_they_are_cut(
            payloads in proptest::collection::vec(0usize..3000, 0..8),
            cuts in proptest::collection::vec(1usize..700, 1..40),
            short in 0usize..2,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let _entered = runtime.enter();
            let mut bytes = h2_bytes(&payloads);
            bytes.truncate(bytes.len() - short.min(bytes.len()));
            let mut clock = FrameClock::new(Duration::from_secs(10));
            let mut rest = &bytes[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                clock.saw(&rest[..n]);
                rest = &rest[n..];
            }
            prop_assert_eq!(clock.mid_frame(), short > 0);
            prop_assert_eq!(clock.armed, short > 0);
        }
    }
}
