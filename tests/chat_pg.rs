//! `chat.rs`, every server on PostgreSQL.

#[path = "chat.rs"]
mod suite;
