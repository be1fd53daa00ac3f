//! The binary protocol's vocabulary: opcodes, status codes, and the typed
//! requests and replies that servers and clients alike parse and encode.
//! `docs/wire-protocol.md` is the specification.
//!
//! - [`status`]: the status codes and which error kind each stands for.
//! - [`request`]: [`Request`], one variant per opcode, and why one is refused.
//! - [`reply`]: [`Reply`], what an ok reply carries per kind of request, and
//!   [`Rejection`], what an error reply or a BYE carries.
//! - [`message`]: a message as six arguments, and the MESSAGE push.

pub mod message;
pub mod reply;
pub mod request;
pub mod status;

pub use message::{MESSAGE_ARGS, encode_message_push, message_args, message_push, parse_message};
pub use reply::{OnlineUser, Rejection, Reply, ReplyError};
pub use request::{Dest, Request, RequestError};
pub use status::Status;

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
    pub const KICK: u8 = 0x25;
    pub const SUSPEND: u8 = 0x26;
    pub const RESTORE: u8 = 0x27;
    /// Server push: a delivered message (request id 0).
    pub const PUSH_MESSAGE: u8 = 0x80;
    /// Server push: the server is closing this connection, and why.
    pub const PUSH_BYE: u8 = 0x81;
}
