//! The binary protocol: length-prefixed frames with a version, an opcode, a
//! request id and length-prefixed arguments. See `docs/wire-protocol.md`.
//!
//! Requests are answered in order, each reply carrying its request's opcode
//! and id; deliveries arrive as pushes with request id 0. A frame whose
//! inside is bad gets an error reply and the connection goes on; when the
//! stream itself cannot be trusted (a length over the limit, a header too
//! short, another protocol version) the server sends a BYE push saying why
//! and closes.

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::listener::{
    self, Accepted, Deadlines, PUSH_BATCH, Pass, ReadHalf, Refusal, Shutdown, Stream, WriteHalf,
    expires, next_delivery, read_more, write_out,
};
use crate::codec::frame::{
    Frame, FrameError, FrameView, HEADER_LEN, Header, MAX_REQUEST, VERSION, arg,
};
use crate::codec::wire::{Status, encode_message_push, message_args, op};
use crate::core::pace::{Pace, Pacer};
use crate::core::{Core, CoreError, Delivery, Encoding, ErrorKind, Identity, Inbox, Target};

/// Why a request failed: a status and a sentence for a person.
struct Reject {
    status: Status,
    text: String,
}

impl Reject {
    fn new(status: Status, text: impl Into<String>) -> Reject {
        Reject {
            status,
            text: text.into(),
        }
    }
}

impl From<CoreError> for Reject {
    fn from(e: CoreError) -> Reject {
        if e.kind() == ErrorKind::Internal {
            tracing::error!(error = %e, "internal error");
            return Reject::new(
                Status::Internal,
                "internal error; the server log has details",
            );
        }
        Reject::new(Status::from_kind(e.kind()), e.to_string())
    }
}

type Reply = Result<Vec<Bytes>, Reject>;

/// Sends one connection may have waiting for their commit. Four times the
/// line protocol's: a line speaker's next lines are already in the socket
/// when a commit lands, where a binary client's next sends wait for their
/// replies to reach it first, and a window that covers that round trip
/// keeps the group commits as large (about 1.2 times the fan-out
/// throughput of a window of 64; see docs/performance.md).
const PIPELINE: usize = 256;
/// The bytes of the reply to a send: the header and three arguments.
const SEND_REPLY: usize = HEADER_LEN + (4 + 8) + (4 + 8) + (4 + 1);
/// Room made for replies when a write batch starts: a full pipeline of
/// send replies fits.
const REPLY_BATCH: usize = PIPELINE * SEND_REPLY;
/// How long a closing connection waits for the replies it owes.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What reading a frame can end in, besides a frame.
enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
    /// The peer closed in the middle of a frame.
    Truncated(usize),
}

struct Connection {
    reader: ReadHalf,
    /// Unbuffered: `out` already gathers a batch into one write.
    writer: WriteHalf,
    buffer: BytesMut,
    out: Vec<u8>,
    /// The client's address, which password checks are counted by.
    peer: std::net::IpAddr,
    /// The connection's place at the gate, held for its life.
    _pass: Pass,
    /// When the unfinished frame in `buffer` began to arrive.
    started: Option<std::time::Instant>,
    deadlines: Deadlines,
}

/// A request as read off the socket.
enum Request {
    Frame(Frame),
    /// An ACK, read in place into its ids (`None` if an argument is not
    /// 8 bytes). A busy receiver sends an ACK of a thousand ids or more per
    /// thousand deliveries, and a [`Frame`] would hold each id in a
    /// reference-counted slice of its own: five times the work.
    Ack {
        request_id: u32,
        ids: Option<Vec<u64>>,
    },
}

impl Connection {
    async fn read_request(&mut self) -> Result<Option<Request>, ReadError> {
        loop {
            // A whole frame is at least a header long, so its version and
            // opcode are there to look at before anything is parsed.
            if let Some(total) =
                Frame::check(&self.buffer, MAX_REQUEST).map_err(ReadError::Frame)?
                && Header::read(&self.buffer)
                    .is_some_and(|(head, _)| (head.version, head.opcode) == (VERSION, op::ACK))
                && let Some(view) = FrameView::parse(&self.buffer[..total])
            {
                let ack = Request::Ack {
                    request_id: view.request_id,
                    ids: view.args().map(arg::to_u64).collect(),
                };
                self.buffer.advance(total);
                self.started = None;
                return Ok(Some(ack));
            }
            // Anything else, malformed ACKs included, is decoded whole.
            if let Some(frame) =
                Frame::decode(&mut self.buffer, MAX_REQUEST).map_err(ReadError::Frame)?
            {
                self.started = None;
                return Ok(Some(Request::Frame(frame)));
            }
            let read = read_more(
                &mut self.reader,
                &mut self.buffer,
                &mut self.started,
                self.deadlines.read,
            );
            if read.await.map_err(ReadError::Io)? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated(self.buffer.len()))
                };
            }
        }
    }

    fn push(&mut self, frame: &Frame) {
        // The buffer is given back after every write (see `write_out`), and
        // regrowing it by doubling for a batch of replies cost as much as
        // encoding them: it starts at the size of a full pipeline's replies.
        if self.out.capacity() == 0 {
            self.out.reserve(REPLY_BATCH);
        }
        frame.encode(&mut self.out);
    }

    /// Queues a delivery, encoded once for every binary connection it goes to.
    fn push_delivery(&mut self, delivery: &Delivery, following: usize) {
        listener::push_delivery(
            &mut self.out,
            delivery,
            following,
            Encoding::Wire,
            encode_message_push,
        );
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        write_out(&mut self.writer, &mut self.out).await
    }
}

fn reply(request: &Frame, result: Reply) -> Frame {
    let (status, args) = match result {
        Ok(args) => (Status::Ok, args),
        Err(reject) => (reject.status, vec![arg::str(&reject.text)]),
    };
    Frame {
        version: VERSION,
        opcode: request.opcode,
        request_id: request.request_id,
        status: status as u8,
        args,
    }
}

/// A push saying why the server closes the connection.
pub fn bye(status: Status, text: &str) -> Frame {
    Frame {
        version: VERSION,
        opcode: op::PUSH_BYE,
        request_id: 0,
        status: status as u8,
        args: vec![arg::str(text)],
    }
}

/// Tells a connection the gate turned away why it is being closed.
pub async fn refuse(stream: Stream, why: Refusal) {
    let frame = bye(Status::Limit, why.text()).to_bytes();
    listener::say_and_close(stream, &frame).await;
}

struct Session {
    core: Core,
    conn: Connection,
    who: Option<Identity>,
    /// When a connection that is not logged in is closed.
    login_by: Option<Instant>,
    /// The connection's sending allowance, if sends are limited.
    pacer: Option<Pacer>,
    inbox: Option<Inbox>,
    /// Replies still being worked out, in request order: sends wait for
    /// their commit here while the connection reads on.
    replies: FuturesOrdered<BoxFuture<'static, Frame>>,
}

/// Serves one connection until it closes or the server stops.
pub async fn serve_connection(
    core: Core,
    accepted: Accepted,
    deadlines: Deadlines,
    mut shutdown: Shutdown,
) {
    let (reader, writer) = accepted.stream.split();
    let mut session = Session {
        // The connection's, not the login's: logging in again earns no new burst.
        pacer: core.limits().send_rate.map(Pacer::new),
        core,
        conn: Connection {
            peer: accepted.peer.ip(),
            _pass: accepted.pass,
            reader,
            writer,
            buffer: BytesMut::new(),
            out: Vec::new(),
            started: None,
            deadlines,
        },
        who: None,
        login_by: Some(Instant::now() + deadlines.login),
        inbox: None,
        replies: FuturesOrdered::new(),
    };
    if let Err(e) = session.run(&mut shutdown).await {
        tracing::debug!(error = %e, "binary connection ended");
    }
    session.inbox = None;
    if let Some(who) = session.who.take() {
        let _ = session.core.logout(&who).await;
    }
}

impl Session {
    async fn run(&mut self, shutdown: &mut Shutdown) -> std::io::Result<()> {
        let last = self.serve(shutdown).await?;
        // Whatever ended the loop, the replies to sends already queued (they
        // will commit) are owed first, then the last word.
        if tokio::time::timeout(SETTLE_TIMEOUT, self.settle(0))
            .await
            .is_err()
        {
            tracing::warn!("replies still pending when the connection ended");
        }
        if let Some(frame) = last {
            self.conn.push(&frame);
        }
        self.conn.flush().await
    }

    /// Serves requests until the connection should end; returns the frame
    /// to send last, if any.
    async fn serve(&mut self, shutdown: &mut Shutdown) -> std::io::Result<Option<Frame>> {
        loop {
            self.conn.flush().await?;
            tokio::select! {
                request = self.conn.read_request() => match request {
                    Ok(None) => return Ok(None),
                    Ok(Some(Request::Ack { request_id, ids })) => {
                        // In the pipeline, so replies keep request order; an
                        // ACK is answered at once unless the store is behind
                        // on acknowledgements.
                        self.settle(PIPELINE - 1).await;
                        let pending = self.queue_ack(request_id, ids);
                        self.replies.push_back(pending);
                    }
                    Ok(Some(Request::Frame(frame))) => {
                        if frame.version != VERSION {
                            let text = format!(
                                "protocol version {} is not supported; this server speaks {VERSION}",
                                frame.version
                            );
                            return Ok(Some(reply(&frame, Err(Reject::new(Status::Version, text)))));
                        }
                        if matches!(frame.opcode, op::SEND_DM | op::SEND_ROOM | op::ACK) {
                            // Sends and acknowledgements wait for the store
                            // while the connection reads on and keeps pushing.
                            // (A sound ACK is read in place and never comes
                            // this way; this keeps the opcode's meaning whole.)
                            self.settle(PIPELINE - 1).await;
                            if frame.opcode != op::ACK
                                && let Some(flood) = self.take_turn().await?
                            {
                                return Ok(Some(flood));
                            }
                            let pending = if frame.opcode == op::ACK {
                                let ids = frame.args.iter().map(|id| arg::to_u64(id)).collect();
                                self.queue_ack(frame.request_id, ids)
                            } else {
                                self.queue_send(&frame)
                            };
                            self.replies.push_back(pending);
                        } else {
                            // Replies go out in request order.
                            self.settle(0).await;
                            // Boxed: a request's state is held only while it
                            // runs, not by every idle connection's task.
                            let result = Box::pin(self.handle(&frame)).await;
                            self.conn.push(&reply(&frame, result));
                        }
                    }
                    Err(ReadError::Frame(FrameError::Malformed { opcode, request_id, why })) => {
                        self.settle(0).await;
                        let request = Frame::request(opcode, request_id, vec![]);
                        self.conn.push(&reply(&request, Err(Reject::new(Status::BadFrame, why))));
                    }
                    Err(ReadError::Frame(e @ FrameError::TooLarge { .. })) => {
                        return Ok(Some(bye(Status::TooLarge, &e.to_string())));
                    }
                    Err(ReadError::Frame(e @ FrameError::TooShort(_))) => {
                        return Ok(Some(bye(Status::BadFrame, &e.to_string())));
                    }
                    Err(ReadError::Truncated(n)) => {
                        tracing::debug!(bytes = n, "connection closed inside a frame");
                        return Ok(None);
                    }
                    Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                        let text = format!(
                            "a frame must be complete within {} s of its start; closing",
                            self.conn.deadlines.read.as_secs()
                        );
                        return Ok(Some(bye(Status::Timeout, &text)));
                    }
                    Err(ReadError::Io(e)) => return Err(e),
                },
                Some(answer) = self.replies.next(), if !self.replies.is_empty() => {
                    self.conn.push(&answer);
                    // Sends committed together are answered in one write.
                    while let Some(Some(answer)) = self.replies.next().now_or_never() {
                        self.conn.push(&answer);
                    }
                }
                delivery = next_delivery(&mut self.inbox) => match delivery {
                    Ok(message) => {
                        let ready = self.inbox.as_ref().map_or(0, Inbox::ready);
                        self.conn.push_delivery(&message, ready.min(PUSH_BATCH - 1));
                        // Write whatever else is ready in the same flush.
                        for pushed in 1..PUSH_BATCH {
                            let Some(inbox) = &mut self.inbox else { break };
                            match inbox.next().now_or_never() {
                                Some(Ok(message)) => {
                                    let following = inbox.ready().min(PUSH_BATCH - 1 - pushed);
                                    self.conn.push_delivery(&message, following);
                                }
                                // A closed stream is reported on the next turn.
                                _ => break,
                            }
                        }
                    }
                    Err(why) => return Ok(Some(bye(Status::from_kind(why.kind()), &why.to_string()))),
                },
                _ = expires(self.login_by) => {
                    let text = format!(
                        "not logged in within {} s; closing",
                        self.conn.deadlines.login.as_secs()
                    );
                    return Ok(Some(bye(Status::Timeout, &text)));
                }
                _ = shutdown.wait() => {
                    return Ok(Some(bye(Status::Unavailable, "the server is shutting down")));
                }
            }
        }
    }

    /// Waits for the session's turn to send, with what is already answered
    /// written first; input is not read meanwhile, which is the
    /// backpressure a fast sender feels. Returns the BYE for a session that
    /// floods.
    async fn take_turn(&mut self) -> std::io::Result<Option<Frame>> {
        let Some(pacer) = &mut self.pacer else {
            return Ok(None);
        };
        match pacer.admit(std::time::Instant::now()) {
            Pace::Go => Ok(None),
            Pace::Wait(wait) => {
                self.conn.flush().await?;
                tokio::time::sleep(wait).await;
                Ok(None)
            }
            Pace::Flood { retry_after } => {
                let text = format!(
                    "sending far faster than allowed; closing. Reconnect in {} s",
                    retry_after.as_secs().max(1)
                );
                Ok(Some(bye(Status::Flood, &text)))
            }
        }
    }

    /// Writes finished replies in order until at most `keep` are pending.
    async fn settle(&mut self, keep: usize) {
        while self.replies.len() > keep {
            if let Some(answer) = self.replies.next().await {
                self.conn.push(&answer);
            }
        }
    }

    /// Queues a SEND_DM or SEND_ROOM; the returned future is its reply.
    fn queue_send(&self, frame: &Frame) -> BoxFuture<'static, Frame> {
        let request = Frame::request(frame.opcode, frame.request_id, vec![]);
        let queued = (|| {
            let who = self.logged_in()?;
            let [to, body, client_id] = exact(&frame.args)?;
            let to = text(to)?.to_owned();
            let to = if frame.opcode == op::SEND_DM {
                Target::User(to)
            } else {
                Target::Room(to)
            };
            let client_id = Some(text(client_id)?).filter(|id| !id.is_empty());
            Ok::<_, Reject>(self.core.send(&who, &to, text(body)?, client_id))
        })();
        async move {
            let result = match queued {
                Ok(sent) => sent.await.map_err(Reject::from).map(|sent| {
                    vec![
                        arg::u64(sent.id),
                        arg::i64(sent.sent_at_ms),
                        arg::bool(sent.duplicate),
                    ]
                }),
                Err(reject) => Err(reject),
            };
            reply(&request, result)
        }
        .boxed()
    }

    fn logged_in(&self) -> Result<Identity, Reject> {
        self.who
            .clone()
            .ok_or_else(|| Reject::new(Status::Auth, "log in first (opcode 0x02 LOGIN)"))
    }

    /// Queues an ACK; the returned future is its reply.
    fn queue_ack(&self, request_id: u32, ids: Option<Vec<u64>>) -> BoxFuture<'static, Frame> {
        let request = Frame::request(op::ACK, request_id, vec![]);
        let checked = self.logged_in().and_then(|who| {
            let ids = ids.ok_or_else(|| {
                Reject::new(Status::Arguments, "every ACK argument is an 8-byte id")
            })?;
            Ok((who, ids))
        });
        let core = self.core.clone();
        async move {
            let result = match checked {
                Ok((who, ids)) => core
                    .ack(&who, &ids)
                    .await
                    .map(|()| vec![])
                    .map_err(Reject::from),
                Err(reject) => Err(reject),
            };
            reply(&request, result)
        }
        .boxed()
    }

    async fn handle(&mut self, frame: &Frame) -> Reply {
        let a = &frame.args;
        match frame.opcode {
            op::PING => return Ok(a.clone()),
            op::REGISTER => {
                let [name, password] = exact(a)?;
                let from = Some(self.conn.peer);
                let name = self
                    .core
                    .register(text(name)?, text(password)?, from)
                    .await?;
                return Ok(vec![arg::str(&name)]);
            }
            op::LOGIN => {
                let [name, password] = exact(a)?;
                if let Some(who) = &self.who {
                    return Err(Reject::new(
                        Status::Invalid,
                        format!("already logged in as {}: log out first", who.name),
                    ));
                }
                let from = Some(self.conn.peer);
                let login = self.core.login(text(name)?, text(password)?, from).await?;
                match self.core.attach(&login.identity).await {
                    Ok(inbox) => self.inbox = Some(inbox),
                    Err(e) => {
                        let _ = self.core.logout(&login.identity).await;
                        return Err(e.into());
                    }
                }
                let name = arg::str(&login.identity.name);
                self.who = Some(login.identity);
                self.login_by = None;
                return Ok(vec![name]);
            }
            opcode if !is_known(opcode) => {
                return Err(Reject::new(
                    Status::UnknownOpcode,
                    format!("unknown opcode 0x{opcode:02x}"),
                ));
            }
            _ => {}
        }
        let who = self.logged_in()?;
        let core = self.core.clone();
        match frame.opcode {
            op::LOGOUT => {
                let [] = exact(a)?;
                self.inbox = None;
                self.who = None;
                self.login_by = Some(Instant::now() + self.conn.deadlines.login);
                core.logout(&who).await?;
                Ok(vec![])
            }
            op::DELETE_ACCOUNT => {
                let [password] = exact(a)?;
                core.delete_account(&who, text(password)?).await?;
                self.inbox = None;
                self.who = None;
                self.login_by = Some(Instant::now() + self.conn.deadlines.login);
                Ok(vec![])
            }
            op::LIST_USERS => {
                let [pattern] = exact(a)?;
                let mut out = vec![];
                for u in core.list_users(text(pattern)?)? {
                    out.extend([arg::str(&u.name), arg::bool(u.online), arg::str(&u.node)]);
                }
                fits(out, "users match: use a narrower pattern")
            }
            op::HISTORY => {
                let [kind, name, after, limit, newest] = exact(a)?;
                let name = text(name)?.to_owned();
                let of = match kind.as_ref() {
                    [0] => Target::Room(name),
                    [1] => Target::User(name),
                    _ => {
                        return Err(Reject::new(
                            Status::Arguments,
                            "kind is 0 (room) or 1 (user)",
                        ));
                    }
                };
                let after = arg::to_u64(after).ok_or_else(|| size("after", 8))?;
                let limit = arg::to_u32(limit).ok_or_else(|| size("limit", 4))?;
                let newest = arg::to_bool(newest).ok_or_else(|| size("newest", 1))?;
                let mut out = vec![];
                for m in core.history_reply(&who, &of, after, limit, newest).await? {
                    message_args(&m, &mut out);
                }
                Ok(out)
            }
            op::JOIN => {
                let [room] = exact(a)?;
                let (room, joined) = core.join_room(&who, text(room)?).await?;
                Ok(vec![arg::str(&room), arg::bool(joined)])
            }
            op::LEAVE => {
                let [room] = exact(a)?;
                Ok(vec![arg::bool(core.leave_room(&who, text(room)?).await?)])
            }
            op::ROOMS => {
                let [] = exact(a)?;
                let mut out = vec![];
                for r in core.list_rooms(&who) {
                    out.extend([arg::str(&r.name), arg::u32(r.members), arg::bool(r.joined)]);
                }
                fits(out, "rooms exist to list in one reply")
            }
            op::WHO => {
                let [] = exact(a)?;
                let who = core.who().await;
                let mut out = vec![];
                for u in &who.answers {
                    out.extend([arg::str(&u.name), arg::str(&u.node)]);
                }
                // An empty name marks a node that did not answer.
                for node in &who.missing {
                    out.extend([arg::str(""), arg::str(node)]);
                }
                fits(out, "users are online to list in one reply")
            }
            op::STATS => {
                let mesh = match &a[..] {
                    [] => false,
                    [mesh] => arg::to_bool(mesh).ok_or_else(|| size("mesh", 1))?,
                    _ => {
                        return Err(Reject::new(
                            Status::Arguments,
                            "STATS takes no argument or one: mesh",
                        ));
                    }
                };
                let (s, missing) = if mesh {
                    core.mesh_stats().await?
                } else {
                    (core.stats().await?, Vec::new())
                };
                let mut out = vec![
                    arg::u64(s.messages),
                    arg::u64(s.accounts),
                    arg::u64(s.sessions_online),
                    arg::u64(s.rooms),
                    arg::u64(s.uptime_secs),
                    arg::str(&s.node),
                ];
                out.extend(missing.iter().map(|n| arg::str(n)));
                Ok(out)
            }
            op::PEERS => {
                let [] = exact(a)?;
                let mut out = vec![];
                for p in core.peers(&who)? {
                    out.extend([
                        arg::str(&p.node),
                        arg::str(&p.address),
                        arg::bool(p.outbound),
                    ]);
                }
                fits(out, "peers to list in one reply")
            }
            op::TOPOLOGY => {
                let [] = exact(a)?;
                let topology = core.topology(&who)?;
                let mut out = vec![arg::u32(topology.nodes.len() as u32)];
                out.extend(topology.nodes.iter().map(|n| arg::str(n)));
                for (from, to) in &topology.links {
                    out.extend([arg::str(from), arg::str(to)]);
                }
                fits(out, "nodes and links to list in one reply")
            }
            op::PEER_LISTEN | op::PEER_CONNECT => {
                let [host, port] = exact(a)?;
                let port = arg::to_u16(port).ok_or_else(|| size("port", 2))?;
                let host = text(host)?;
                if frame.opcode == op::PEER_LISTEN {
                    Ok(vec![arg::str(&core.peer_listen(&who, host, port).await?)])
                } else {
                    Ok(vec![arg::str(&core.peer_connect(&who, host, port).await?)])
                }
            }
            op::PEER_KILL => {
                let [node] = exact(a)?;
                core.peer_kill(&who, text(node)?)?;
                Ok(vec![])
            }
            opcode => Err(Reject::new(
                Status::UnknownOpcode,
                format!("unknown opcode 0x{opcode:02x}"),
            )),
        }
    }
}

/// A reply's arguments, if their count fits the frame's 16-bit field.
fn fits(args: Vec<Bytes>, what: &str) -> Reply {
    if args.len() > u16::MAX as usize {
        return Err(Reject::new(Status::Limit, format!("too many {what}")));
    }
    Ok(args)
}

fn is_known(opcode: u8) -> bool {
    matches!(opcode, op::REGISTER..=op::PING | op::PEERS..=op::PEER_KILL)
}

/// Exactly N arguments, or an error saying how many were expected.
fn exact<const N: usize>(args: &[Bytes]) -> Result<&[Bytes; N], Reject> {
    args.try_into().map_err(|_| {
        Reject::new(
            Status::Arguments,
            format!("expected {N} arguments, got {}", args.len()),
        )
    })
}

fn text(b: &Bytes) -> Result<&str, Reject> {
    std::str::from_utf8(b)
        .map_err(|_| Reject::new(Status::Utf8, "a text argument is not valid UTF-8"))
}

fn size(what: &str, bytes: usize) -> Reject {
    Reject::new(Status::Arguments, format!("{what} is {bytes} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reservation_is_sized_by_the_reply_to_a_send() {
        let request = Frame::request(op::SEND_ROOM, 7, vec![]);
        let sent = vec![arg::u64(1), arg::i64(2), arg::bool(false)];
        assert_eq!(reply(&request, Ok(sent)).to_bytes().len(), SEND_REPLY);
    }
}
