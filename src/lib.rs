//! meshtalk: a chat server and client.
//!
//! One server process speaks several client protocols over one shared core and
//! keeps what users send in a durable store.
//!
//! - [`model`]: the shared vocabulary — ids, stored messages, targets. A
//!   leaf every other module may use.
//! - [`core`]: the domain — accounts, sessions, rooms, delivery (the hub). No
//!   sockets, no SQL.
//! - [`store`]: the [`store::Store`] trait and its embedded SQLite backend,
//!   with group commit.
//! - [`gateway`]: one module per client protocol, each a thin translation
//!   onto the core: gRPC, the line protocol and the binary protocol.
//! - [`mesh`]: links to other nodes — handshake, flooding with dedup,
//!   topology, routing and scatter-gather.
//! - [`server`]: wires store, core and gateways together; signals and shutdown.
//! - [`client`]: the client libraries (gRPC, line, binary) and the interactive chat.
//! - [`codec`]: the line and binary wire formats, pure functions over bytes.
//! - [`bench`]: the load generator behind `meshtalk bench`.
//! - [`config`]: command-line flags, environment and the TOML config file.
//! - [`tls`]: TLS settings for servers and clients, and `meshtalk cert`.
//! - [`proto`]: the generated gRPC types.

mod accept;
pub mod bench;
pub mod client;
pub mod codec;
pub mod config;
pub mod core;
pub mod gateway;
pub mod mesh;
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
