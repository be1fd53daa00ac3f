//! `retention.rs`, every server on PostgreSQL.

#[path = "retention.rs"]
mod suite;
