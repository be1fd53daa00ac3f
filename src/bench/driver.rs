//! One benchmark connection per role, over whichever protocol is asked for.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tonic::Streaming;

use super::{BenchError, PASSWORD, Proto, Target};
use crate::client::line::LineClient;
use crate::client::wire::WireClient;
use crate::client::{Client, To};
use crate::codec::line::{LineDecoder, ServerLine};
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
    let mut c = LineClient::over(connect_from(&target.talk, source).await?)
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
    let c = WireClient::connect(&target.wire)
        .await
        .map_err(BenchError::setup)?;
    c.login(name, PASSWORD).await.map_err(BenchError::setup)?;
    if let Some(room) = room {
        c.join(room).await.map_err(BenchError::setup)?;
    }
    Ok(c)
}

/// A connection that receives.
pub enum Receiver {
    Line {
        reader: OwnedReadHalf,
        buffer: BytesMut,
        decoder: LineDecoder,
        _writer: OwnedWriteHalf,
    },
    Wire(WireClient),
    Grpc {
        client: Client,
        stream: Box<Streaming<proto::Event>>,
    },
}

/// One delivery: its id where the protocol carries one, and its body.
pub struct Received {
    pub id: Option<u64>,
    pub body: String,
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
        Ok(match proto {
            Proto::Line => {
                let c = line_login(target, name, room, source).await?;
                let (reader, writer, buffer) = c.into_parts();
                Receiver::Line {
                    reader,
                    buffer,
                    decoder: LineDecoder::new(),
                    _writer: writer,
                }
            }
            Proto::Wire => Receiver::Wire(wire_login(target, name, room).await?),
            Proto::Grpc => {
                let client = match token {
                    Some(logged_in) => {
                        let endpoint = tonic::transport::Endpoint::from_shared(target.grpc.clone())
                            .map_err(BenchError::setup)?
                            .local_address(source);
                        let channel = endpoint.connect().await.map_err(BenchError::setup)?;
                        logged_in.on_channel(channel)
                    }
                    None => {
                        let c = Client::connect(&target.grpc)
                            .await
                            .map_err(BenchError::setup)?;
                        c.login(name, PASSWORD).await.map_err(BenchError::setup)?.0
                    }
                };
                if let Some(room) = room {
                    client.join(room).await.map_err(BenchError::setup)?;
                }
                let stream = Box::new(client.subscribe().await.map_err(BenchError::setup)?);
                Receiver::Grpc { client, stream }
            }
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

    /// The next delivery; `None` when the server closed the stream, `Err`
    /// with the server's reason when it said why.
    pub async fn next(&mut self) -> Option<Result<Received, String>> {
        match self {
            Receiver::Line {
                reader,
                buffer,
                decoder,
                ..
            } => loop {
                if let Some(line) = decoder.decode(buffer) {
                    let line = line.ok()?;
                    return match ServerLine::parse(&line)? {
                        ServerLine::Room { text, .. } | ServerLine::Direct { text, .. } => {
                            Some(Ok(Received {
                                id: None,
                                body: text,
                            }))
                        }
                        ServerLine::Err { code, text } => Some(Err(format!("{code} {text}"))),
                        _ => continue,
                    };
                }
                match reader.read_buf(buffer).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            },
            Receiver::Wire(c) => match c.next_message().await {
                Ok(m) => Some(Ok(Received {
                    id: Some(m.id),
                    body: m.body,
                })),
                Err(crate::client::wire::WireError::Closed) => None,
                Err(e) => Some(Err(e.to_string())),
            },
            Receiver::Grpc { stream, .. } => match stream.message().await {
                Ok(Some(proto::Event {
                    kind: Some(proto::event::Kind::Message(m)),
                })) => Some(Ok(Received {
                    id: Some(m.id),
                    body: m.body,
                })),
                Ok(Some(_)) => Some(Ok(Received {
                    id: None,
                    body: String::new(),
                })),
                Ok(None) => None,
                Err(status) => Some(Err(status.message().to_owned())),
            },
        }
    }

    /// A handle that acknowledges for this receiver from another task, so
    /// acknowledging never holds up receiving. `None` on the line protocol,
    /// where the server acknowledges what it writes.
    pub fn acker(&self) -> Option<Acker> {
        match self {
            Receiver::Line { .. } => None,
            Receiver::Wire(c) => Some(Acker::Wire(c.clone())),
            Receiver::Grpc { client, .. } => Some(Acker::Grpc(client.clone())),
        }
    }
}

/// Acknowledges messages for a receiver.
#[derive(Clone)]
pub enum Acker {
    Wire(WireClient),
    Grpc(Client),
}

impl Acker {
    pub async fn ack(&self, ids: Vec<u64>) {
        let _ = match self {
            Acker::Wire(c) => c.ack(&ids).await.map_err(|e| e.to_string()),
            Acker::Grpc(c) => c.ack(ids).await.map_err(|e| e.to_string()),
        };
    }
}

/// A connection that sends.
pub enum Sender {
    /// Speech on the line protocol: written without waiting for replies; what
    /// the server sends back is read and discarded by a drain task.
    LineSpeaker {
        writer: BufWriter<OwnedWriteHalf>,
        drain: tokio::task::JoinHandle<()>,
    },
    /// Direct messages on the line protocol: `/tell` and its `+OK`.
    LineTeller(LineClient),
    Wire {
        client: WireClient,
        drain: tokio::task::JoinHandle<()>,
    },
    Grpc(Client),
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
                let pushes = client.clone();
                let drain =
                    tokio::spawn(async move { while pushes.next_push().await.is_some() {} });
                Sender::Wire { client, drain }
            }
            Proto::Grpc => {
                let c = Client::connect(&target.grpc)
                    .await
                    .map_err(BenchError::setup)?;
                let c = c.login(name, PASSWORD).await.map_err(BenchError::setup)?.0;
                if let Some(room) = room {
                    c.join(room).await.map_err(BenchError::setup)?;
                }
                Sender::Grpc(c)
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
            Sender::Grpc(c) => c
                .send(&To::Room(room.into()), body, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
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
            Sender::Grpc(c) => c
                .send(&To::User(to.into()), body, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
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
