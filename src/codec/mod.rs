//! Wire formats shared by servers and clients: the line protocol and the
//! binary frame protocol. Pure functions over bytes; no sockets, so they are
//! property-tested and fuzzed on their own.

pub mod frame;
pub mod line;
pub mod wire;
