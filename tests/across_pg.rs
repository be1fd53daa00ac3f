//! `across.rs`, every server on PostgreSQL.

#[path = "across.rs"]
mod suite;
