//! Benchmark connections that send: a [`Speaker`] says things in a room, a
//! [`Teller`] sends durable direct messages.

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use super::connect::{line_login, wire_login};
use super::grpc::{self, GrpcStream};
use super::{BenchError, Proto, Target};
use crate::client::line::LineClient;
use crate::client::transport::Writer;
use crate::client::wire::WireClient;
use crate::proto;

/// One of many sends in flight on one connection, each waiting for its
/// reply: binary and gRPC. Clones share the connection.
#[derive(Clone)]
pub enum Lane {
    Wire(WireClient),
    Grpc(GrpcStream),
}

impl Lane {
    async fn wire(target: &Target, name: &str, room: Option<&str>) -> Result<Lane, BenchError> {
        let client = wire_login(target, name, room).await?;
        // A sender does not read the room, as a line speaker only drains
        // its socket: it pays for no deliveries it drops.
        client.ignore_messages();
        Ok(Lane::Wire(client))
    }

    async fn grpc(target: &Target, name: &str, room: Option<&str>) -> Result<Lane, BenchError> {
        let client = grpc::login(target, name, room, None, None).await?;
        Ok(Lane::Grpc(GrpcStream::open(&client).await?))
    }

    /// Says BODY in ROOM and waits for the reply.
    pub async fn say(&self, room: &str, body: &str) -> Result<(), String> {
        match self {
            Lane::Wire(client) => client.send_room(room, body, "").await.map(drop),
            Lane::Grpc(stream) => {
                let to = proto::send_request::To::Room(room.into());
                return stream.send(to, body).await;
            }
        }
        .map_err(|e| e.to_string())
    }

    /// Sends a direct message and waits for its acknowledgement.
    pub async fn tell(&self, to: &str, body: &str) -> Result<(), String> {
        match self {
            Lane::Wire(client) => client.send_dm(to, body, "").await.map(drop),
            Lane::Grpc(stream) => {
                let to = proto::send_request::To::User(to.into());
                return stream.send(to, body).await;
            }
        }
        .map_err(|e| e.to_string())
    }
}

/// A connection that speaks in a room.
pub enum Speaker {
    /// The line protocol: one writer, no replies waited for.
    Line(LineSpeaker),
    Lanes(Lane),
}

impl Speaker {
    pub async fn connect(
        target: &Target,
        proto: Proto,
        name: &str,
        room: &str,
    ) -> Result<Speaker, BenchError> {
        Ok(match proto {
            Proto::Line => Speaker::Line(LineSpeaker::connect(target, name, room).await?),
            Proto::Wire => Speaker::Lanes(Lane::wire(target, name, Some(room)).await?),
            Proto::Grpc => Speaker::Lanes(Lane::grpc(target, name, Some(room)).await?),
        })
    }
}

/// Speech on the line protocol: written without waiting for replies; what
/// the server sends back is read and discarded by a drain task.
pub struct LineSpeaker {
    writer: BufWriter<Writer>,
    drain: tokio::task::JoinHandle<()>,
}

impl LineSpeaker {
    async fn connect(target: &Target, name: &str, room: &str) -> Result<LineSpeaker, BenchError> {
        let c = line_login(target, name, Some(room), None).await?;
        let (mut reader, writer, _) = c.into_parts();
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        Ok(LineSpeaker {
            writer: BufWriter::with_capacity(64 * 1024, writer),
            drain,
        })
    }

    /// Writes BODY as a line of speech in the room joined; it goes out
    /// when the buffer fills or at [`flush`](Self::flush).
    pub async fn say(&mut self, body: &str) -> Result<(), String> {
        let writer = &mut self.writer;
        writer
            .write_all(body.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        writer.write_all(b"\r\n").await.map_err(|e| e.to_string())
    }

    pub async fn flush(&mut self) -> Result<(), String> {
        self.writer.flush().await.map_err(|e| e.to_string())
    }

    /// Ends politely: `/quit` goes after every line already written, so
    /// waiting for the server to close means it has handled them all.
    /// (Closing with replies unread would reset the connection and drop
    /// lines the server had not read yet.)
    pub async fn finish(mut self) -> Result<(), String> {
        self.writer
            .write_all(b"/quit\r\n")
            .await
            .map_err(|e| e.to_string())?;
        self.flush().await?;
        tokio::time::timeout(std::time::Duration::from_secs(60), &mut self.drain)
            .await
            .map_err(|_| "the server did not finish reading".to_string())?
            .map_err(|e| e.to_string())
    }
}

impl Drop for LineSpeaker {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// A connection that sends direct messages.
pub enum Teller {
    /// The line protocol: `/tell` and its `+OK`, one at a time.
    Line(LineClient),
    Lanes(Lane),
}

impl Teller {
    pub async fn connect(target: &Target, proto: Proto, name: &str) -> Result<Teller, BenchError> {
        Ok(match proto {
            Proto::Line => Teller::Line(line_login(target, name, None, None).await?),
            Proto::Wire => Teller::Lanes(Lane::wire(target, name, None).await?),
            Proto::Grpc => Teller::Lanes(Lane::grpc(target, name, None).await?),
        })
    }

    /// Up to `n` handles that send concurrently on this connection: one on
    /// the line protocol, whose requests wait for each other.
    pub fn lanes(self, n: usize) -> Vec<Teller> {
        match self {
            Teller::Lanes(lane) => (0..n.max(1)).map(|_| Teller::Lanes(lane.clone())).collect(),
            line => vec![line],
        }
    }

    /// Sends a durable direct message and waits for its acknowledgement.
    pub async fn tell(&mut self, to: &str, body: &str) -> Result<(), String> {
        match self {
            Teller::Line(c) => {
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
            Teller::Lanes(lane) => lane.tell(to, body).await,
        }
    }
}
