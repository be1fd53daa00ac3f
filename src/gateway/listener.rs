//! What the socket gateways (line and binary) share: an accept loop with a
//! cap on concurrent connections, the shutdown signal, and a way to wait for
//! every connection to finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

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

/// Accepts connections until shutdown. Past `max_connections`, a newcomer is
/// handed to `refuse` (to say why) and closed.
pub async fn accept_loop<H, HF, R, RF>(
    listener: TcpListener,
    max_connections: usize,
    mut shutdown: Shutdown,
    draining: Draining,
    handle: H,
    refuse: R,
) where
    H: Fn(TcpStream, Shutdown) -> HF,
    HF: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let task = handle(stream, shutdown.clone());
                let draining = draining.clone();
                tokio::spawn(async move {
                    task.await;
                    drop(permit);
                    drop(draining);
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream));
            }
        }
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
/// An idle connection holds no read buffer. One that has used everything it
/// read gives its buffer back before waiting; once the socket is readable,
/// the bytes are read into the worker thread's scratch space and only as
/// many as arrived are kept. A large buffer per read would instead leave
/// the allocator a hole per connection that later allocations fragment.
pub async fn read_some(
    reader: &mut OwnedReadHalf,
    buffer: &mut BytesMut,
) -> std::io::Result<usize> {
    if buffer.is_empty() && buffer.capacity() > 0 {
        *buffer = BytesMut::new();
    }
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
pub async fn write_out(writer: &mut OwnedWriteHalf, out: &mut Vec<u8>) -> std::io::Result<()> {
    let result = write_within_limit(writer, out).await;
    *out = Vec::new();
    result
}

async fn write_within_limit(writer: &mut OwnedWriteHalf, out: &[u8]) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
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
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading",
        )),
    }
}

/// The next delivery of a logged-in connection; never resolves before login.
pub async fn next_delivery(inbox: &mut Option<Inbox>) -> Result<Delivery, Closed> {
    match inbox {
        Some(inbox) => inbox.next().await,
        None => std::future::pending().await,
    }
}
