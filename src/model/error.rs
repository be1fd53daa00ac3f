//! What kind of thing went wrong, as every door and the mesh tell it: each
//! protocol maps a kind onto its own form, so they all agree.

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
