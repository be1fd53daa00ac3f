//! The vocabulary every layer shares: ids, stored messages and where they
//! go, the kinds of error, operators' acts, and the clock. A leaf: it imports nothing of meshtalk, so the core,
//! the stores, the doors and the mesh can all speak it without importing
//! one another.

mod error;
mod ids;
mod message;
mod moderation;

pub use error::ErrorKind;
pub use ids::{AccountId, RoomId, SessionId};
pub use message::{Message, Target};
pub use moderation::{Moderated, Moderation, ModerationRequest};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
