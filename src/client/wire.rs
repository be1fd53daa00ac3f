//! A client for the binary protocol. Requests may be issued concurrently
//! from clones of one client: a reader task matches each reply to its
//! request by id and hands pushes (deliveries, BYE) to [`WireClient::next_push`].
//! A writer task sends requests in the order they were made, and whatever
//! has queued up while it wrote goes out in its next single write: a client
//! with many requests in flight makes a system call per batch, not per
//! request, and the server reads them in batches too.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;

use super::transport::{self, ClientTls, Writer};
use super::waiters::Waiters;
use crate::codec::frame::{Frame, Header, MAX_REPLY};
use crate::codec::wire::{Dest, Rejection, Reply, ReplyError, Request, Status, op, parse_message};
use crate::core::{Message, Sent};

/// Bytes the writer gathers into one write before it writes them.
const WRITE_BATCH: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the connection closed")]
    Closed,
    #[error("{text} (status {status:?})")]
    Rejected {
        status: Option<Status>,
        text: String,
    },
    #[error("malformed reply: {0}")]
    Reply(&'static str),
}

impl WireError {
    pub fn status(&self) -> Option<Status> {
        match self {
            WireError::Rejected { status, .. } => *status,
            _ => None,
        }
    }
}

impl From<Rejection> for WireError {
    fn from(r: Rejection) -> WireError {
        WireError::Rejected {
            status: r.status(),
            text: r.text,
        }
    }
}

impl From<ReplyError> for WireError {
    fn from(e: ReplyError) -> WireError {
        match e {
            ReplyError::Rejected(r) => r.into(),
            ReplyError::Malformed(what) => WireError::Reply(what),
        }
    }
}

#[derive(Clone)]
pub struct WireClient {
    /// To the writer task; it ends when every clone is gone.
    outgoing: mpsc::UnboundedSender<Bytes>,
    pending: Waiters<u32, Frame>,
    next_id: Arc<AtomicU32>,
    pushes: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Frame>>>,
    /// Set by [`WireClient::ignore_messages`].
    ignoring: Arc<AtomicBool>,
}

impl WireClient {
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<WireClient> {
        Self::over(TcpStream::connect(addr).await?, None).await
    }

    /// Connects over TLS.
    pub async fn connect_tls(addr: &str, tls: &ClientTls) -> io::Result<WireClient> {
        Self::over(TcpStream::connect(addr).await?, Some(tls)).await
    }

    /// Speaks over an already connected stream, with TLS if `tls` is given.
    pub async fn over(stream: TcpStream, tls: Option<&ClientTls>) -> io::Result<WireClient> {
        let (reader, writer) = transport::open(stream, tls).await?;
        let pending = Waiters::default();
        // Unbounded so a caller that reads pushes late never stalls replies.
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let ignoring = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_replies(
            reader,
            pending.clone(),
            push_tx,
            ignoring.clone(),
        ));
        let (outgoing, queued) = mpsc::unbounded_channel();
        tokio::spawn(write_queued(writer, queued));
        Ok(WireClient {
            outgoing,
            pending,
            next_id: Arc::new(AtomicU32::new(1)),
            pushes: Arc::new(tokio::sync::Mutex::new(pushes)),
            ignoring,
        })
    }

    /// From now on, drops MESSAGE pushes as they arrive, without decoding
    /// them: for a client that only sends, such as a bot speaking in a room
    /// whose speech it never reads. Replies and BYE still come through.
    pub fn ignore_messages(&self) {
        self.ignoring.store(true, Ordering::Relaxed);
    }

    /// Sends raw bytes, for saying exactly what a test needs to.
    pub async fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.queue(Bytes::copy_from_slice(bytes))
    }

    /// Queues bytes for the writer task, behind everything queued before.
    fn queue(&self, bytes: Bytes) -> io::Result<()> {
        self.outgoing
            .send(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the connection is closed"))
    }

    /// Sends a frame as given and waits for the reply with its request id.
    pub async fn exchange(&self, frame: Frame) -> Result<Frame, WireError> {
        self.exchange_encoded(frame.request_id, frame.to_bytes())
            .await
    }

    /// Sends the bytes of a request with this id and waits for its reply.
    async fn exchange_encoded(&self, request_id: u32, bytes: Bytes) -> Result<Frame, WireError> {
        let reply = self.pending.wait(request_id).ok_or(WireError::Closed)?;
        self.queue(bytes)?;
        reply.await.map_err(|_| WireError::Closed)
    }

    /// A request id not yet used on this connection (0 is for pushes).
    fn next_request_id(&self) -> u32 {
        match self.next_id.fetch_add(1, Ordering::Relaxed) {
            0 => self.next_id.fetch_add(1, Ordering::Relaxed),
            id => id,
        }
    }

    /// Sends a request and reads its reply; an error reply is an error.
    pub async fn request(&self, request: &Request<'_>) -> Result<Reply, WireError> {
        let id = self.next_request_id();
        let reply = self.exchange_encoded(id, request.to_bytes(id)).await?;
        Ok(Reply::parse(&reply)?)
    }

    /// Sends a request of any opcode and arguments, as given, and returns
    /// the reply's arguments, or its error: for saying exactly what a test
    /// needs to.
    pub async fn call(&self, opcode: u8, args: Vec<Bytes>) -> Result<Vec<Bytes>, WireError> {
        let id = self.next_request_id();
        let reply = self.exchange(Frame::request(opcode, id, args)).await?;
        match Rejection::of(&reply) {
            Some(rejection) => Err(rejection.into()),
            None => Ok(reply.args),
        }
    }

    /// The next push from the server; `None` once the connection is gone.
    pub async fn next_push(&self) -> Option<Frame> {
        self.pushes.lock().await.recv().await
    }

    /// The next delivered message; a BYE or a closed connection is an error.
    pub async fn next_message(&self) -> Result<Message, WireError> {
        let frame = self.next_push().await.ok_or(WireError::Closed)?;
        match frame.opcode {
            op::PUSH_MESSAGE => parse_message(&frame.args).ok_or(WireError::Reply("message push")),
            _ => Err(Rejection::read(&frame).into()),
        }
    }

    pub async fn register(&self, name: &str, password: &str) -> Result<String, WireError> {
        match self.request(&Request::Register { name, password }).await? {
            Reply::Name(name) => Ok(name),
            _ => Err(WireError::Reply("REGISTER")),
        }
    }

    pub async fn login(&self, name: &str, password: &str) -> Result<String, WireError> {
        match self.request(&Request::Login { name, password }).await? {
            Reply::Name(name) => Ok(name),
            _ => Err(WireError::Reply("LOGIN")),
        }
    }

    pub async fn send_dm(
        &self,
        to: &str,
        body: &str,
        client_msg_id: &str,
    ) -> Result<Sent, WireError> {
        self.send(Dest::User(to), body, client_msg_id).await
    }

    pub async fn send_room(
        &self,
        room: &str,
        body: &str,
        client_msg_id: &str,
    ) -> Result<Sent, WireError> {
        self.send(Dest::Room(room), body, client_msg_id).await
    }

    /// Written straight from the borrowed texts: a client keeping many
    /// sends in flight makes one allocation per send, not five.
    async fn send(&self, to: Dest<'_>, body: &str, client_msg_id: &str) -> Result<Sent, WireError> {
        let send = Request::Send {
            to,
            body,
            client_msg_id,
        };
        match self.request(&send).await? {
            Reply::Sent(sent) => Ok(sent),
            _ => Err(WireError::Reply("SEND")),
        }
    }

    pub async fn ack(&self, ids: &[u64]) -> Result<(), WireError> {
        let ack = Request::Ack {
            ids: Cow::Borrowed(ids),
        };
        self.request(&ack).await.map(drop)
    }

    pub async fn join(&self, room: &str) -> Result<String, WireError> {
        match self.request(&Request::Join { room }).await? {
            Reply::Joined { room, .. } => Ok(room),
            _ => Err(WireError::Reply("JOIN")),
        }
    }

    /// A room's (`room = true`) or a direct conversation's newest messages.
    pub async fn history(
        &self,
        room: bool,
        name: &str,
        limit: u32,
    ) -> Result<Vec<Message>, WireError> {
        self.history_page(room, name, 0, limit, true).await
    }

    /// Up to `limit` messages after the id `after`, oldest first (with
    /// `newest`, the newest of them); a reply holds at most 256 KiB of
    /// text, so a caller pages on from the last id it got.
    pub async fn history_page(
        &self,
        room: bool,
        name: &str,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<Message>, WireError> {
        let of = if room {
            Dest::Room(name)
        } else {
            Dest::User(name)
        };
        let history = Request::History {
            of,
            after,
            limit,
            newest,
        };
        match self.request(&history).await? {
            Reply::Messages(messages) => Ok(messages),
            _ => Err(WireError::Reply("HISTORY")),
        }
    }

    /// Names of the users online, then an empty name per node that did
    /// not answer.
    pub async fn who(&self) -> Result<Vec<String>, WireError> {
        match self.request(&Request::Who).await? {
            Reply::Who { online, missing } => Ok(online
                .into_iter()
                .map(|u| u.name)
                .chain(missing.iter().map(|_| String::new()))
                .collect()),
            _ => Err(WireError::Reply("WHO")),
        }
    }
}

/// Reads frames until the connection ends: replies go to their waiters,
/// pushes to the push queue (message pushes dropped unread once `ignoring`
/// is set).
async fn read_replies(
    mut reader: transport::Reader,
    pending: Waiters<u32, Frame>,
    pushes: mpsc::UnboundedSender<Frame>,
    ignoring: Arc<AtomicBool>,
) {
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        if ignoring.load(Ordering::Relaxed)
            && let Ok(Some(total)) = Frame::check(&buffer, MAX_REPLY)
            && let Some((head, _)) = Header::read(&buffer)
            && head.opcode == op::PUSH_MESSAGE
            && head.request_id == 0
        {
            buffer.advance(total);
            continue;
        }
        match Frame::decode(&mut buffer, MAX_REPLY) {
            Ok(Some(frame)) if frame.request_id == 0 => {
                if pushes.send(frame).is_err() {
                    break;
                }
                continue;
            }
            Ok(Some(frame)) => {
                let id = frame.request_id;
                pending.complete(&id, frame);
                continue;
            }
            Ok(None) => {}
            Err(_) => break,
        }
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Waiters see their senders dropped, and later calls fail at once.
    pending.close();
}

/// Writes what is queued, in order, gathering what waits into one write.
/// Ends when every client clone is gone (after writing what they queued)
/// or the socket fails.
async fn write_queued(mut writer: Writer, mut queued: mpsc::UnboundedReceiver<Bytes>) {
    let mut out = Vec::new();
    while let Some(first) = queued.recv().await {
        out.extend_from_slice(&first);
        // The request that woke this task is often one of many made ready
        // by the same read of replies; letting their callers run first
        // puts theirs in this write too.
        tokio::task::yield_now().await;
        while out.len() < WRITE_BATCH {
            match queued.try_recv() {
                Ok(more) => out.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if writer.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        // A burst's buffer is not kept for an idle connection.
        if out.capacity() > WRITE_BATCH * 2 {
            out = Vec::new();
        }
    }
}
