//! The binary protocol: length-prefixed frames with a version, an opcode, a
//! request id and length-prefixed arguments. See `docs/wire-protocol.md`.
//!
//! Requests are answered in order, each reply carrying its request's opcode
//! and id; deliveries arrive as pushes with request id 0. A frame whose
//! inside is bad gets an error reply and the connection goes on; when the
//! stream itself cannot be trusted (a length over the limit, a header too
//! short, another protocol version) the server sends a BYE push saying why
//! and closes.

use std::ops::ControlFlow;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};

use super::listener::{
    self, Accepted, Deadlines, Pass, ReadHalf, Refusal, Shutdown, Stream, WriteHalf, expires,
    next_delivery, read_more, take_ready, write_out,
};
use super::seat::Seat;
use crate::codec::frame::{
    Frame, FrameArgs, FrameError, FrameView, HEADER_LEN, Header, MAX_REQUEST, VERSION,
};
use crate::codec::wire::request::ack_ids;
use crate::codec::wire::{
    Dest, OnlineUser, Rejection, Reply, Request, RequestError, Status, encode_message_push, op,
};
use crate::core::pace::Pace;
use crate::core::{Core, CoreError, Delivery, Encoding, ErrorKind, Identity, Moderation};

impl From<CoreError> for Rejection {
    fn from(e: CoreError) -> Rejection {
        if e.kind() == ErrorKind::Internal {
            tracing::error!(error = %e, "internal error");
            return Rejection::new(
                Status::Internal,
                "internal error; the server log has details",
            );
        }
        Rejection::new(Status::from_kind(e.kind()), e.to_string())
    }
}

type Outcome = Result<Reply, Rejection>;

/// Which request a reply answers.
#[derive(Debug, Clone, Copy)]
struct Asked {
    opcode: u8,
    request_id: u32,
}

impl Asked {
    fn answer(self, outcome: Outcome) -> Answer {
        Answer {
            asked: self,
            outcome,
        }
    }
}

/// A reply on its way out, or with [`op::PUSH_BYE`] and id 0, a BYE.
struct Answer {
    asked: Asked,
    outcome: Outcome,
}

impl Answer {
    fn bye(status: Status, text: &str) -> Answer {
        let asked = Asked {
            opcode: op::PUSH_BYE,
            request_id: 0,
        };
        asked.answer(Err(Rejection::new(status, text)))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let Asked { opcode, request_id } = self.asked;
        match &self.outcome {
            Ok(reply) => reply.encode(opcode, request_id, out),
            Err(rejection) => rejection.encode(opcode, request_id, out),
        }
    }
}

/// Sends one connection may have waiting for their commit. Four times the
/// line protocol's: a line speaker's next lines are already in the socket
/// when a commit lands, where a binary client's next sends wait for their
/// replies to reach it first, and a window that covers that round trip
/// keeps the group commits as large (see docs/performance.md).
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
enum Incoming {
    Frame(Frame),
    /// An ACK, read in place into its ids. A busy receiver sends an ACK of
    /// a thousand ids or more per thousand deliveries, and a [`Frame`]
    /// would hold each id in a reference-counted slice of its own: five
    /// times the work.
    Ack {
        request_id: u32,
        ids: Result<Vec<u64>, RequestError>,
    },
}

impl Connection {
    async fn read_request(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            // A whole frame is at least a header long, so its version and
            // opcode are there to look at before anything is parsed.
            if let Some(total) =
                Frame::check(&self.buffer, MAX_REQUEST).map_err(ReadError::Frame)?
                && Header::read(&self.buffer)
                    .is_some_and(|(head, _)| (head.version, head.opcode) == (VERSION, op::ACK))
                && let Some(view) = FrameView::parse(&self.buffer[..total])
            {
                let ack = Incoming::Ack {
                    request_id: view.request_id,
                    ids: ack_ids(view.args()),
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
                return Ok(Some(Incoming::Frame(frame)));
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

    fn push(&mut self, answer: &Answer) {
        // The buffer is given back after every write (see `write_out`);
        // it starts at the size of a full pipeline's replies rather than
        // regrowing by doubling, which copies most of a batch again.
        if self.out.capacity() == 0 {
            self.out.reserve(REPLY_BATCH);
        }
        answer.encode(&mut self.out);
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

/// Tells a connection the gate turned away why it is being closed.
pub async fn refuse(stream: Stream, why: Refusal) {
    let mut frame = Vec::new();
    Answer::bye(Status::Limit, why.text()).encode(&mut frame);
    listener::say_and_close(stream, &frame).await;
}

struct Session {
    core: Core,
    conn: Connection,
    seat: Seat,
    /// Replies still being worked out, in request order: sends wait for
    /// their commit here while the connection reads on.
    replies: FuturesOrdered<BoxFuture<'static, Answer>>,
}

/// What serving one event leads to: go on, or end the connection with a
/// last word, if any.
type Flow = ControlFlow<Option<Answer>>;

/// Serves one connection until it closes or the server stops.
pub async fn serve_connection(
    core: Core,
    accepted: Accepted,
    deadlines: Deadlines,
    mut shutdown: Shutdown,
) {
    let (reader, writer) = accepted.stream.split();
    let mut session = Session {
        seat: Seat::new(&core, deadlines.login),
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
        replies: FuturesOrdered::new(),
    };
    if let Err(e) = session.run(&mut shutdown).await {
        tracing::debug!(error = %e, "binary connection ended");
    }
    session.seat.close().await;
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
        if let Some(answer) = last {
            self.conn.push(&answer);
        }
        self.conn.flush().await
    }

    /// Serves requests until the connection should end; returns the frame
    /// to send last, if any.
    async fn serve(&mut self, shutdown: &mut Shutdown) -> std::io::Result<Option<Answer>> {
        loop {
            self.conn.flush().await?;
            let flow = tokio::select! {
                request = self.conn.read_request() => self.on_read(request).await?,
                Some(answer) = self.replies.next(), if !self.replies.is_empty() => {
                    self.conn.push(&answer);
                    // Sends committed together are answered in one write.
                    while let Some(Some(answer)) = self.replies.next().now_or_never() {
                        self.conn.push(&answer);
                    }
                    Flow::Continue(())
                }
                delivery = next_delivery(&mut self.seat.inbox) => self.on_delivery(delivery),
                _ = expires(self.seat.login_by) => {
                    let text = format!(
                        "not logged in within {} s; closing",
                        self.conn.deadlines.login.as_secs()
                    );
                    Flow::Break(Some(Answer::bye(Status::Timeout, &text)))
                }
                _ = shutdown.wait() => {
                    Flow::Break(Some(Answer::bye(Status::Unavailable, "the server is shutting down")))
                }
            };
            if let Flow::Break(last) = flow {
                return Ok(last);
            }
        }
    }

    async fn on_read(
        &mut self,
        read: Result<Option<Incoming>, ReadError>,
    ) -> std::io::Result<Flow> {
        let bye = |status, text: &str| Flow::Break(Some(Answer::bye(status, text)));
        Ok(match read {
            Ok(None) => Flow::Break(None),
            Ok(Some(Incoming::Frame(frame))) => return self.on_frame(&frame).await,
            Ok(Some(Incoming::Ack { request_id, ids })) => {
                // In the pipeline, so replies keep request order; an ACK is
                // answered at once unless the store is behind on
                // acknowledgements.
                self.settle(PIPELINE - 1).await;
                let asked = Asked {
                    opcode: op::ACK,
                    request_id,
                };
                let admitted = self.admit(op::ACK, ids.map_err(Rejection::from));
                self.queue_ack(asked, admitted);
                Flow::Continue(())
            }
            Err(ReadError::Frame(FrameError::Malformed {
                opcode,
                request_id,
                why,
            })) => {
                self.settle(0).await;
                let asked = Asked { opcode, request_id };
                self.answer(asked.answer(Err(Rejection::new(Status::BadFrame, why))));
                Flow::Continue(())
            }
            Err(ReadError::Frame(e @ FrameError::TooLarge { .. })) => {
                bye(Status::TooLarge, &e.to_string())
            }
            Err(ReadError::Frame(e @ FrameError::TooShort(_))) => {
                bye(Status::BadFrame, &e.to_string())
            }
            Err(ReadError::Truncated(n)) => {
                tracing::debug!(bytes = n, "connection closed inside a frame");
                Flow::Break(None)
            }
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                let text = format!(
                    "a frame must be complete within {} s of its start; closing",
                    self.conn.deadlines.read.as_secs()
                );
                bye(Status::Timeout, &text)
            }
            Err(ReadError::Io(e)) => return Err(e),
        })
    }

    /// Serves one decoded frame. Sends and acknowledgements wait for the
    /// store while the connection reads on and keeps pushing; any other
    /// request waits for the replies before it.
    async fn on_frame(&mut self, frame: &Frame) -> std::io::Result<Flow> {
        let asked = Asked {
            opcode: frame.opcode,
            request_id: frame.request_id,
        };
        if frame.version != VERSION {
            let text = format!(
                "protocol version {} is not supported; this server speaks {VERSION}",
                frame.version
            );
            let version = Rejection::new(Status::Version, text);
            return Ok(Flow::Break(Some(asked.answer(Err(version)))));
        }
        if matches!(frame.opcode, op::SEND_DM | op::SEND_ROOM | op::ACK) {
            self.settle(PIPELINE - 1).await;
            if frame.opcode != op::ACK
                && let Some(flood) = self.take_turn().await?
            {
                return Ok(Flow::Break(Some(flood)));
            }
        } else {
            self.settle(0).await;
        }
        let parsed = Request::parse(frame).map_err(Rejection::from);
        match self.admit(frame.opcode, parsed) {
            Ok(request) => self.dispatch(asked, request).await,
            Err(rejection) => self.answer(asked.answer(Err(rejection))),
        }
        Ok(Flow::Continue(()))
    }

    /// Whether the session's state lets a request of this opcode in: every
    /// known opcode but PING, REGISTER and LOGIN needs a login, and LOGIN
    /// needs there to be none. That is checked before the request's
    /// arguments are, except that a LOGIN's argument count comes first.
    fn admit<R>(&self, opcode: u8, parsed: Result<R, Rejection>) -> Result<R, Rejection> {
        let unknown = Status::UnknownOpcode as u8;
        match opcode {
            _ if parsed.as_ref().is_err_and(|e| e.code == unknown) => parsed,
            op::PING | op::REGISTER => parsed,
            op::LOGIN
                if parsed
                    .as_ref()
                    .is_err_and(|e| e.code == Status::Arguments as u8) =>
            {
                parsed
            }
            op::LOGIN => match &self.seat.who {
                Some(who) => Err(Rejection::new(
                    Status::Invalid,
                    format!("already logged in as {}: log out first", who.name),
                )),
                None => parsed,
            },
            _ => self.identity().and(parsed),
        }
    }

    /// Answers a request, or queues it with the sends. Each handler is
    /// boxed: a request's state is held only while it runs, not by every
    /// idle connection's task.
    async fn dispatch(&mut self, asked: Asked, request: Request<'_>) {
        let outcome = match request {
            Request::Send {
                to,
                body,
                client_msg_id,
            } => return self.queue_send(asked, to, body, client_msg_id),
            Request::Ack { ids } => return self.queue_ack(asked, Ok(ids.into_owned())),
            Request::Ping(args) => Ok(Reply::Pong(
                args.into_iter().map(Bytes::copy_from_slice).collect(),
            )),
            Request::Register { name, password } => Box::pin(self.register(name, password)).await,
            Request::Login { name, password } => Box::pin(self.login(name, password)).await,
            Request::Logout => Box::pin(self.logout()).await,
            Request::DeleteAccount { password } => Box::pin(self.delete_account(password)).await,
            Request::ListUsers { pattern } => self.list_users(pattern),
            Request::History {
                of,
                after,
                limit,
                newest,
            } => Box::pin(self.history(of, after, limit, newest)).await,
            Request::Join { room } => Box::pin(self.join(room)).await,
            Request::Leave { room } => Box::pin(self.leave(room)).await,
            Request::Rooms => self.rooms(),
            Request::Who => Box::pin(self.who()).await,
            Request::Stats { mesh } => Box::pin(self.stats(mesh)).await,
            Request::Peers => self.peers(),
            Request::Topology => self.topology(),
            Request::PeerListen { host, port } => Box::pin(self.peer_link(false, host, port)).await,
            Request::PeerConnect { host, port } => Box::pin(self.peer_link(true, host, port)).await,
            Request::PeerKill { node } => self.peer_kill(node),
            Request::Moderate {
                action,
                name,
                reason,
            } => Box::pin(self.moderate(action, name, reason)).await,
        };
        self.answer(asked.answer(outcome));
    }

    /// Writes an answer after every reply still pending.
    fn answer(&mut self, answer: Answer) {
        if self.replies.is_empty() {
            self.conn.push(&answer);
        } else {
            self.replies
                .push_back(futures::future::ready(answer).boxed());
        }
    }

    fn on_delivery(&mut self, delivery: Result<Delivery, crate::core::Closed>) -> Flow {
        let message = match delivery {
            Ok(message) => message,
            Err(why) => {
                let bye = Answer::bye(Status::from_kind(why.kind()), &why.to_string());
                return Flow::Break(Some(bye));
            }
        };
        let conn = &mut self.conn;
        take_ready(&mut self.seat.inbox, message, |message, following| {
            conn.push_delivery(&message, following)
        });
        Flow::Continue(())
    }

    /// Waits for the session's turn to send, with what is already answered
    /// written first; input is not read meanwhile, which is the
    /// backpressure a fast sender feels. Returns the BYE for a session that
    /// floods.
    async fn take_turn(&mut self) -> std::io::Result<Option<Answer>> {
        match self.seat.pace() {
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
                Ok(Some(Answer::bye(Status::Flood, &text)))
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

    fn identity(&self) -> Result<&Identity, Rejection> {
        self.seat
            .who
            .as_ref()
            .ok_or_else(|| Rejection::new(Status::Auth, "log in first (opcode 0x02 LOGIN)"))
    }

    /// Queues a SEND_DM or SEND_ROOM; its reply comes once it commits.
    fn queue_send(&mut self, asked: Asked, to: Dest<'_>, body: &str, client_msg_id: &str) {
        let client_msg_id = Some(client_msg_id).filter(|id| !id.is_empty());
        let sending = self
            .identity()
            .map(|who| self.core.send(who, &to.to_target(), body, client_msg_id));
        let pending = async move {
            let sent = match sending {
                Ok(sending) => sending.await.map(Reply::Sent).map_err(Rejection::from),
                Err(rejection) => Err(rejection),
            };
            asked.answer(sent)
        };
        self.replies.push_back(pending.boxed());
    }

    /// Queues an ACK; its reply comes once the store has taken it.
    fn queue_ack(&mut self, asked: Asked, ids: Result<Vec<u64>, Rejection>) {
        let acking = ids.and_then(|ids| Ok((self.identity()?.clone(), ids)));
        let core = self.core.clone();
        let pending = async move {
            let acked = match acking {
                Ok((who, ids)) => core.ack(&who, &ids).await.map(|()| Reply::Done),
                Err(rejection) => return asked.answer(Err(rejection)),
            };
            asked.answer(acked.map_err(Rejection::from))
        };
        self.replies.push_back(pending.boxed());
    }

    async fn register(&mut self, name: &str, password: &str) -> Outcome {
        let from = Some(self.conn.peer);
        Ok(Reply::Name(self.core.register(name, password, from).await?))
    }

    async fn login(&mut self, name: &str, password: &str) -> Outcome {
        Ok(Reply::Name(
            self.seat.log_in(name, password, self.conn.peer).await?,
        ))
    }

    async fn logout(&mut self) -> Outcome {
        let who = self.identity()?.clone();
        self.seat.vacate();
        self.core.logout(&who).await?;
        Ok(Reply::Done)
    }

    async fn delete_account(&mut self, password: &str) -> Outcome {
        self.core.delete_account(self.identity()?, password).await?;
        self.seat.vacate();
        Ok(Reply::Done)
    }

    fn list_users(&self, pattern: &str) -> Outcome {
        let users = Reply::Users(self.core.list_users(pattern)?);
        fits(users, "users match: use a narrower pattern")
    }

    async fn history(&mut self, of: Dest<'_>, after: u64, limit: u32, newest: bool) -> Outcome {
        let who = self.identity()?;
        let of = of.to_target();
        let page = self.core.history_reply(who, &of, after, limit, newest);
        Ok(Reply::Messages(page.await?))
    }

    async fn join(&mut self, room: &str) -> Outcome {
        let (room, joined) = self.core.join_room(self.identity()?, room).await?;
        Ok(Reply::Joined { room, joined })
    }

    async fn leave(&mut self, room: &str) -> Outcome {
        let left = self.core.leave_room(self.identity()?, room).await?;
        Ok(Reply::Left(left))
    }

    fn rooms(&self) -> Outcome {
        let rooms = Reply::Rooms(self.core.list_rooms(self.identity()?));
        fits(rooms, "rooms exist to list in one reply")
    }

    async fn who(&mut self) -> Outcome {
        let who = self.core.who().await;
        let online = who.answers.into_iter();
        let who = Reply::Who {
            online: online
                .map(|u| OnlineUser {
                    name: u.name,
                    node: u.node,
                })
                .collect(),
            missing: who.missing,
        };
        fits(who, "users are online to list in one reply")
    }

    async fn stats(&mut self, mesh: bool) -> Outcome {
        let (stats, missing) = if mesh {
            self.core.mesh_stats().await?
        } else {
            (self.core.stats().await?, Vec::new())
        };
        Ok(Reply::Stats { stats, missing })
    }

    fn peers(&self) -> Outcome {
        let peers = Reply::Peers(self.core.peers(self.identity()?)?);
        fits(peers, "peers to list in one reply")
    }

    fn topology(&self) -> Outcome {
        let topology = Reply::Topology(self.core.topology(self.identity()?)?);
        fits(topology, "nodes and links to list in one reply")
    }

    /// PEER_CONNECT, or with `connect` false, PEER_LISTEN.
    async fn peer_link(&mut self, connect: bool, host: &str, port: u16) -> Outcome {
        let who = self.identity()?;
        Ok(if connect {
            Reply::Linked(self.core.peer_connect(who, host, port).await?)
        } else {
            Reply::Bound(self.core.peer_listen(who, host, port).await?)
        })
    }

    fn peer_kill(&self, node: &str) -> Outcome {
        self.core.peer_kill(self.identity()?, node)?;
        Ok(Reply::Done)
    }

    /// KICK, SUSPEND or RESTORE.
    async fn moderate(&mut self, action: Moderation, name: &str, reason: &str) -> Outcome {
        let who = self.identity()?;
        let done = self.core.moderate(who, action, name, reason).await?;
        Ok(Reply::Moderated(done))
    }
}

/// A reply, if its arguments fit the frame's 16-bit count.
fn fits(reply: Reply, what: &str) -> Outcome {
    if reply.arg_count() > u16::MAX as usize {
        return Err(Rejection::new(Status::Limit, format!("too many {what}")));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Sent;

    #[test]
    fn the_first_reservation_is_sized_by_the_reply_to_a_send() {
        let sent = Reply::Sent(Sent {
            id: 1,
            sent_at_ms: 2,
            duplicate: false,
        });
        let mut out = Vec::new();
        sent.encode(op::SEND_ROOM, 7, &mut out);
        assert_eq!(out.len(), SEND_REPLY);
    }
}
