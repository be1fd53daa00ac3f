//! The store's row ids, one type each, so an account id can never be passed
//! where a room or a session is meant.

use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// An account, as the store numbers it.
    AccountId
);
id!(
    /// A room, as the store numbers it.
    RoomId
);
id!(
    /// A logged-in session, as the store numbers it.
    SessionId
);
