//! A message as stored and where it is addressed.

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
