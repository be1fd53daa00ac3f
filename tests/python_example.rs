//! `examples/python/chat.py` against a real server: a client generated
//! from the proto by `grpcio-tools`, in the language whose keywords the
//! proto's field names had to avoid.
//!
//! Its Python environment is `target/python-venv` (or `MESHTALK_PYTHON`):
//! `.ci/run` makes it, and this test makes it when it is missing, from
//! `examples/python/requirements.txt`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{PASSWORD, TestServer, next_message};
use meshtalk::client::chat::render_message;
use meshtalk::client::{Client, To};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Python with grpcio and grpcio-tools, made if missing.
fn python() -> PathBuf {
    if let Some(given) = std::env::var_os("MESHTALK_PYTHON") {
        return given.into();
    }
    let venv = root().join("target/python-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(root().join("examples/python/requirements.txt")));
    }
    python
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_talks_acks_and_reads_history() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let generated = tempfile::tempdir().unwrap();
    run(Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root().join("proto"))
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()))
        .arg(format!("--pyi_out={}", generated.path().display()))
        .arg(root().join("proto/meshtalk/v1/meshtalk.proto")));

    let t = TestServer::start().await;
    Client::connect(&t.url)
        .await
        .unwrap()
        .register("pyuser", PASSWORD)
        .await
        .unwrap();
    let rust = t.user("rustacean").await;
    rust.join("python").await.unwrap();
    rust.send(&To::User("pyuser".into()), "welcome, snake", None)
        .await
        .unwrap();
    let mut heard = rust.subscribe().await.unwrap();

    let server = t.url.trim_start_matches("http://").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new(&python)
            .arg(root().join("examples/python/chat.py"))
            .arg("--gen")
            .arg(generated.path())
            .args(["--server", &server, "--expect", "1", "pyuser", PASSWORD]))
    })
    .await
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(
        lines[..4],
        [
            "register: pyuser exists already",
            "login: pyuser",
            "join: #python",
            "message: rustacean: welcome, snake",
        ]
    );
    assert!(lines[4].starts_with("send: stored as "), "{out}");
    assert_eq!(lines[5], "history: #python pyuser: hello from Python");

    assert_eq!(
        render_message(&next_message(&mut heard).await),
        "#python pyuser: hello from Python"
    );
    // Acknowledged from Python: not delivered again.
    let (again, _) = Client::connect(&t.url)
        .await
        .unwrap()
        .login("pyuser", PASSWORD)
        .await
        .unwrap();
    let mut replay = again.subscribe().await.unwrap();
    common::assert_quiet(&mut replay).await;
}
