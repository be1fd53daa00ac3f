//! The gRPC gateway: the `meshtalk.v1` services over tonic.
//!
//! Streaming responses follow tonic's streaming pattern: a task per stream
//! feeds a small bounded channel and watches `closed()`, so a client that
//! leaves is noticed even while its stream is idle, and the task exits.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::pace::{Pace, Pacer};
use crate::core::{
    Closed, Core, CoreError, ErrorKind, Identity, Inbox, Message, Moderation, Target,
};
use crate::model::SessionId;
use crate::proto::{self, accounts_server::Accounts, admin_server::Admin, chat_server::Chat};

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Outgoing items buffered per stream before the stream task waits.
const STREAM_BUFFER: usize = 32;
/// Sends one bidirectional stream may have in flight at once.
const PIPELINE: usize = 64;

/// Sending sessions whose allowance is remembered before idle ones are
/// forgotten.
const PACERS_KEPT: usize = 1024;
/// History replies and user listings one session may have in progress at
/// once; more wait their turn holding nothing. With history read a page at
/// a time, a session whose client reads none of them holds a few pages and
/// listings in all, however many calls it opens.
const REPLY_STREAMS_PER_SESSION: usize = 4;

/// The three meshtalk services, sharing one core.
#[derive(Clone)]
pub struct GrpcGateway {
    core: Core,
    /// Each session's sending allowance. A gRPC session has no connection
    /// of its own to hold it: its calls may come over several.
    pacers: Arc<Mutex<HashMap<SessionId, Pacer>>>,
    /// Each session's turns at producing history replies and listings.
    readers: Arc<Mutex<HashMap<SessionId, Arc<Semaphore>>>>,
}

impl GrpcGateway {
    /// The client's frames, each send waiting its turn before the next
    /// frame is read.
    fn paced(
        &self,
        who: Identity,
        inbound: Streaming<proto::ClientFrame>,
    ) -> RpcStream<proto::ClientFrame> {
        let gateway = self.clone();
        Box::pin(inbound.then(move |frame| {
            let (gateway, who) = (gateway.clone(), who.clone());
            let paced: BoxFuture<'static, Result<proto::ClientFrame, Status>> =
                Box::pin(async move {
                    let frame = frame?;
                    if matches!(frame.kind, Some(proto::client_frame::Kind::Send(_))) {
                        gateway.take_turn(&who).await?;
                    }
                    Ok(frame)
                });
            paced
        }))
    }

    pub fn new(core: Core) -> Self {
        GrpcGateway {
            core,
            pacers: Arc::default(),
            readers: Arc::default(),
        }
    }

    /// Waits for one of the session's turns at producing a history reply;
    /// the turn is the session's again when the permit is dropped.
    async fn reader_turn(&self, who: &Identity) -> Result<OwnedSemaphorePermit, Status> {
        let turns = {
            let mut readers = self
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if readers.len() >= PACERS_KEPT {
                // Sessions with no reply in progress have nothing to keep.
                readers.retain(|_, turns| Arc::strong_count(turns) > 1);
            }
            readers
                .entry(who.session)
                .or_insert_with(|| Arc::new(Semaphore::new(REPLY_STREAMS_PER_SESSION)))
                .clone()
        };
        turns
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))
    }

    /// Waits for the session's turn to send: a call over the allowance
    /// takes longer, which is the backpressure a fast sender feels. One far
    /// over it fails with RESOURCE_EXHAUSTED and the time to wait.
    async fn take_turn(&self, who: &Identity) -> Result<(), Status> {
        let Some(rate) = self.core.limits().send_rate else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        let pace = {
            let mut pacers = self
                .pacers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if pacers.len() >= PACERS_KEPT {
                pacers.retain(|_, pacer| !pacer.is_idle(now));
            }
            pacers
                .entry(who.session)
                .or_insert_with(|| Pacer::new(rate))
                .admit(now)
        };
        match pace {
            Pace::Go => Ok(()),
            Pace::Wait(wait) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Pace::Flood { retry_after } => Err(flood(retry_after)),
        }
    }

    /// Finds the session of the `authorization: Bearer TOKEN` header.
    async fn identify<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "missing authorization header: send `authorization: Bearer TOKEN` with the token from Login",
            )
        })?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer TOKEN`")
            })?;
        self.core.authenticate(token.trim()).await.map_err(status)
    }

    async fn operator<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let who = self.identify(request).await?;
        self.core.require_operator(&who).map_err(status)?;
        Ok(who)
    }
}

/// RESOURCE_EXHAUSTED for a session sending far over its allowance, with
/// the seconds to wait in the message and in `retry-after` metadata.
fn flood(retry_after: std::time::Duration) -> Status {
    let secs = retry_after.as_secs().max(1);
    let mut status = Status::resource_exhausted(format!(
        "flood: sending far faster than allowed; try again in {secs} s"
    ));
    status
        .metadata_mut()
        .insert("retry-after", tonic::metadata::MetadataValue::from(secs));
    status
}

/// The gRPC form of a core error.
pub fn status(error: CoreError) -> Status {
    status_of(error.kind(), error.to_string())
}

/// The gRPC form of each kind of error: the protocol's one code table.
fn status_of(kind: ErrorKind, message: String) -> Status {
    match kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::AlreadyExists => Status::already_exists(message),
        ErrorKind::Unauthenticated => Status::unauthenticated(message),
        ErrorKind::PermissionDenied => Status::permission_denied(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::ResourceExhausted | ErrorKind::DiskFull | ErrorKind::Overflow => {
            Status::resource_exhausted(message)
        }
        ErrorKind::Unavailable => Status::unavailable(message),
        ErrorKind::Internal => {
            tracing::error!(error = %message, "internal error");
            Status::internal("internal error; the server log has details")
        }
    }
}

/// Answers a bidirectional call's frames: sends run concurrently up to
/// [`PIPELINE`], their results going out in the order the sends came in.
/// The call ends when the client stops sending, when its stream breaks (with
/// that status), or when the delivery half ends (logout, overflow,
/// shutdown).
async fn answer_frames(
    core: Core,
    who: Identity,
    frames: RpcStream<proto::ClientFrame>,
    mut deliveries: JoinHandle<()>,
    tx: mpsc::Sender<Result<proto::ServerFrame, Status>>,
) {
    let mut replies = frames
        .map(|frame| {
            let (core, who) = (core.clone(), who.clone());
            async move {
                match frame {
                    Ok(frame) => client_frame(&core, &who, frame).await.map(Ok),
                    Err(e) => Some(Err(e)),
                }
            }
        })
        .buffered(PIPELINE);
    loop {
        tokio::select! {
            _ = &mut deliveries => break,
            reply = replies.next() => match reply {
                None => break,
                Some(None) => {}
                Some(Some(reply)) => {
                    let failed = reply.is_err();
                    if tx.send(reply).await.is_err() || failed {
                        break;
                    }
                }
            },
        }
    }
    deliveries.abort();
}

fn closed_status(why: Closed) -> Status {
    status_of(why.kind(), why.to_string())
}

fn to_proto(m: &Message) -> proto::Message {
    proto::Message {
        id: m.id,
        sender: m.from.clone(),
        to: Some(match &m.to {
            Target::User(user) => proto::message::To::User(user.clone()),
            Target::Room(room) => proto::message::To::Room(room.clone()),
        }),
        body: m.body.clone(),
        sent_at_ms: m.sent_at_ms,
        client_msg_id: m.client_msg_id.clone().unwrap_or_default(),
    }
}

fn event(m: &Message) -> proto::Event {
    proto::Event {
        kind: Some(proto::event::Kind::Message(to_proto(m))),
    }
}

fn target(to: Option<proto::send_request::To>) -> Result<Target, Status> {
    match to {
        Some(proto::send_request::To::User(user)) => Ok(Target::User(user)),
        Some(proto::send_request::To::Room(room)) => Ok(Target::Room(room)),
        None => Err(Status::invalid_argument(
            "say who the message is for: set `user` or `room`",
        )),
    }
}

fn sent(s: crate::core::Sent) -> proto::SendResponse {
    proto::SendResponse {
        id: s.id,
        sent_at_ms: s.sent_at_ms,
        duplicate: s.duplicate,
    }
}

async fn do_send(
    core: &Core,
    who: &Identity,
    req: proto::SendRequest,
) -> Result<proto::SendResponse, Status> {
    let to = target(req.to)?;
    let client_msg_id = Some(req.client_msg_id.as_str()).filter(|id| !id.is_empty());
    core.send(who, &to, &req.body, client_msg_id)
        .await
        .map(sent)
        .map_err(status)
}

/// Feeds a session's deliveries into a response stream until the client
/// leaves or the core ends the stream (then with a status saying why).
fn forward<T: Send + 'static>(
    mut inbox: Inbox,
    tx: mpsc::Sender<Result<T, Status>>,
    wrap: fn(proto::Event) -> T,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                next = inbox.next() => match next {
                    Ok(message) => {
                        if tx.send(Ok(wrap(event(&message)))).await.is_err() {
                            break;
                        }
                    }
                    Err(why) => {
                        let _ = tx.send(Err(closed_status(why))).await;
                        break;
                    }
                },
            }
        }
    })
}

/// A session's deliveries as a response stream, read straight from the
/// core: no task and no channel in between, so tonic encodes whatever is
/// waiting in one go. It ends with a status saying why the core let go;
/// when the client leaves, tonic drops it, and the session's sink with it.
fn deliveries(inbox: Inbox) -> RpcStream<proto::Event> {
    Box::pin(futures::stream::unfold(Some(inbox), |inbox| async move {
        let mut inbox = inbox?;
        Some(match inbox.next().await {
            Ok(message) => (Ok(event(&message)), Some(inbox)),
            Err(why) => (Err(closed_status(why)), None),
        })
    }))
}

#[tonic::async_trait]
impl Accounts for GrpcGateway {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let from = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let name = self
            .core
            .register(&req.name, &req.password, from)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::RegisterResponse { name }))
    }

    async fn login(
        &self,
        request: Request<proto::LoginRequest>,
    ) -> Result<Response<proto::LoginResponse>, Status> {
        let from = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let login = self
            .core
            .login(&req.name, &req.password, from)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::LoginResponse {
            token: login.token,
            name: login.identity.name,
        }))
    }

    async fn logout(
        &self,
        request: Request<proto::LogoutRequest>,
    ) -> Result<Response<proto::LogoutResponse>, Status> {
        let who = self.identify(&request).await?;
        self.core.logout(&who).await.map_err(status)?;
        Ok(Response::new(proto::LogoutResponse {}))
    }

    async fn delete_account(
        &self,
        request: Request<proto::DeleteAccountRequest>,
    ) -> Result<Response<proto::DeleteAccountResponse>, Status> {
        let who = self.identify(&request).await?;
        self.core
            .delete_account(&who, &request.into_inner().password)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeleteAccountResponse {}))
    }

    type ListUsersStream = RpcStream<proto::User>;

    async fn list_users(
        &self,
        request: Request<proto::ListUsersRequest>,
    ) -> Result<Response<Self::ListUsersStream>, Status> {
        let who = self.identify(&request).await?;
        // A listing is held whole until the client reads it: it takes one of
        // the session's turns, as a history reply does.
        let turn = self.reader_turn(&who).await?;
        let users = self
            .core
            .list_users(&request.into_inner().pattern)
            .map_err(status)?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            users.into_iter().map(move |u| {
                let _turn = &turn;
                Ok(user(u))
            }),
        ))))
    }
}

fn user(u: crate::core::UserInfo) -> proto::User {
    proto::User {
        name: u.name,
        online: u.online,
        node: u.node,
    }
}

#[tonic::async_trait]
impl Chat for GrpcGateway {
    async fn send(
        &self,
        request: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        let who = self.identify(&request).await?;
        self.take_turn(&who).await?;
        do_send(&self.core, &who, request.into_inner())
            .await
            .map(Response::new)
    }

    type SubscribeStream = RpcStream<proto::Event>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = self.identify(&request).await?;
        let inbox = self.core.attach(&who).await.map_err(status)?;
        Ok(Response::new(deliveries(inbox)))
    }

    type SendAndReceiveMessageStream = RpcStream<proto::ServerFrame>;

    async fn send_and_receive_message(
        &self,
        request: Request<Streaming<proto::ClientFrame>>,
    ) -> Result<Response<Self::SendAndReceiveMessageStream>, Status> {
        let who = self.identify(&request).await?;
        let inbox = self.core.attach(&who).await.map_err(status)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let deliveries = forward(inbox, tx.clone(), |event| proto::ServerFrame {
            kind: Some(proto::server_frame::Kind::Event(event)),
        });
        let frames = self.paced(who.clone(), request.into_inner());
        tokio::spawn(answer_frames(
            self.core.clone(),
            who,
            frames,
            deliveries,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        let who = self.identify(&request).await?;
        self.core
            .ack(&who, &request.into_inner().ids)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::AckResponse {}))
    }

    type GetMessagesStream = RpcStream<proto::Message>;

    async fn get_messages(
        &self,
        request: Request<proto::GetMessagesRequest>,
    ) -> Result<Response<Self::GetMessagesStream>, Status> {
        let who = self.identify(&request).await?;
        let req = request.into_inner();
        let of = match req.conversation {
            Some(proto::get_messages_request::Conversation::Room(room)) => Target::Room(room),
            Some(proto::get_messages_request::Conversation::User(user)) => Target::User(user),
            None => {
                return Err(Status::invalid_argument(
                    "say which conversation: set `room` or `user`",
                ));
            }
        };
        let turn = self.reader_turn(&who).await?;
        let messages = self
            .core
            .history_stream(&who, &of, req.after_id, req.limit, req.newest)
            .await
            .map_err(status)?;
        // The turn goes with the stream: given back when tonic drops it.
        Ok(Response::new(Box::pin(messages.map(move |m| {
            let _turn = &turn;
            m.map(|m| to_proto(&m)).map_err(status)
        }))))
    }

    async fn join_room(
        &self,
        request: Request<proto::JoinRoomRequest>,
    ) -> Result<Response<proto::JoinRoomResponse>, Status> {
        let who = self.identify(&request).await?;
        let (room, joined) = self
            .core
            .join_room(&who, &request.into_inner().room)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::JoinRoomResponse { room, joined }))
    }

    async fn leave_room(
        &self,
        request: Request<proto::LeaveRoomRequest>,
    ) -> Result<Response<proto::LeaveRoomResponse>, Status> {
        let who = self.identify(&request).await?;
        let left = self
            .core
            .leave_room(&who, &request.into_inner().room)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::LeaveRoomResponse { left }))
    }

    async fn list_rooms(
        &self,
        request: Request<proto::ListRoomsRequest>,
    ) -> Result<Response<proto::ListRoomsResponse>, Status> {
        let who = self.identify(&request).await?;
        let rooms = self
            .core
            .list_rooms(&who)
            .into_iter()
            .map(|r| proto::Room {
                name: r.name,
                members: r.members,
                joined: r.joined,
            })
            .collect();
        Ok(Response::new(proto::ListRoomsResponse { rooms }))
    }

    async fn get_stats(
        &self,
        request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::Stats>, Status> {
        self.identify(&request).await?;
        let (s, missing_nodes) = if request.get_ref().mesh {
            self.core.mesh_stats().await.map_err(status)?
        } else {
            (self.core.stats().await.map_err(status)?, Vec::new())
        };
        Ok(Response::new(proto::Stats {
            missing_nodes,
            messages: s.messages,
            accounts: s.accounts,
            sessions_online: s.sessions_online,
            rooms: s.rooms,
            uptime_secs: s.uptime_secs,
            node: s.node,
        }))
    }

    async fn who(
        &self,
        request: Request<proto::WhoRequest>,
    ) -> Result<Response<proto::WhoResponse>, Status> {
        self.identify(&request).await?;
        let who = self.core.who().await;
        Ok(Response::new(proto::WhoResponse {
            users: who.answers.into_iter().map(user).collect(),
            missing_nodes: who.missing,
        }))
    }
}

/// Handles one frame of a bidirectional stream; sends answer with a result.
async fn client_frame(
    core: &Core,
    who: &Identity,
    frame: proto::ClientFrame,
) -> Option<proto::ServerFrame> {
    use proto::{client_frame::Kind as In, server_frame::Kind as Out};
    let notice = |text: String| proto::ServerFrame {
        kind: Some(Out::Event(proto::Event {
            kind: Some(proto::event::Kind::Notice(proto::Notice { text })),
        })),
    };
    match frame.kind? {
        In::Send(out) => {
            let result = match out.message {
                Some(req) => do_send(core, who, req).await,
                None => Err(Status::invalid_argument("a send frame needs a message")),
            };
            let result = match result {
                Ok(sent) => proto::send_result::Result::Sent(sent),
                Err(e) => proto::send_result::Result::Error(proto::SendError {
                    // ErrorCode's numbers are gRPC's codes.
                    code: e.code() as i32,
                    message: e.message().to_owned(),
                }),
            };
            Some(proto::ServerFrame {
                kind: Some(Out::SendResult(proto::SendResult {
                    request_id: out.request_id,
                    result: Some(result),
                })),
            })
        }
        In::Ack(ack) => match core.ack(who, &ack.ids).await {
            Ok(()) => None,
            Err(e) => Some(notice(format!("ack failed: {e}"))),
        },
    }
}

impl GrpcGateway {
    async fn moderate(
        &self,
        who: &Identity,
        action: Moderation,
        name: &str,
        reason: &str,
    ) -> Result<Response<proto::ModerationResponse>, Status> {
        let done = self
            .core
            .moderate(who, action, name, reason)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::ModerationResponse {
            name: done.name,
            node: done.node,
            sessions_ended: done.sessions_ended,
            changed: done.changed,
        }))
    }
}

#[tonic::async_trait]
impl Admin for GrpcGateway {
    async fn peer_listen(
        &self,
        request: Request<proto::PeerListenRequest>,
    ) -> Result<Response<proto::PeerListenResponse>, Status> {
        let who = self.operator(&request).await?;
        let r = request.get_ref();
        let address = self
            .core
            .peer_listen(&who, &r.host, port(r.port)?)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::PeerListenResponse { address }))
    }

    async fn peer_connect(
        &self,
        request: Request<proto::PeerConnectRequest>,
    ) -> Result<Response<proto::PeerConnectResponse>, Status> {
        let who = self.operator(&request).await?;
        let r = request.get_ref();
        let node = self
            .core
            .peer_connect(&who, &r.host, port(r.port)?)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::PeerConnectResponse { node }))
    }

    async fn peer_disconnect(
        &self,
        request: Request<proto::PeerDisconnectRequest>,
    ) -> Result<Response<proto::PeerDisconnectResponse>, Status> {
        let who = self.operator(&request).await?;
        self.core
            .peer_kill(&who, &request.get_ref().node)
            .map_err(status)?;
        Ok(Response::new(proto::PeerDisconnectResponse {}))
    }

    async fn peers(
        &self,
        request: Request<proto::PeersRequest>,
    ) -> Result<Response<proto::PeersResponse>, Status> {
        let who = self.operator(&request).await?;
        let peers = self.core.peers(&who).map_err(status)?;
        Ok(Response::new(proto::PeersResponse {
            peers: peers
                .into_iter()
                .map(|p| proto::Peer {
                    node: p.node,
                    address: p.address,
                    outbound: p.outbound,
                })
                .collect(),
        }))
    }

    async fn topology(
        &self,
        request: Request<proto::TopologyRequest>,
    ) -> Result<Response<proto::TopologyResponse>, Status> {
        let who = self.operator(&request).await?;
        let topology = self.core.topology(&who).map_err(status)?;
        Ok(Response::new(proto::TopologyResponse {
            links: topology
                .links
                .into_iter()
                .map(|(lesser, greater)| proto::Link { lesser, greater })
                .collect(),
            nodes: topology.nodes,
        }))
    }

    async fn kick(
        &self,
        request: Request<proto::KickRequest>,
    ) -> Result<Response<proto::ModerationResponse>, Status> {
        let who = self.operator(&request).await?;
        let r = request.into_inner();
        self.moderate(&who, Moderation::Kick, &r.name, &r.reason)
            .await
    }

    async fn suspend(
        &self,
        request: Request<proto::SuspendRequest>,
    ) -> Result<Response<proto::ModerationResponse>, Status> {
        let who = self.operator(&request).await?;
        let r = request.into_inner();
        self.moderate(&who, Moderation::Suspend, &r.name, &r.reason)
            .await
    }

    async fn restore(
        &self,
        request: Request<proto::RestoreRequest>,
    ) -> Result<Response<proto::ModerationResponse>, Status> {
        let who = self.operator(&request).await?;
        let name = request.into_inner().name;
        self.moderate(&who, Moderation::Restore, &name, "").await
    }
}

fn port(port: u32) -> Result<u16, Status> {
    u16::try_from(port).map_err(|_| {
        Status::invalid_argument(format!("invalid port {port}: it must be 0 to 65535"))
    })
}
