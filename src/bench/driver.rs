//! One benchmark connection per role, over whichever protocol is asked for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tonic::Streaming;

use super::{BenchError, PASSWORD, Proto, Target};
use crate::client::Client;
use crate::client::line::LineClient;
use crate::client::transport::{self, Reader, Writer};
use crate::client::wire::WireClient;
use crate::codec::frame::{Frame, FrameView, MAX_REPLY, arg};
use crate::codec::wire::op;
use crate::proto;

/// Connects a TCP socket from a chosen loopback source address, so one
/// machine can hold more connections than one source address has ports.
async fn connect_from(
    addr: &str,
    source: Option<IpAddr>,
) -> Result<tokio::net::TcpStream, BenchError> {
    let addr: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(BenchError::setup)?
        .next()
        .ok_or_else(|| BenchError::Setup(format!("no address for {addr}")))?;
    let socket = TcpSocket::new_v4().map_err(BenchError::setup)?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(BenchError::setup)?;
    }
    let stream = socket.connect(addr).await.map_err(BenchError::setup)?;
    stream.set_nodelay(true).map_err(BenchError::setup)?;
    Ok(stream)
}

async fn line_login(
    target: &Target,
    name: &str,
    room: Option<&str>,
    source: Option<IpAddr>,
) -> Result<LineClient, BenchError> {
    let tls = target.tls_for(&target.talk)?;
    let mut c = LineClient::over_tls(connect_from(&target.talk, source).await?, tls.as_ref())
        .await
        .map_err(BenchError::setup)?;
    let mut commands = vec![format!("/login {name} {PASSWORD}")];
    commands.extend(room.map(|r| format!("/join {r}")));
    for command in commands {
        let reply = c.request(&command).await.map_err(BenchError::setup)?;
        if !reply.is_ok() {
            return Err(BenchError::Setup(format!("{command}: {:?}", reply.end)));
        }
    }
    Ok(c)
}

async fn wire_login(
    target: &Target,
    name: &str,
    room: Option<&str>,
) -> Result<WireClient, BenchError> {
    let tls = target.tls_for(&target.wire)?;
    let stream = connect_from(&target.wire, None).await?;
    let c = WireClient::over(stream, tls.as_ref())
        .await
        .map_err(BenchError::setup)?;
    c.login(name, PASSWORD).await.map_err(BenchError::setup)?;
    if let Some(room) = room {
        c.join(room).await.map_err(BenchError::setup)?;
    }
    Ok(c)
}

/// A connection that receives.
///
/// Line and binary deliveries are read in place, a whole socket read at a
/// time, with no allocation per delivery: the load generator shares the
/// machine with the server it measures, so it has to cost far less per
/// delivery than the server does.
pub struct Receiver {
    conn: Incoming,
    /// Deliveries read but not yet handed out by [`Receiver::next`].
    ready: std::collections::VecDeque<Received>,
}

enum Incoming {
    Line(Raw),
    Wire {
        raw: Raw,
        next_request: u32,
    },
    Grpc {
        client: Client,
        stream: Box<Streaming<proto::Event>>,
        /// The one acknowledgement in flight; later ids wait for it.
        acking: Option<tokio::task::JoinHandle<()>>,
    },
}

/// A socket and the bytes read from it but not yet used.
struct Raw {
    reader: Reader,
    writer: Writer,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

/// The first read buffer of a receiver; it grows for a larger frame.
const READ_BUFFER: usize = 64 * 1024;

impl Raw {
    fn new(reader: Reader, writer: Writer, already: &[u8]) -> Raw {
        let mut buffer = vec![0; READ_BUFFER.max(already.len())];
        buffer[..already.len()].copy_from_slice(already);
        Raw {
            reader,
            writer,
            buffer,
            start: 0,
            end: already.len(),
        }
    }

    fn unread(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    /// Reads more after what is unread, making room first; `false` at the
    /// end of the stream.
    async fn fill(&mut self) -> bool {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buffer.len() {
            self.buffer.resize(self.buffer.len() * 2, 0);
        }
        matches!(self.reader.read(&mut self.buffer[self.end..]).await, Ok(n) if n > 0 && {
            self.end += n;
            true
        })
    }
}

/// A delivery's send time, publisher and sequence number, from its body.
pub type Stamp = (u64, usize, usize);

/// One delivery: its id where the protocol carries one, and its stamp if
/// its body has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub id: Option<u64>,
    pub stamp: Option<Stamp>,
}

/// How a stream of deliveries ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The connection closed without a word.
    Closed,
    /// The server said why.
    Said(String),
}

/// Runs one binary-protocol request during set-up and checks its reply.
async fn wire_request(
    (reader, writer): (&mut Reader, &mut Writer),
    buffer: &mut BytesMut,
    request: Frame,
) -> Result<(), BenchError> {
    let mut out = Vec::new();
    request.encode(&mut out);
    writer.write_all(&out).await.map_err(BenchError::setup)?;
    loop {
        match Frame::decode(buffer, MAX_REPLY).map_err(BenchError::setup)? {
            // A fresh bench account has nothing waiting, so no push comes
            // before the replies to logging in and joining.
            Some(reply) if reply.request_id == request.request_id => {
                return if reply.status == 0 {
                    Ok(())
                } else {
                    let why = reply
                        .args
                        .first()
                        .map(|a| String::from_utf8_lossy(a).into_owned());
                    Err(BenchError::Setup(format!(
                        "opcode {:#04x}: status {} {}",
                        request.opcode,
                        reply.status,
                        why.unwrap_or_default()
                    )))
                };
            }
            Some(_) => continue,
            None => {
                if reader.read_buf(buffer).await.map_err(BenchError::setup)? == 0 {
                    return Err(BenchError::Setup("the server closed the connection".into()));
                }
            }
        }
    }
}

impl Receiver {
    /// Logs in as NAME (the account exists), joins ROOM if given, and starts
    /// receiving. For gRPC, `token` reuses one login for many connections.
    pub async fn connect(
        target: &Target,
        proto: Proto,
        name: &str,
        room: Option<&str>,
        source: Option<IpAddr>,
        token: Option<&Client>,
    ) -> Result<Receiver, BenchError> {
        let conn = match proto {
            Proto::Line => {
                let c = line_login(target, name, room, source).await?;
                let (reader, writer, buffer) = c.into_parts();
                Incoming::Line(Raw::new(reader, writer, &buffer))
            }
            Proto::Wire => {
                let stream = connect_from(&target.wire, source).await?;
                let tls = target.tls_for(&target.wire)?;
                let (mut reader, mut writer) = transport::open(stream, tls.as_ref())
                    .await
                    .map_err(BenchError::setup)?;
                let mut buffer = BytesMut::new();
                let login = vec![arg::str(name), arg::str(PASSWORD)];
                wire_request(
                    (&mut reader, &mut writer),
                    &mut buffer,
                    Frame::request(op::LOGIN, 1, login),
                )
                .await?;
                if let Some(room) = room {
                    let join = Frame::request(op::JOIN, 2, vec![arg::str(room)]);
                    wire_request((&mut reader, &mut writer), &mut buffer, join).await?;
                }
                Incoming::Wire {
                    raw: Raw::new(reader, writer, &buffer),
                    next_request: 3,
                }
            }
            Proto::Grpc => {
                let client = match token {
                    Some(logged_in) => {
                        let endpoint = target.grpc_endpoint()?.local_address(source);
                        let channel = endpoint.connect().await.map_err(BenchError::setup)?;
                        logged_in.on_channel(channel)
                    }
                    None => {
                        let c = target.admin().await?;
                        c.login(name, PASSWORD).await.map_err(BenchError::setup)?.0
                    }
                };
                if let Some(room) = room {
                    client.join(room).await.map_err(BenchError::setup)?;
                }
                let stream = Box::new(client.subscribe().await.map_err(BenchError::setup)?);
                Incoming::Grpc {
                    client,
                    stream,
                    acking: None,
                }
            }
        };
        Ok(Receiver {
            conn,
            ready: Default::default(),
        })
    }

    /// Connects one receiver per name, a few at a time.
    pub async fn connect_all(
        target: &Target,
        proto: Proto,
        names: &[String],
        room: Option<&str>,
    ) -> Result<Vec<Receiver>, BenchError> {
        futures::stream::iter(names)
            .map(|name| Receiver::connect(target, proto, name, room, None, None))
            .buffered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// The next delivery.
    pub async fn next(&mut self) -> Result<Received, Ended> {
        while self.ready.is_empty() {
            let mut batch = Vec::new();
            self.next_batch(&mut batch).await?;
            self.ready.extend(batch);
        }
        self.ready.pop_front().ok_or(Ended::Closed)
    }

    /// Appends to `out` at least one delivery: everything that one read
    /// from the socket brought.
    pub async fn next_batch(&mut self, out: &mut Vec<Received>) -> Result<(), Ended> {
        let before = out.len();
        out.extend(self.ready.drain(..));
        while out.len() == before {
            match &mut self.conn {
                Incoming::Line(raw) => {
                    let used = parse_lines(raw.unread(), out)?;
                    raw.start += used;
                    if out.len() == before && !raw.fill().await {
                        return Err(Ended::Closed);
                    }
                }
                Incoming::Wire { raw, .. } => {
                    let used = parse_frames(raw.unread(), out)?;
                    raw.start += used;
                    if out.len() == before && !raw.fill().await {
                        return Err(Ended::Closed);
                    }
                }
                Incoming::Grpc { stream, .. } => {
                    out.push(grpc_received(stream.message().await)?);
                    // Whatever else has already arrived comes in the same batch.
                    while out.len() - before < 1024 {
                        match stream.message().now_or_never() {
                            Some(event) => out.push(grpc_received(event)?),
                            None => break,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Acknowledges `ids` as a real client would, without holding up
    /// receiving: on the binary protocol one ACK frame written on this
    /// connection, on gRPC an `Ack` call from its own task (one at a time;
    /// `ids` is handed back while one is in flight, to go with the next).
    /// The line protocol acknowledges what the server writes by itself.
    /// What comes back is the list to gather the next ids in: emptied, and
    /// where the ids were not sent off, with its room kept.
    pub async fn ack(&mut self, mut ids: Vec<u64>) -> Vec<u64> {
        match &mut self.conn {
            Incoming::Line(_) => {
                ids.clear();
                ids
            }
            Incoming::Wire { raw, next_request } => {
                let mut out = Vec::new();
                Frame::encode_ids(op::ACK, *next_request, &ids, &mut out);
                *next_request = next_request.wrapping_add(1).max(1);
                let _ = raw.writer.write_all(&out).await;
                ids.clear();
                ids
            }
            Incoming::Grpc { client, acking, .. } => {
                if acking.as_ref().is_some_and(|a| !a.is_finished()) {
                    return ids;
                }
                let client = client.clone();
                *acking = Some(tokio::spawn(async move {
                    let _ = client.ack(ids).await;
                }));
                Vec::new()
            }
        }
    }

    /// Waits for an acknowledgement in flight, so nothing acked is lost
    /// when the receiver is dropped.
    pub async fn settle(&mut self) {
        if let Incoming::Grpc { acking, .. } = &mut self.conn
            && let Some(acking) = acking.take()
        {
            let _ = acking.await;
        }
    }
}

/// The stamp at the start of a body: send time (16 hex digits, ns),
/// publisher, sequence, each followed by a space. Read straight from the
/// bytes: it runs once per delivery.
pub fn unstamp(body: &[u8]) -> Option<Stamp> {
    let (sent, rest) = (body.get(..16)?, body.get(16..)?);
    let sent = sent.iter().try_fold(0u64, |n, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(digit))
    })?;
    let rest = rest.strip_prefix(b" ")?;
    let (publisher, rest) = decimal(rest)?;
    let (seq, _) = decimal(rest)?;
    Some((sent, publisher, seq))
}

/// A decimal number ended by a space, and what follows the space.
fn decimal(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let end = bytes.iter().position(|b| *b == b' ')?;
    if end == 0 || end > 19 {
        return None;
    }
    let n = bytes[..end].iter().try_fold(0usize, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + usize::from(b - b'0'))
    })?;
    Some((n, &bytes[end + 1..]))
}

/// Reads every whole line in `bytes` into `out`; returns the bytes used.
/// Room and direct lines are deliveries, `-ERR` ends the stream, the rest
/// (notices, replies) is skipped.
fn parse_lines(bytes: &[u8], out: &mut Vec<Received>) -> Result<usize, Ended> {
    let mut used = 0;
    for newline in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[used..newline];
        used = newline + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            Some(b'#' | b'@') => {
                // Names hold no ':', so the body follows the first ": ".
                let body = memchr::memchr(b':', line)
                    .and_then(|at| line.get(at + 1..)?.strip_prefix(b" "));
                out.push(Received {
                    id: None,
                    stamp: body.and_then(unstamp),
                });
            }
            Some(b'-') => return Err(Ended::Said(String::from_utf8_lossy(line).into_owned())),
            _ => {}
        }
    }
    Ok(used)
}

/// Reads every whole frame in `bytes` into `out`; returns the bytes used.
/// Message pushes are deliveries, a BYE ends the stream, replies (to
/// acknowledgements) are skipped.
fn parse_frames(bytes: &[u8], out: &mut Vec<Received>) -> Result<usize, Ended> {
    let mut used = 0;
    loop {
        let rest = &bytes[used..];
        let total = match Frame::check(rest, MAX_REPLY) {
            Ok(Some(total)) => total,
            Ok(None) => return Ok(used),
            Err(e) => return Err(Ended::Said(e.to_string())),
        };
        used += total;
        let frame = FrameView::parse(&rest[..total])
            .ok_or_else(|| Ended::Said("malformed frame from the server".into()))?;
        match frame.opcode {
            op::PUSH_MESSAGE => {
                let mut args = frame.args();
                let id = args.next().and_then(arg::to_u64);
                out.push(Received {
                    id,
                    stamp: args.nth(3).and_then(unstamp),
                });
            }
            op::PUSH_BYE => {
                let why = frame.args().last().unwrap_or_default();
                return Err(Ended::Said(String::from_utf8_lossy(why).into_owned()));
            }
            _ => {}
        }
    }
}

fn grpc_received(event: Result<Option<proto::Event>, tonic::Status>) -> Result<Received, Ended> {
    match event {
        Ok(Some(proto::Event {
            kind: Some(proto::event::Kind::Message(m)),
        })) => Ok(Received {
            id: Some(m.id),
            stamp: unstamp(m.body.as_bytes()),
        }),
        Ok(Some(_)) => Ok(Received {
            id: None,
            stamp: None,
        }),
        Ok(None) => Err(Ended::Closed),
        Err(status) => Err(Ended::Said(status.message().to_owned())),
    }
}

/// A connection that sends.
pub enum Sender {
    /// Speech on the line protocol: written without waiting for replies; what
    /// the server sends back is read and discarded by a drain task.
    LineSpeaker {
        writer: BufWriter<Writer>,
        drain: tokio::task::JoinHandle<()>,
    },
    /// Direct messages on the line protocol: `/tell` and its `+OK`.
    LineTeller(LineClient),
    Wire {
        client: WireClient,
        drain: tokio::task::JoinHandle<()>,
    },
    /// gRPC sends over one `SendAndReceiveMessage` stream per connection,
    /// each answered by a `SendResult` with its request id: what a client
    /// sending at a high rate uses rather than a unary call per message.
    Grpc(GrpcStream),
}

/// Sends waiting for their `SendResult`, by request id.
type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>>;

/// A `SendAndReceiveMessage` call used for sending, shared by its lanes.
#[derive(Clone)]
pub struct GrpcStream {
    frames: tokio::sync::mpsc::Sender<proto::ClientFrame>,
    waiting: Waiting,
    next_request: Arc<AtomicU64>,
}

impl GrpcStream {
    async fn open(client: &Client) -> Result<GrpcStream, BenchError> {
        let (frames, outgoing) = tokio::sync::mpsc::channel(256);
        let outgoing = tokio_stream::wrappers::ReceiverStream::new(outgoing);
        let mut incoming = client
            .chat()
            .send_and_receive_message(client.request(outgoing))
            .await
            .map_err(BenchError::setup)?
            .into_inner();
        let waiting = Waiting::default();
        let table = waiting.clone();
        // Answers go to their waiting sends; deliveries (the publisher is a
        // member of the room it speaks in) are read and dropped.
        tokio::spawn(async move {
            while let Ok(Some(frame)) = incoming.message().await {
                let Some(proto::server_frame::Kind::SendResult(result)) = frame.kind else {
                    continue;
                };
                let outcome = match result.result {
                    Some(proto::send_result::Result::Sent(_)) => Ok(()),
                    Some(proto::send_result::Result::Error(e)) => Err(e.message),
                    None => Err("an empty send result".into()),
                };
                let waiter = table
                    .lock()
                    .ok()
                    .and_then(|mut t| t.remove(&result.request_id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(outcome);
                }
            }
            // The call is over: whoever still waits hears so.
            if let Ok(mut table) = table.lock() {
                table.clear();
            }
        });
        Ok(GrpcStream {
            frames,
            waiting,
            next_request: Arc::new(AtomicU64::new(1)),
        })
    }

    async fn send(&self, to: proto::send_request::To, body: &str) -> Result<(), String> {
        let request_id = self.next_request.fetch_add(1, AtomicOrdering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .map_err(|e| e.to_string())?
            .insert(request_id, tx);
        let frame = proto::ClientFrame {
            kind: Some(proto::client_frame::Kind::Send(proto::OutgoingMessage {
                request_id,
                message: Some(proto::SendRequest {
                    to: Some(to),
                    body: body.into(),
                    client_msg_id: String::new(),
                }),
            })),
        };
        self.frames
            .send(frame)
            .await
            .map_err(|_| "the send stream ended".to_string())?;
        rx.await
            .map_err(|_| "the send stream ended before answering".to_string())?
    }
}

impl Sender {
    pub async fn connect(
        target: &Target,
        proto: Proto,
        name: &str,
        room: Option<&str>,
    ) -> Result<Sender, BenchError> {
        Ok(match proto {
            Proto::Line => {
                let c = line_login(target, name, room, None).await?;
                if room.is_none() {
                    return Ok(Sender::LineTeller(c));
                }
                let (mut reader, writer, _) = c.into_parts();
                let drain = tokio::spawn(async move {
                    let mut sink = vec![0u8; 64 * 1024];
                    while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                Sender::LineSpeaker {
                    writer: BufWriter::with_capacity(64 * 1024, writer),
                    drain,
                }
            }
            Proto::Wire => {
                let client = wire_login(target, name, room).await?;
                // A speaker does not read the room, as a line speaker only
                // drains its socket: it pays for no deliveries it drops.
                client.ignore_messages();
                let pushes = client.clone();
                let drain =
                    tokio::spawn(async move { while pushes.next_push().await.is_some() {} });
                Sender::Wire { client, drain }
            }
            Proto::Grpc => {
                let c = target.admin().await?;
                let c = c.login(name, PASSWORD).await.map_err(BenchError::setup)?.0;
                if let Some(room) = room {
                    c.join(room).await.map_err(BenchError::setup)?;
                }
                Sender::Grpc(GrpcStream::open(&c).await?)
            }
        })
    }

    /// Says BODY in the current room. On the line protocol it is only
    /// written (call [`flush`](Self::flush)); elsewhere it waits for the ack.
    pub async fn say(&mut self, room: &str, body: &str) -> Result<(), String> {
        match self {
            Sender::LineSpeaker { writer, .. } => {
                writer
                    .write_all(body.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                writer.write_all(b"\r\n").await.map_err(|e| e.to_string())
            }
            Sender::LineTeller(_) => Err("not a speaker".into()),
            Sender::Wire { client, .. } => client
                .send_room(room, body, "")
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Sender::Grpc(c) => {
                c.send(proto::send_request::To::Room(room.into()), body)
                    .await
            }
        }
    }

    pub async fn flush(&mut self) -> Result<(), String> {
        match self {
            Sender::LineSpeaker { writer, .. } => writer.flush().await.map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    /// Sends a durable direct message and waits for its acknowledgement.
    pub async fn tell(&mut self, to: &str, body: &str) -> Result<(), String> {
        match self {
            Sender::LineTeller(c) => {
                let reply = c
                    .request(&format!("/tell {to} {body}"))
                    .await
                    .map_err(|e| e.to_string())?;
                if reply.is_ok() {
                    Ok(())
                } else {
                    Err(format!("{:?}", reply.end))
                }
            }
            Sender::LineSpeaker { .. } => Err("not a teller".into()),
            Sender::Wire { client, .. } => client
                .send_dm(to, body, "")
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Sender::Grpc(c) => c.send(proto::send_request::To::User(to.into()), body).await,
        }
    }

    /// Ends a line-protocol speaker politely: `/quit` goes after every line
    /// already written, so waiting for the server to close means it has
    /// handled them all. (Closing with replies unread would reset the
    /// connection and drop lines the server had not read yet.)
    pub async fn finish(mut self) -> Result<(), String> {
        if let Sender::LineSpeaker { writer, drain } = &mut self {
            writer
                .write_all(b"/quit\r\n")
                .await
                .map_err(|e| e.to_string())?;
            writer.flush().await.map_err(|e| e.to_string())?;
            tokio::time::timeout(std::time::Duration::from_secs(60), drain)
                .await
                .map_err(|_| "the server did not finish reading".to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A handle that can send concurrently with this one (binary and gRPC).
    pub fn concurrent(&self) -> Option<Sender> {
        match self {
            Sender::Wire { client, .. } => Some(Sender::Wire {
                client: client.clone(),
                drain: tokio::spawn(async {}),
            }),
            Sender::Grpc(c) => Some(Sender::Grpc(c.clone())),
            _ => None,
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        match self {
            Sender::LineSpeaker { drain, .. } | Sender::Wire { drain, .. } => drain.abort(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fanout::stamp;
    use crate::codec::line::ServerLine;

    #[test]
    fn a_stamp_reads_back() {
        let body = stamp(3, 4711, 64);
        let (sent, publisher, seq) = unstamp(body.as_bytes()).unwrap();
        assert!(sent > 0);
        assert_eq!((publisher, seq), (3, 4711));
        assert_eq!(unstamp(b"not a stamp"), None);
        assert_eq!(unstamp(b"fffffffffffffffff 1 2 "), None, "17 hex digits");
        assert_eq!(unstamp(b"000000000000000a 1 2 "), Some((10, 1, 2)));
        assert_eq!(
            unstamp(b"000000000000000a 1 2"),
            None,
            "no space after the sequence"
        );
    }

    #[test]
    fn lines_are_read_whole_and_in_place() {
        let mut bytes = Vec::new();
        for line in [
            ServerLine::Room {
                room: "r".into(),
                from: "a".into(),
                text: stamp(0, 1, 0),
            },
            ServerLine::Notice("a: notice".into()),
            ServerLine::Direct {
                from: "b".into(),
                text: stamp(1, 2, 0),
            },
        ] {
            line.encode(&mut bytes);
        }
        bytes.extend_from_slice(b"#r a: 00");
        let mut out = Vec::new();
        let used = parse_lines(&bytes, &mut out).unwrap();
        assert_eq!(used, bytes.len() - b"#r a: 00".len());
        let stamps: Vec<_> = out.iter().map(|r| r.stamp.map(|s| (s.1, s.2))).collect();
        assert_eq!(stamps, [Some((0, 1)), Some((1, 2))]);
        let err = parse_lines(b"-ERR overflow you fell behind\r\n", &mut out);
        assert_eq!(
            err,
            Err(Ended::Said("-ERR overflow you fell behind".into()))
        );
    }

    #[test]
    fn frames_are_read_whole_and_in_place() {
        let message = crate::core::Message {
            id: 42,
            from: "a".into(),
            to: crate::core::Target::Room("r".into()),
            body: stamp(2, 9, 0),
            sent_at_ms: 1,
            client_msg_id: None,
        };
        let mut bytes = Vec::new();
        crate::codec::wire::message_push(&message).encode(&mut bytes);
        let whole = bytes.len();
        bytes.extend_from_slice(&[0, 0, 0, 40, 1]);
        let mut out = Vec::new();
        assert_eq!(parse_frames(&bytes, &mut out), Ok(whole));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, Some(42));
        assert_eq!(out[0].stamp.map(|s| (s.1, s.2)), Some((2, 9)));
    }
}
