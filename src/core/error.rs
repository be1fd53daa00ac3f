//! The errors the core answers with. Each gateway maps a [`CoreError`] onto
//! its own protocol's form through [`CoreError::kind`], so the three doors
//! agree on what went wrong.

pub use crate::model::ErrorKind;
use crate::store::StoreError;

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
    /// The account may not log in: an operator suspended it.
    #[error("this account is suspended{0}")]
    Suspended(String),
    #[error("no such user: {}", clip(.0))]
    NoSuchUser(String),
    #[error("no such room: #{}", clip(.0))]
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

/// A name as a caller gave it, echoed in an error: no real name is longer
/// than 64 characters, and a caller's megabyte need not come back whole.
fn clip(name: &str) -> std::borrow::Cow<'_, str> {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &name[..end]).into(),
        None => name.into(),
    }
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
            CoreError::NotMember(_)
            | CoreError::NotOperator
            | CoreError::WrongPassword
            | CoreError::Suspended(_) => ErrorKind::PermissionDenied,
            CoreError::Limit(_) | CoreError::LoginDelay(_) => ErrorKind::ResourceExhausted,
            CoreError::Unreachable(_) => ErrorKind::Unavailable,
            CoreError::FromNode { kind, .. } => *kind,
            CoreError::Store(StoreError::Suspended) => ErrorKind::PermissionDenied,
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
    use super::*;

    #[test]
    fn names_echoed_in_errors_are_clipped() {
        assert_eq!(
            CoreError::NoSuchUser("dan".into()).to_string(),
            "no such user: dan"
        );
        let long = CoreError::NoSuchUser("x".repeat(60_000)).to_string();
        assert_eq!(long, format!("no such user: {}…", "x".repeat(64)));
        let room = CoreError::NoSuchRoom("é".repeat(100)).to_string();
        assert!(room.ends_with('…') && room.chars().count() == "no such room: #".len() + 65);
    }
}
