//! The binary protocol's vocabulary: opcodes, status codes and how a message
//! is laid out in arguments. `docs/wire-protocol.md` is the specification.

use bytes::Bytes;

use super::frame::{Frame, FrameBuf, Header, VERSION, arg};
use crate::core::{ErrorKind, Message, Target};

/// Request opcodes (client → server); a reply carries the same opcode.
pub mod op {
    pub const REGISTER: u8 = 0x01;
    pub const LOGIN: u8 = 0x02;
    pub const LOGOUT: u8 = 0x03;
    pub const DELETE_ACCOUNT: u8 = 0x04;
    pub const LIST_USERS: u8 = 0x05;
    pub const SEND_DM: u8 = 0x06;
    pub const SEND_ROOM: u8 = 0x07;
    pub const ACK: u8 = 0x08;
    pub const HISTORY: u8 = 0x09;
    pub const JOIN: u8 = 0x0A;
    pub const LEAVE: u8 = 0x0B;
    pub const ROOMS: u8 = 0x0C;
    pub const WHO: u8 = 0x0D;
    pub const STATS: u8 = 0x0E;
    pub const PING: u8 = 0x0F;
    pub const PEERS: u8 = 0x20;
    pub const TOPOLOGY: u8 = 0x21;
    pub const PEER_LISTEN: u8 = 0x22;
    pub const PEER_CONNECT: u8 = 0x23;
    pub const PEER_KILL: u8 = 0x24;
    /// Server push: a delivered message (request id 0).
    pub const PUSH_MESSAGE: u8 = 0x80;
    /// Server push: the server is closing this connection, and why.
    pub const PUSH_BYE: u8 = 0x81;
}

/// Reply status codes; 0 is success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    /// The frame is malformed; the connection is closed after this reply.
    BadFrame = 1,
    UnknownOpcode = 2,
    /// Unsupported protocol version; the connection is closed.
    Version = 3,
    /// A text argument is not UTF-8.
    Utf8 = 4,
    /// Wrong number or size of arguments for the opcode.
    Arguments = 5,
    Invalid = 6,
    Exists = 7,
    Auth = 8,
    Perm = 9,
    NotFound = 10,
    Limit = 11,
    Unavailable = 12,
    Internal = 13,
    /// The frame is over the size limit; the connection is closed.
    TooLarge = 14,
    /// Reserved: the operation needs something this node does not run. No
    /// current server sends it.
    Unsupported = 15,
    /// The server's disk is (nearly) full: new messages are refused.
    DiskFull = 16,
    /// A deadline passed: logging in, or finishing a frame once begun; the
    /// connection is closed.
    Timeout = 17,
    /// The session sends far faster than its allowance; the connection is
    /// closed.
    Flood = 18,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        use Status::*;
        [
            Ok,
            BadFrame,
            UnknownOpcode,
            Version,
            Utf8,
            Arguments,
            Invalid,
            Exists,
            Auth,
            Perm,
            NotFound,
            Limit,
            Unavailable,
            Internal,
            TooLarge,
            Unsupported,
            DiskFull,
            Timeout,
            Flood,
        ]
        .get(v as usize)
        .copied()
    }

    pub fn from_kind(kind: ErrorKind) -> Status {
        match kind {
            ErrorKind::InvalidArgument => Status::Invalid,
            ErrorKind::AlreadyExists => Status::Exists,
            ErrorKind::Unauthenticated => Status::Auth,
            ErrorKind::PermissionDenied => Status::Perm,
            ErrorKind::NotFound => Status::NotFound,
            ErrorKind::ResourceExhausted | ErrorKind::Overflow => Status::Limit,
            ErrorKind::DiskFull => Status::DiskFull,
            ErrorKind::Unavailable => Status::Unavailable,
            ErrorKind::Internal => Status::Internal,
        }
    }
}

/// Arguments per message in a push or a history reply.
pub const MESSAGE_ARGS: usize = 6;

/// A message as six arguments: id (u64), sent-at ms (i64), sender, recipient
/// (`@user` or `#room`), body, client_msg_id (may be empty).
pub fn message_args(m: &Message, out: &mut Vec<Bytes>) {
    out.push(arg::u64(m.id));
    out.push(arg::i64(m.sent_at_ms));
    out.push(arg::str(&m.from));
    out.push(Bytes::from(match &m.to {
        Target::User(user) => format!("@{user}"),
        Target::Room(room) => format!("#{room}"),
    }));
    out.push(arg::str(&m.body));
    out.push(arg::str(m.client_msg_id.as_deref().unwrap_or("")));
}

/// A MESSAGE push of `m`: the six message arguments, request id 0.
pub fn message_push(m: &Message) -> Frame {
    let mut args = Vec::with_capacity(MESSAGE_ARGS);
    message_args(m, &mut args);
    Frame {
        version: VERSION,
        opcode: op::PUSH_MESSAGE,
        request_id: 0,
        status: 0,
        args,
    }
}

/// Appends the MESSAGE push of `m` to `out`, the same bytes as
/// `message_push(m).encode(out)`, written straight from the message: a
/// server encodes one per message it delivers, and building a [`Frame`]
/// first costs an allocation per argument.
pub fn encode_message_push(m: &Message, out: &mut impl FrameBuf) {
    let (mark, name) = match &m.to {
        Target::User(user) => (b'@', user),
        Target::Room(room) => (b'#', room),
    };
    let client_id = m.client_msg_id.as_deref().unwrap_or("");
    let texts = m.from.len() + 1 + name.len() + m.body.len() + client_id.len();
    let head = Header {
        version: VERSION,
        opcode: op::PUSH_MESSAGE,
        request_id: 0,
        status: 0,
    };
    head.put(out, MESSAGE_ARGS as u16, MESSAGE_ARGS * 4 + 16 + texts);
    out.put_u32(8);
    out.put_u64(m.id);
    out.put_u32(8);
    out.put_i64(m.sent_at_ms);
    put_text(out, m.from.as_bytes());
    out.put_u32((1 + name.len()) as u32);
    out.put_u8(mark);
    out.put_slice(name.as_bytes());
    put_text(out, m.body.as_bytes());
    put_text(out, client_id.as_bytes());
}

fn put_text(out: &mut impl FrameBuf, text: &[u8]) {
    out.put_u32(text.len() as u32);
    out.put_slice(text);
}

/// Reads six arguments back into a message.
pub fn parse_message(args: &[Bytes]) -> Option<Message> {
    let [id, sent, from, to, body, client_id] = args else {
        return None;
    };
    let text = |b: &Bytes| std::str::from_utf8(b).ok().map(str::to_owned);
    let to = text(to)?;
    let to = if let Some(room) = to.strip_prefix('#') {
        Target::Room(room.into())
    } else {
        Target::User(to.strip_prefix('@')?.into())
    };
    let client_msg_id = text(client_id)?;
    Some(Message {
        id: arg::to_u64(id)?,
        sent_at_ms: arg::to_i64(sent)?,
        from: text(from)?,
        to,
        body: text(body)?,
        client_msg_id: (!client_msg_id.is_empty()).then_some(client_msg_id),
    })
}
