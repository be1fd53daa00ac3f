//! Receivers that read deliveries in place, a whole socket read at a time,
//! with no allocation per delivery: the line protocol's and the binary
//! protocol's. The load generator shares the machine with the server it
//! measures, so it has to cost far less per delivery than the server does.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::{connect_from, line_login, wire_request};
use super::delivery::{Ended, Received, unstamp};
use super::{BenchError, PASSWORD, Target};
use crate::client::transport::{self, Reader, Writer};
use crate::codec::frame::{Frame, FrameView, MAX_REPLY, arg};
use crate::codec::wire::{Request, op};

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

    /// Appends at least one delivery that `parse` finds in what is read.
    async fn next_batch(
        &mut self,
        out: &mut Vec<Received>,
        parse: fn(&[u8], &mut Vec<Received>) -> Result<usize, Ended>,
    ) -> Result<(), Ended> {
        let before = out.len();
        while out.len() == before {
            let used = parse(self.unread(), out)?;
            self.start += used;
            if out.len() == before && !self.fill().await {
                return Err(Ended::Closed);
            }
        }
        Ok(())
    }
}

/// A line-protocol receiver. The server acknowledges what it writes to a
/// line connection by itself.
pub struct LineReceiver(Raw);

impl LineReceiver {
    pub async fn connect(
        target: &Target,
        name: &str,
        room: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<LineReceiver, BenchError> {
        let c = line_login(target, name, room, source).await?;
        let (reader, writer, buffer) = c.into_parts();
        Ok(LineReceiver(Raw::new(reader, writer, &buffer)))
    }

    pub async fn next_batch(&mut self, out: &mut Vec<Received>) -> Result<(), Ended> {
        self.0.next_batch(out, parse_lines).await
    }
}

/// A binary-protocol receiver, on a bare socket rather than a
/// [`WireClient`](crate::client::wire::WireClient): it never decodes a
/// push into a [`Frame`].
pub struct WireReceiver {
    raw: Raw,
    next_request: u32,
}

impl WireReceiver {
    pub async fn connect(
        target: &Target,
        name: &str,
        room: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<WireReceiver, BenchError> {
        let stream = connect_from(&target.wire, source).await?;
        let tls = target.tls_for(&target.wire)?;
        let (mut reader, mut writer) = transport::open(stream, tls.as_ref())
            .await
            .map_err(BenchError::setup)?;
        let mut buffer = BytesMut::new();
        let socket = (&mut reader, &mut writer);
        let login = Request::Login {
            name,
            password: PASSWORD,
        };
        wire_request(socket, &mut buffer, 1, &login).await?;
        if let Some(room) = room {
            let socket = (&mut reader, &mut writer);
            wire_request(socket, &mut buffer, 2, &Request::Join { room }).await?;
        }
        Ok(WireReceiver {
            raw: Raw::new(reader, writer, &buffer),
            next_request: 3,
        })
    }

    pub async fn next_batch(&mut self, out: &mut Vec<Received>) -> Result<(), Ended> {
        self.raw.next_batch(out, parse_frames).await
    }

    /// Writes one ACK frame of `ids`, not waiting for its reply (it is
    /// skipped when read).
    pub async fn ack(&mut self, ids: &[u64]) {
        let mut out = Vec::new();
        let ack = Request::Ack {
            ids: Cow::Borrowed(ids),
        };
        ack.encode(self.next_request, &mut out);
        self.next_request = self.next_request.wrapping_add(1).max(1);
        let _ = self.raw.writer.write_all(&out).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fanout::stamp;
    use crate::codec::line::ServerLine;

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
