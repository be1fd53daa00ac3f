//! The status a reply or a BYE carries, and the error kind each stands for.

use crate::model::ErrorKind;

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
