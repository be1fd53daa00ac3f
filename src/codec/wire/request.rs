//! What a client asks: one [`Request`] per opcode, parsed from a frame and
//! encoded into one, and [`RequestError`], why a frame is not a request.
//!
//! Texts borrow from the frame they were read from (or, when encoding,
//! from the caller), so neither side copies a body to parse or send it.

use std::borrow::Cow;

use super::{Status, op};
use crate::codec::frame::{ArgSink, Frame, FrameArgs, FrameBuf, FrameView, Header, arg};
use crate::core::Moderation;
use crate::model::Target;

/// Whom a send goes to, or whose history is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    User(&'a str),
    Room(&'a str),
}

impl Dest<'_> {
    pub fn to_target(self) -> Target {
        match self {
            Dest::User(user) => Target::User(user.to_owned()),
            Dest::Room(room) => Target::Room(room.to_owned()),
        }
    }
}

/// A request, by opcode; see `docs/wire-protocol.md` for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Register {
        name: &'a str,
        password: &'a str,
    },
    Login {
        name: &'a str,
        password: &'a str,
    },
    Logout,
    DeleteAccount {
        password: &'a str,
    },
    ListUsers {
        pattern: &'a str,
    },
    /// SEND_DM to a user, SEND_ROOM to a room; an empty `client_msg_id`
    /// is none.
    Send {
        to: Dest<'a>,
        body: &'a str,
        client_msg_id: &'a str,
    },
    Ack {
        ids: Cow<'a, [u64]>,
    },
    History {
        of: Dest<'a>,
        after: u64,
        limit: u32,
        newest: bool,
    },
    Join {
        room: &'a str,
    },
    Leave {
        room: &'a str,
    },
    Rooms,
    Who,
    /// Without `mesh`, the request carries no argument.
    Stats {
        mesh: bool,
    },
    /// Echoed back as they are.
    Ping(Vec<&'a [u8]>),
    Peers,
    Topology,
    PeerListen {
        host: &'a str,
        port: u16,
    },
    PeerConnect {
        host: &'a str,
        port: u16,
    },
    PeerKill {
        node: &'a str,
    },
    /// KICK and SUSPEND carry a reason (may be empty); RESTORE none.
    Moderate {
        action: Moderation,
        name: &'a str,
        reason: &'a str,
    },
}

/// Why a frame is not a request. Each is answered with its
/// [`status`](RequestError::status) and its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("expected {expected} arguments, got {got}")]
    Count { expected: usize, got: usize },
    #[error("a text argument is not valid UTF-8")]
    Utf8,
    #[error("{what} is {bytes} bytes")]
    Size { what: &'static str, bytes: usize },
    #[error("kind is 0 (room) or 1 (user)")]
    HistoryKind,
    #[error("STATS takes no argument or one: mesh")]
    StatsArguments,
    #[error("every ACK argument is an 8-byte id")]
    AckId,
}

impl RequestError {
    pub fn status(&self) -> Status {
        match self {
            RequestError::UnknownOpcode(_) => Status::UnknownOpcode,
            RequestError::Utf8 => Status::Utf8,
            _ => Status::Arguments,
        }
    }
}

impl<'a> Request<'a> {
    /// Reads a decoded frame's opcode and arguments.
    pub fn parse(frame: &'a Frame) -> Result<Request<'a>, RequestError> {
        Request::parse_args(frame.opcode, frame.args.iter().map(|a| &a[..]))
    }

    /// Reads a frame in place.
    pub fn parse_view(view: &FrameView<'a>) -> Result<Request<'a>, RequestError> {
        Request::parse_args(view.opcode, view.args())
    }

    /// Reads the arguments of a request with this opcode. Within a request
    /// the checks run in a fixed order (count first, then each argument in
    /// turn), so one frame always earns the same error.
    pub fn parse_args<I>(opcode: u8, args: I) -> Result<Request<'a>, RequestError>
    where
        I: ExactSizeIterator<Item = &'a [u8]>,
    {
        Ok(match opcode {
            op::REGISTER | op::LOGIN => {
                let [name, password] = exact(args)?;
                let (name, password) = (text(name)?, text(password)?);
                if opcode == op::REGISTER {
                    Request::Register { name, password }
                } else {
                    Request::Login { name, password }
                }
            }
            op::SEND_DM | op::SEND_ROOM => {
                let [to, body, client_msg_id] = exact(args)?;
                let to = text(to)?;
                Request::Send {
                    to: if opcode == op::SEND_DM {
                        Dest::User(to)
                    } else {
                        Dest::Room(to)
                    },
                    body: text(body)?,
                    client_msg_id: text(client_msg_id)?,
                }
            }
            op::ACK => Request::Ack {
                ids: Cow::Owned(ack_ids(args)?),
            },
            op::HISTORY => history(args)?,
            op::STATS => stats(args)?,
            op::PING => Request::Ping(args.collect()),
            op::PEER_LISTEN | op::PEER_CONNECT => {
                let [host, port] = exact(args)?;
                let port = arg::to_u16(port).ok_or(size("port", 2))?;
                let host = text(host)?;
                if opcode == op::PEER_LISTEN {
                    Request::PeerListen { host, port }
                } else {
                    Request::PeerConnect { host, port }
                }
            }
            op::KICK | op::SUSPEND => {
                let [name, reason] = exact(args)?;
                Request::Moderate {
                    action: if opcode == op::KICK {
                        Moderation::Kick
                    } else {
                        Moderation::Suspend
                    },
                    name: text(name)?,
                    reason: text(reason)?,
                }
            }
            _ => one_text(opcode, args)?,
        })
    }

    pub fn opcode(&self) -> u8 {
        match self {
            Request::Register { .. } => op::REGISTER,
            Request::Login { .. } => op::LOGIN,
            Request::Logout => op::LOGOUT,
            Request::DeleteAccount { .. } => op::DELETE_ACCOUNT,
            Request::ListUsers { .. } => op::LIST_USERS,
            Request::Send {
                to: Dest::User(_), ..
            } => op::SEND_DM,
            Request::Send {
                to: Dest::Room(_), ..
            } => op::SEND_ROOM,
            Request::Ack { .. } => op::ACK,
            Request::History { .. } => op::HISTORY,
            Request::Join { .. } => op::JOIN,
            Request::Leave { .. } => op::LEAVE,
            Request::Rooms => op::ROOMS,
            Request::Who => op::WHO,
            Request::Stats { .. } => op::STATS,
            Request::Ping(_) => op::PING,
            Request::Peers => op::PEERS,
            Request::Topology => op::TOPOLOGY,
            Request::PeerListen { .. } => op::PEER_LISTEN,
            Request::PeerConnect { .. } => op::PEER_CONNECT,
            Request::PeerKill { .. } => op::PEER_KILL,
            Request::Moderate { action, .. } => match action {
                Moderation::Kick => op::KICK,
                Moderation::Suspend => op::SUSPEND,
                Moderation::Restore => op::RESTORE,
            },
        }
    }

    /// Appends the request as a frame with this id, written straight from
    /// its fields. An ACK of more than 65,535 ids carries the first 65,535.
    pub fn encode(&self, request_id: u32, out: &mut impl FrameBuf) {
        Header::request(self.opcode(), request_id).put_args(out, self);
    }

    pub fn to_bytes(&self, request_id: u32) -> bytes::Bytes {
        let mut out = bytes::BytesMut::new();
        self.encode(request_id, &mut out);
        out.freeze()
    }
}

impl FrameArgs for Request<'_> {
    fn write_args(&self, sink: &mut impl ArgSink) {
        match self {
            Request::Register { name, password } | Request::Login { name, password } => {
                sink.text(name);
                sink.text(password);
            }
            Request::Logout
            | Request::Rooms
            | Request::Who
            | Request::Peers
            | Request::Topology
            | Request::Stats { mesh: false } => {}
            Request::DeleteAccount { password: text }
            | Request::ListUsers { pattern: text }
            | Request::Join { room: text }
            | Request::Leave { room: text }
            | Request::PeerKill { node: text } => sink.text(text),
            Request::Send {
                to: Dest::User(to) | Dest::Room(to),
                body,
                client_msg_id,
            } => {
                sink.text(to);
                sink.text(body);
                sink.text(client_msg_id);
            }
            Request::Ack { ids } => ids.iter().for_each(|id| sink.u64(*id)),
            Request::History {
                of,
                after,
                limit,
                newest,
            } => {
                let (kind, name) = match of {
                    Dest::Room(room) => (0, room),
                    Dest::User(user) => (1, user),
                };
                sink.bytes(&[kind]);
                sink.text(name);
                sink.u64(*after);
                sink.u32(*limit);
                sink.bool(*newest);
            }
            Request::Stats { mesh: true } => sink.bool(true),
            Request::Ping(args) => args.iter().for_each(|a| sink.bytes(a)),
            Request::PeerListen { host, port } | Request::PeerConnect { host, port } => {
                sink.text(host);
                sink.u16(*port);
            }
            Request::Moderate {
                action: Moderation::Restore,
                name,
                ..
            } => sink.text(name),
            Request::Moderate { name, reason, .. } => {
                sink.text(name);
                sink.text(reason);
            }
        }
    }
}

/// An ACK's ids, one 8-byte argument each: what a server reading ACKs in
/// place takes from the frame, without building a [`Request`] around them.
pub fn ack_ids<'a>(args: impl Iterator<Item = &'a [u8]>) -> Result<Vec<u64>, RequestError> {
    args.map(arg::to_u64)
        .collect::<Option<_>>()
        .ok_or(RequestError::AckId)
}

/// The requests of no argument or one text argument.
fn one_text<'a>(
    opcode: u8,
    args: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Result<Request<'a>, RequestError> {
    let none = |request: Request<'a>, args| exact::<0>(args).map(|[]| request);
    match opcode {
        op::LOGOUT => none(Request::Logout, args),
        op::ROOMS => none(Request::Rooms, args),
        op::WHO => none(Request::Who, args),
        op::PEERS => none(Request::Peers, args),
        op::TOPOLOGY => none(Request::Topology, args),
        op::DELETE_ACCOUNT
        | op::LIST_USERS
        | op::JOIN
        | op::LEAVE
        | op::PEER_KILL
        | op::RESTORE => {
            let [one] = exact(args)?;
            let one = text(one)?;
            Ok(match opcode {
                op::DELETE_ACCOUNT => Request::DeleteAccount { password: one },
                op::LIST_USERS => Request::ListUsers { pattern: one },
                op::JOIN => Request::Join { room: one },
                op::LEAVE => Request::Leave { room: one },
                op::RESTORE => Request::Moderate {
                    action: Moderation::Restore,
                    name: one,
                    reason: "",
                },
                _ => Request::PeerKill { node: one },
            })
        }
        opcode => Err(RequestError::UnknownOpcode(opcode)),
    }
}

fn history<'a>(args: impl ExactSizeIterator<Item = &'a [u8]>) -> Result<Request<'a>, RequestError> {
    let [kind, name, after, limit, newest] = exact(args)?;
    let name = text(name)?;
    let of = match kind {
        [0] => Dest::Room(name),
        [1] => Dest::User(name),
        _ => return Err(RequestError::HistoryKind),
    };
    Ok(Request::History {
        of,
        after: arg::to_u64(after).ok_or(size("after", 8))?,
        limit: arg::to_u32(limit).ok_or(size("limit", 4))?,
        newest: arg::to_bool(newest).ok_or(size("newest", 1))?,
    })
}

fn stats<'a>(
    mut args: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Result<Request<'a>, RequestError> {
    let mesh = match (args.len(), args.next()) {
        (0, _) => false,
        (1, Some(mesh)) => arg::to_bool(mesh).ok_or(size("mesh", 1))?,
        _ => return Err(RequestError::StatsArguments),
    };
    Ok(Request::Stats { mesh })
}

/// Exactly N arguments, or an error saying how many were expected.
fn exact<'a, const N: usize>(
    args: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Result<[&'a [u8]; N], RequestError> {
    let got = args.len();
    if got != N {
        return Err(RequestError::Count { expected: N, got });
    }
    let mut out = [&[][..]; N];
    for (slot, arg) in out.iter_mut().zip(args) {
        *slot = arg;
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<&str, RequestError> {
    std::str::from_utf8(b).map_err(|_| RequestError::Utf8)
}

fn size(what: &'static str, bytes: usize) -> RequestError {
    RequestError::Size { what, bytes }
}
