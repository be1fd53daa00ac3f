//! Compiles the gRPC contract with pure-Rust tooling, so building meshtalk
//! needs no `protoc` on the machine; gzips the web client's committed
//! bundle (`web/dist/`), so building it needs no Node either.

use std::io::Write;
use std::{env, fs, path::Path, path::PathBuf};

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
    gzip_web_client(Path::new("web/dist"), &out.join("web"))?;
    Ok(())
}

/// Writes `NAME.gz` into `into` for every file in `dist`: the server sends
/// these bytes to browsers that accept gzip, so it compresses nothing while
/// it runs.
fn gzip_web_client(dist: &Path, into: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={}", dist.display());
    fs::create_dir_all(into)?;
    for entry in fs::read_dir(dist)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&fs::read(&path)?)?;
        let name = path.file_name().ok_or("a file without a name")?;
        let mut gz_name = name.to_os_string();
        gz_name.push(".gz");
        fs::write(into.join(gz_name), gz.finish()?)?;
    }
    Ok(())
}
