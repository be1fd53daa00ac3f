//! `moderation.rs`, every server on PostgreSQL.

#[path = "moderation.rs"]
mod suite;
