//! What travels through the core: stored messages and where they go.

/// Where a message is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Room(String),
}

/// A message as stored: it has its durable id, so every delivery of it, on
/// any protocol and however often repeated, carries the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub from: String,
    pub to: Target,
    pub body: String,
    pub sent_at_ms: i64,
    pub client_msg_id: Option<String>,
}

/// The answer to a send: the stored id, once the message is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub id: u64,
    pub sent_at_ms: i64,
    /// The send repeated an earlier `client_msg_id`; nothing new was stored.
    pub duplicate: bool,
}
