//! A benchmark connection that receives, over whichever protocol is asked
//! for, and what it hands out: deliveries with their stamps.

use std::collections::VecDeque;
use std::net::IpAddr;

use futures::StreamExt;

use super::grpc::{self, GrpcReceiver};
use super::in_place::{LineReceiver, WireReceiver};
use super::{BenchError, Proto, Target};
use crate::client::Client;

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

/// A connection that receives.
pub struct Receiver {
    conn: Incoming,
    /// Deliveries read but not yet handed out by [`Receiver::next`].
    ready: VecDeque<Received>,
}

enum Incoming {
    Line(LineReceiver),
    Wire(WireReceiver),
    Grpc(GrpcReceiver),
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
            Proto::Line => Incoming::Line(LineReceiver::connect(target, name, room, source).await?),
            Proto::Wire => Incoming::Wire(WireReceiver::connect(target, name, room, source).await?),
            Proto::Grpc => {
                let client = grpc::login(target, name, room, source, token).await?;
                Incoming::Grpc(GrpcReceiver::subscribe(client).await?)
            }
        };
        Ok(Receiver {
            conn,
            ready: VecDeque::new(),
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
        if !self.ready.is_empty() {
            out.extend(self.ready.drain(..));
            return Ok(());
        }
        match &mut self.conn {
            Incoming::Line(line) => line.next_batch(out).await,
            Incoming::Wire(wire) => wire.next_batch(out).await,
            Incoming::Grpc(grpc) => grpc.next_batch(out).await,
        }
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
            Incoming::Line(_) => {}
            Incoming::Wire(wire) => wire.ack(&ids).await,
            Incoming::Grpc(grpc) => return grpc.ack(ids),
        }
        ids.clear();
        ids
    }

    /// Waits for an acknowledgement in flight, so nothing acked is lost
    /// when the receiver is dropped.
    pub async fn settle(&mut self) {
        if let Incoming::Grpc(grpc) = &mut self.conn {
            grpc.settle().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fanout::stamp;

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
}
