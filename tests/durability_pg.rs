//! `durability.rs`, every server on PostgreSQL.

#[path = "durability.rs"]
mod suite;
