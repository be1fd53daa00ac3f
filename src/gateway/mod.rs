//! The doors onto the core: one module per client protocol, each a thin
//! translation between its wire form and [`crate::core::Core`] calls.
//!
//! API boundary: a gateway holds no chat state. Everything a user can see
//! lives in the core or the store, so every protocol sees the same world.

pub mod grpc;
pub mod listener;
pub mod request_clock;
mod seat;
pub mod talk;
pub mod wire;
