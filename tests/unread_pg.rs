//! `unread.rs`, every server on PostgreSQL.

#[path = "unread.rs"]
mod suite;
