//! Compiles the gRPC contract with pure-Rust tooling, so building meshtalk
//! needs no `protoc` on the machine.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/meshtalk/v1/meshtalk.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    // Server reflection serves this descriptor set; compile_fds does not write it.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("meshtalk_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
