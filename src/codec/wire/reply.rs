//! What a server answers: [`Reply`], the ok reply of each kind of request,
//! and [`Rejection`], the status and sentence of an error reply or a BYE.
//! A reply frame carries its request's opcode, and the opcode says which
//! kind of reply it holds.

use bytes::Bytes;

use super::message::{MESSAGE_ARGS, parse_message, write_message};
use super::{RequestError, Status, op};
use crate::codec::frame::{ArgSink, Frame, FrameArgs, FrameBuf, Header, VERSION, arg};
use crate::core::{Message, Moderated, PeerLink, RoomInfo, Sent, Stats, Topology, UserInfo};

/// A user online somewhere in the mesh, as WHO lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineUser {
    pub name: String,
    pub node: String,
}

/// An ok reply, by the kind of request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// REGISTER, LOGIN: the name as registered.
    Name(String),
    /// LOGOUT, DELETE_ACCOUNT, ACK, PEER_KILL: no arguments.
    Done,
    /// LIST_USERS.
    Users(Vec<UserInfo>),
    /// SEND_DM, SEND_ROOM.
    Sent(Sent),
    /// HISTORY, oldest first.
    Messages(Vec<Message>),
    /// JOIN: the room's name, and false if already a member.
    Joined { room: String, joined: bool },
    /// LEAVE: whether the session was a member.
    Left(bool),
    /// ROOMS.
    Rooms(Vec<RoomInfo>),
    /// WHO: the users online, then the nodes that did not answer (each on
    /// the wire as a row with an empty name).
    Who {
        online: Vec<OnlineUser>,
        missing: Vec<String>,
    },
    /// STATS, then the nodes that did not answer.
    Stats { stats: Stats, missing: Vec<String> },
    /// PING: its arguments back.
    Pong(Vec<Bytes>),
    /// PEERS.
    Peers(Vec<PeerLink>),
    /// TOPOLOGY.
    Topology(Topology),
    /// PEER_LISTEN: the address bound.
    Bound(String),
    /// PEER_CONNECT: the linked node's name.
    Linked(String),
    /// KICK, SUSPEND, RESTORE: what was done, on the account's home node.
    Moderated(Moderated),
}

/// An error reply or a BYE: a status and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The raw code: a client may hear one it does not know.
    pub code: u8,
    pub text: String,
}

impl Rejection {
    pub fn new(status: Status, text: impl Into<String>) -> Rejection {
        Rejection {
            code: status as u8,
            text: text.into(),
        }
    }

    pub fn status(&self) -> Option<Status> {
        Status::from_u8(self.code)
    }

    /// The rejection a frame with a non-zero status carries; `None` if its
    /// status is 0.
    pub fn of(frame: &Frame) -> Option<Rejection> {
        (frame.status != 0).then(|| Rejection::read(frame))
    }

    /// A frame's status and first argument, whatever its status.
    pub fn read(frame: &Frame) -> Rejection {
        Rejection {
            code: frame.status,
            text: frame
                .args
                .first()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default(),
        }
    }

    /// Appends the rejection as a frame: an error reply to the request of
    /// this opcode and id, or with [`op::PUSH_BYE`] and id 0, a BYE.
    pub fn encode(&self, opcode: u8, request_id: u32, out: &mut impl FrameBuf) {
        let head = Header {
            version: VERSION,
            opcode,
            request_id,
            status: self.code,
        };
        head.put_all(out, &[self.text.as_bytes()]);
    }
}

impl From<RequestError> for Rejection {
    fn from(e: RequestError) -> Rejection {
        Rejection::new(e.status(), e.to_string())
    }
}

/// Why a reply frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The server refused the request.
    #[error("{} (status {:?})", .0.text, .0.status())]
    Rejected(Rejection),
    /// The reply's arguments do not fit its opcode.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

impl Reply {
    /// Reads a reply frame: its opcode says which kind of reply it is.
    pub fn parse(frame: &Frame) -> Result<Reply, ReplyError> {
        if let Some(rejection) = Rejection::of(frame) {
            return Err(ReplyError::Rejected(rejection));
        }
        let a = &frame.args[..];
        let malformed = ReplyError::Malformed;
        match frame.opcode {
            op::REGISTER | op::LOGIN => one_text(a).map(Reply::Name),
            op::PEER_LISTEN => one_text(a).map(Reply::Bound),
            op::PEER_CONNECT => one_text(a).map(Reply::Linked),
            op::LOGOUT | op::DELETE_ACCOUNT | op::ACK | op::PEER_KILL => match a {
                [] => Ok(Reply::Done),
                _ => Err(malformed("expected no arguments")),
            },
            op::SEND_DM | op::SEND_ROOM => parse_sent(a).map(Reply::Sent),
            op::HISTORY => a
                .chunks(MESSAGE_ARGS)
                .map(|m| parse_message(m).ok_or(malformed("history message")))
                .collect::<Result<_, _>>()
                .map(Reply::Messages),
            op::JOIN => match a {
                [room, joined] => Ok(Reply::Joined {
                    room: text(room)?,
                    joined: flag(joined)?,
                }),
                _ => Err(malformed("JOIN has two arguments")),
            },
            op::LEAVE => match a {
                [left] => Ok(Reply::Left(flag(left)?)),
                _ => Err(malformed("LEAVE has one argument")),
            },
            op::PING => Ok(Reply::Pong(a.to_vec())),
            op::LIST_USERS => rows(a, parse_user).map(Reply::Users),
            op::ROOMS => rows(a, parse_room).map(Reply::Rooms),
            op::PEERS => rows(a, parse_peer).map(Reply::Peers),
            op::WHO => parse_who(a),
            op::STATS => parse_stats(a),
            op::TOPOLOGY => parse_topology(a).map(Reply::Topology),
            op::KICK | op::SUSPEND | op::RESTORE => match a {
                [name, node, sessions, changed] => Ok(Reply::Moderated(Moderated {
                    name: text(name)?,
                    node: text(node)?,
                    sessions_ended: arg::to_u32(sessions)
                        .ok_or(malformed("sessions is 4 bytes"))?,
                    changed: flag(changed)?,
                })),
                _ => Err(malformed("a moderation reply has four arguments")),
            },
            _ => Err(malformed("a reply to an unknown opcode")),
        }
    }

    /// Appends the reply to the request of this opcode and id, written
    /// straight from its fields.
    pub fn encode(&self, opcode: u8, request_id: u32, out: &mut impl FrameBuf) {
        let head = Header {
            version: VERSION,
            opcode,
            request_id,
            status: Status::Ok as u8,
        };
        head.put_args(out, self);
    }
}

impl FrameArgs for Reply {
    fn write_args(&self, sink: &mut impl ArgSink) {
        match self {
            Reply::Name(text) | Reply::Bound(text) | Reply::Linked(text) => sink.text(text),
            Reply::Done => {}
            Reply::Users(users) => users.iter().for_each(|u| {
                sink.text(&u.name);
                sink.bool(u.online);
                sink.text(&u.node);
            }),
            Reply::Sent(sent) => {
                sink.u64(sent.id);
                sink.i64(sent.sent_at_ms);
                sink.bool(sent.duplicate);
            }
            Reply::Messages(messages) => messages.iter().for_each(|m| write_message(m, sink)),
            Reply::Joined { room, joined } => {
                sink.text(room);
                sink.bool(*joined);
            }
            Reply::Left(left) => sink.bool(*left),
            Reply::Rooms(rooms) => rooms.iter().for_each(|r| {
                sink.text(&r.name);
                sink.u32(r.members);
                sink.bool(r.joined);
            }),
            Reply::Who { online, missing } => {
                for u in online {
                    sink.text(&u.name);
                    sink.text(&u.node);
                }
                // An empty name marks a node that did not answer.
                for node in missing {
                    sink.text("");
                    sink.text(node);
                }
            }
            Reply::Stats { stats, missing } => write_stats(stats, missing, sink),
            Reply::Pong(args) => args.iter().for_each(|a| sink.bytes(a)),
            Reply::Peers(peers) => peers.iter().for_each(|p| {
                sink.text(&p.node);
                sink.text(&p.address);
                sink.bool(p.outbound);
            }),
            Reply::Topology(topology) => {
                sink.u32(topology.nodes.len() as u32);
                topology.nodes.iter().for_each(|n| sink.text(n));
                for (from, to) in &topology.links {
                    sink.text(from);
                    sink.text(to);
                }
            }
            Reply::Moderated(m) => {
                sink.text(&m.name);
                sink.text(&m.node);
                sink.u32(m.sessions_ended);
                sink.bool(m.changed);
            }
        }
    }
}

fn write_stats(s: &Stats, missing: &[String], sink: &mut impl ArgSink) {
    for n in [
        s.messages,
        s.accounts,
        s.sessions_online,
        s.rooms,
        s.uptime_secs,
    ] {
        sink.u64(n);
    }
    sink.text(&s.node);
    missing.iter().for_each(|n| sink.text(n));
}

fn text(b: &Bytes) -> Result<String, ReplyError> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| ReplyError::Malformed("text argument"))
}

fn flag(b: &Bytes) -> Result<bool, ReplyError> {
    arg::to_bool(b).ok_or(ReplyError::Malformed("bool argument"))
}

fn number(b: &Bytes) -> Result<u64, ReplyError> {
    arg::to_u64(b).ok_or(ReplyError::Malformed("u64 argument"))
}

fn one_text(args: &[Bytes]) -> Result<String, ReplyError> {
    match args {
        [one] => text(one),
        _ => Err(ReplyError::Malformed("expected one text argument")),
    }
}

fn parse_sent(args: &[Bytes]) -> Result<Sent, ReplyError> {
    let [id, at, duplicate] = args else {
        return Err(ReplyError::Malformed("send reply has three arguments"));
    };
    Ok(Sent {
        id: number(id)?,
        sent_at_ms: arg::to_i64(at).ok_or(ReplyError::Malformed("sent at"))?,
        duplicate: flag(duplicate)?,
    })
}

/// Rows of three arguments each.
fn rows<T>(
    args: &[Bytes],
    row: impl Fn(&Bytes, &Bytes, &Bytes) -> Result<T, ReplyError>,
) -> Result<Vec<T>, ReplyError> {
    if !args.len().is_multiple_of(3) {
        return Err(ReplyError::Malformed("rows of three arguments"));
    }
    args.chunks_exact(3)
        .map(|r| row(&r[0], &r[1], &r[2]))
        .collect()
}

fn parse_user(name: &Bytes, online: &Bytes, node: &Bytes) -> Result<UserInfo, ReplyError> {
    Ok(UserInfo {
        name: text(name)?,
        online: flag(online)?,
        node: text(node)?,
    })
}

fn parse_room(name: &Bytes, members: &Bytes, joined: &Bytes) -> Result<RoomInfo, ReplyError> {
    Ok(RoomInfo {
        name: text(name)?,
        members: arg::to_u32(members).ok_or(ReplyError::Malformed("members"))?,
        joined: flag(joined)?,
    })
}

fn parse_peer(node: &Bytes, address: &Bytes, outbound: &Bytes) -> Result<PeerLink, ReplyError> {
    Ok(PeerLink {
        node: text(node)?,
        address: text(address)?,
        outbound: flag(outbound)?,
    })
}

fn parse_who(args: &[Bytes]) -> Result<Reply, ReplyError> {
    if !args.len().is_multiple_of(2) {
        return Err(ReplyError::Malformed("WHO rows have two arguments"));
    }
    let (mut online, mut missing) = (Vec::new(), Vec::new());
    for row in args.chunks_exact(2) {
        let (name, node) = (text(&row[0])?, text(&row[1])?);
        if name.is_empty() {
            missing.push(node);
        } else {
            online.push(OnlineUser { name, node });
        }
    }
    Ok(Reply::Who { online, missing })
}

fn parse_stats(args: &[Bytes]) -> Result<Reply, ReplyError> {
    let [
        messages,
        accounts,
        sessions,
        rooms,
        uptime,
        node,
        missing @ ..,
    ] = args
    else {
        return Err(ReplyError::Malformed("STATS has six arguments or more"));
    };
    let stats = Stats {
        messages: number(messages)?,
        accounts: number(accounts)?,
        sessions_online: number(sessions)?,
        rooms: number(rooms)?,
        uptime_secs: number(uptime)?,
        node: text(node)?,
    };
    let missing = missing.iter().map(text).collect::<Result<_, _>>()?;
    Ok(Reply::Stats { stats, missing })
}

fn parse_topology(args: &[Bytes]) -> Result<Topology, ReplyError> {
    let malformed = ReplyError::Malformed("TOPOLOGY: a count, nodes, then pairs");
    let (count, rest) = args.split_first().ok_or(malformed.clone())?;
    let count = arg::to_u32(count).ok_or(malformed.clone())? as usize;
    if rest.len() < count || !(rest.len() - count).is_multiple_of(2) {
        return Err(malformed);
    }
    let (nodes, links) = rest.split_at(count);
    Ok(Topology {
        nodes: nodes.iter().map(text).collect::<Result<_, _>>()?,
        links: links
            .chunks_exact(2)
            .map(|l| Ok((text(&l[0])?, text(&l[1])?)))
            .collect::<Result<_, ReplyError>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::MAX_REQUEST;
    use crate::codec::wire::Request;
    use crate::model::Moderation;

    /// The bytes of the code block after `heading` in docs/wire-protocol.md.
    fn documented(heading: &str) -> Vec<u8> {
        let doc = include_str!("../../../docs/wire-protocol.md");
        let start = doc.find(heading).expect("the example");
        doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with("```"))
            .nth(1)
            .expect("its bytes")
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).expect("hex"))
            .collect()
    }

    #[test]
    fn the_documented_kick_and_its_reply() {
        let kick = Request::Moderate {
            action: Moderation::Kick,
            name: "bob",
            reason: "spam",
        };
        let bytes = documented("KICK, id 5,");
        assert_eq!(kick.to_bytes(5).as_ref(), &bytes[..]);
        let frame = Frame::decode(&mut bytes[..].into(), MAX_REQUEST)
            .unwrap()
            .unwrap();
        assert_eq!(Request::parse(&frame), Ok(kick));

        let done = Reply::Moderated(Moderated {
            name: "bob".into(),
            node: "b".into(),
            sessions_ended: 2,
            changed: true,
        });
        let bytes = documented("Its reply: bob's home node");
        let mut encoded = bytes::BytesMut::new();
        done.encode(op::KICK, 5, &mut encoded);
        assert_eq!(&encoded[..], &bytes[..]);
        let frame = Frame::decode(&mut bytes[..].into(), usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(Reply::parse(&frame), Ok(done));
    }
}
