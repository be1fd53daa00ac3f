//! A benchmark connection that receives, over whichever protocol is asked
//! for.

use std::collections::VecDeque;
use std::net::IpAddr;

use futures::StreamExt;

use super::delivery::{Ended, Received};
use super::grpc::{self, GrpcReceiver};
use super::in_place::{LineReceiver, WireReceiver};
use super::{BenchError, Proto, Target};
use crate::client::Client;

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
