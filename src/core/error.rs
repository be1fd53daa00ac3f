//! The errors the core answers with. Each gateway maps a [`CoreError`] onto
//! its own protocol's form through [`CoreError::kind`], so the three doors
//! agree on what went wrong.

use crate::store::StoreError;

/// The broad class of an error: what a client can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    ResourceExhausted,
    /// The server's disk is (nearly) full: new messages are refused, while
    /// logins and reads go on.
    DiskFull,
    Unavailable,
    /// A live stream fell a whole queue behind and was cut off.
    Overflow,
    Internal,
}

impl ErrorKind {
    /// Every kind, for tables that must cover them all.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidArgument,
        ErrorKind::AlreadyExists,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::ResourceExhausted,
        ErrorKind::DiskFull,
        ErrorKind::Unavailable,
        ErrorKind::Overflow,
        ErrorKind::Internal,
    ];

    /// The kind's one textual code: the line protocol's `-ERR` code and the
    /// mesh's error code spell it this way.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid",
            ErrorKind::AlreadyExists => "exists",
            ErrorKind::Unauthenticated => "auth",
            ErrorKind::PermissionDenied => "perm",
            ErrorKind::NotFound => "not-found",
            ErrorKind::ResourceExhausted => "limit",
            ErrorKind::DiskFull => "full",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Overflow => "overflow",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind a textual code names; an unknown code is an internal error.
    pub fn from_code(code: &str) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.code() == code)
            .unwrap_or(ErrorKind::Internal)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("the name {0:?} is already taken")]
    NameTaken(String),
    #[error("wrong name or password")]
    BadCredentials,
    /// Log-ins for this account or from this address wait this many seconds.
    #[error("too many failed log-ins; try again in {0} s")]
    LoginDelay(u64),
    /// The session is fine but the password it was asked for is not.
    #[error("wrong password")]
    WrongPassword,
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("no such room: #{0}")]
    NoSuchRoom(String),
    #[error("you are not in #{0}: join it first")]
    NotMember(String),
    #[error("only operators may do that")]
    NotOperator,
    #[error("{0}")]
    Limit(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Another node is needed and cannot be reached, or did not answer.
    #[error("{0}")]
    Unreachable(String),
    /// Another node refused a request it was handed.
    #[error("node {node}: {message}")]
    FromNode {
        node: String,
        kind: ErrorKind,
        message: String,
    },
    /// Said as it is: a full disk is news to the user, not an internal fault.
    #[error("{0}")]
    Disk(StoreError),
    #[error("storage failure: {0}")]
    Store(StoreError),
}

impl CoreError {
    pub fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        CoreError::Invalid {
            what,
            why: why.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            CoreError::Invalid { .. } => ErrorKind::InvalidArgument,
            CoreError::NameTaken(_) => ErrorKind::AlreadyExists,
            CoreError::BadCredentials | CoreError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            CoreError::NoSuchUser(_) | CoreError::NoSuchRoom(_) => ErrorKind::NotFound,
            CoreError::NotMember(_) | CoreError::NotOperator | CoreError::WrongPassword => {
                ErrorKind::PermissionDenied
            }
            CoreError::Limit(_) | CoreError::LoginDelay(_) => ErrorKind::ResourceExhausted,
            CoreError::Unreachable(_) => ErrorKind::Unavailable,
            CoreError::FromNode { kind, .. } => *kind,
            CoreError::ShuttingDown | CoreError::Store(StoreError::Closed) => {
                ErrorKind::Unavailable
            }
            CoreError::Disk(_) => ErrorKind::DiskFull,
            CoreError::Store(_) => ErrorKind::Internal,
        }
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NearlyFull | StoreError::DiskFull => CoreError::Disk(e),
            e => CoreError::Store(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn every_code_names_its_own_kind() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
        assert_eq!(ErrorKind::from_code("no-such-code"), ErrorKind::Internal);
    }
}
