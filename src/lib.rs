//! meshtalk: a chat server and client.
//!
//! One server process speaks several client protocols over one shared core and
//! keeps what users send in a durable store. The modules, lowest layer first;
//! each imports only those above it in this list (`tests/layers.rs` checks,
//! ARCHITECTURE.md says why):
//!
//! - [`model`]: the shared vocabulary: ids, stored messages, targets, kinds
//!   of error, the clock.
//! - [`metrics`]: the process's Prometheus metrics, counted from any layer.
//! - [`store`]: the [`store::Store`] trait and its embedded SQLite backend
//!   (group commit, numbered migrations). Knows nothing of the hub.
//! - [`core`]: the domain: accounts, sessions, rooms, delivery (the hub). No
//!   sockets, no SQL.
//! - [`codec`]: the line and binary protocols' messages, typed, and their
//!   bytes.
//! - [`mesh`]: links to other nodes: handshake, flooding with dedup,
//!   topology, routing and scatter-gather.
//! - [`config`]: command-line flags, environment and the TOML config file.
//! - [`gateway`]: one module per client protocol, each a thin translation
//!   onto the core: gRPC, the line protocol and the binary protocol.
//! - [`client`]: the client libraries (gRPC, line, binary) and the
//!   interactive chat.
//! - [`server`]: wires store, core, mesh and gateways together; signals and
//!   shutdown.
//! - [`bench`]: the load generator behind `meshtalk bench`.
//! - [`tls`], `accept`, [`proto`]: TLS settings and `meshtalk cert`; the
//!   accept loop every listener runs; the generated gRPC types.

mod accept;
pub mod bench;
pub mod client;
pub mod codec;
pub mod config;
pub mod core;
pub mod gateway;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod tls;

/// The generated gRPC types and services of `proto/meshtalk/v1/meshtalk.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("meshtalk.v1");

    /// The encoded descriptor set, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("meshtalk_descriptor");
}
