//! Benchmark connections over gRPC: a receiver on a `Subscribe` stream, and
//! senders sharing one `SendAndReceiveMessage` stream.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use tonic::Streaming;

use super::delivery::{Ended, Received, unstamp};
use super::{BenchError, PASSWORD, Target};
use crate::client::Client;
use crate::client::waiters::Waiters;
use crate::proto;

/// Logs in as NAME, or with `token`, reuses that login on a new channel
/// from `source`; joins ROOM if given.
pub async fn login(
    target: &Target,
    name: &str,
    room: Option<&str>,
    source: Option<IpAddr>,
    token: Option<&Client>,
) -> Result<Client, BenchError> {
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
    Ok(client)
}

/// A receiver on a `Subscribe` stream.
pub struct GrpcReceiver {
    client: Client,
    stream: Box<Streaming<proto::Event>>,
    /// The one acknowledgement in flight; later ids wait for it.
    acking: Option<tokio::task::JoinHandle<()>>,
}

impl GrpcReceiver {
    pub async fn subscribe(client: Client) -> Result<GrpcReceiver, BenchError> {
        let stream = Box::new(client.subscribe().await.map_err(BenchError::setup)?);
        Ok(GrpcReceiver {
            client,
            stream,
            acking: None,
        })
    }

    /// Appends at least one delivery, and whatever else has already arrived.
    pub async fn next_batch(&mut self, out: &mut Vec<Received>) -> Result<(), Ended> {
        let before = out.len();
        out.push(received(self.stream.message().await)?);
        while out.len() - before < 1024 {
            match self.stream.message().now_or_never() {
                Some(event) => out.push(received(event)?),
                None => break,
            }
        }
        Ok(())
    }

    /// Acknowledges `ids` from a task of its own, one call at a time:
    /// while one is in flight, `ids` is handed back to go with the next.
    pub fn ack(&mut self, ids: Vec<u64>) -> Vec<u64> {
        if self.acking.as_ref().is_some_and(|a| !a.is_finished()) {
            return ids;
        }
        let client = self.client.clone();
        self.acking = Some(tokio::spawn(async move {
            let _ = client.ack(ids).await;
        }));
        Vec::new()
    }

    /// Waits for the acknowledgement in flight.
    pub async fn settle(&mut self) {
        if let Some(acking) = self.acking.take() {
            let _ = acking.await;
        }
    }
}

fn received(event: Result<Option<proto::Event>, tonic::Status>) -> Result<Received, Ended> {
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

/// A `SendAndReceiveMessage` call used for sending, shared by its lanes:
/// what a client sending at a high rate uses rather than a unary call per
/// message. Each send is answered by a `SendResult` with its request id.
#[derive(Clone)]
pub struct GrpcStream {
    frames: tokio::sync::mpsc::Sender<proto::ClientFrame>,
    waiting: Waiters<u64, Result<(), String>>,
    next_request: Arc<AtomicU64>,
}

impl GrpcStream {
    pub async fn open(client: &Client) -> Result<GrpcStream, BenchError> {
        let (frames, outgoing) = tokio::sync::mpsc::channel(256);
        let outgoing = tokio_stream::wrappers::ReceiverStream::new(outgoing);
        let mut incoming = client
            .chat()
            .send_and_receive_message(client.request(outgoing))
            .await
            .map_err(BenchError::setup)?
            .into_inner();
        let waiting = Waiters::default();
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
                table.complete(&result.request_id, outcome);
            }
            // The call is over: whoever still waits hears so.
            table.close();
        });
        Ok(GrpcStream {
            frames,
            waiting,
            next_request: Arc::new(AtomicU64::new(1)),
        })
    }

    pub async fn send(&self, to: proto::send_request::To, body: &str) -> Result<(), String> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let ended = || "the send stream ended before answering".to_string();
        let answer = self.waiting.wait(request_id).ok_or_else(ended)?;
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
        answer.await.map_err(|_| ended())?
    }
}
