//! The `meshtalk` command as a person meets it: errors said once, in plain
//! words, with the next step where there is one; logs without terminal
//! codes in a pipe; a clean exit on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::TestServer;

fn meshtalk(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshtalk"));
    command
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("MESHTALK_PASSWORD")
        .stdin(Stdio::null());
    command
}

/// Runs it; its exit status and what it wrote to stderr.
fn fails(command: &mut Command) -> String {
    let out = command.output().expect("meshtalk runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    for noise in ["Caused by", "backtrace", "Backtrace", "panicked", "\x1b["] {
        assert!(!err.contains(noise), "{noise:?} in {err}");
    }
    assert_eq!(err.lines().count(), 1, "said once, on one line: {err}");
    err
}

fn serve_args(dir: &std::path::Path) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "--data-dir"].map(String::from).to_vec();
    args.push(dir.display().to_string());
    for door in ["--grpc-addr", "--talk-addr", "--wire-addr", "--http-addr"] {
        args.extend([door.to_owned(), "127.0.0.1:0".to_owned()]);
    }
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_login_is_said_once_with_a_hint_and_no_backtrace() {
    let t = TestServer::start().await;
    let server = t.url.clone();
    let err = tokio::task::spawn_blocking(move || {
        fails(
            meshtalk(&["chat", "nobody", "--server", &server]).env("MESHTALK_PASSWORD", "whatever"),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        err.trim_end(),
        "meshtalk: wrong name or password (a new account? add --register to create it)"
    );
}

#[test]
fn a_data_dir_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let err = fails(&mut meshtalk(
        &serve_args(&file)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    assert!(err.contains("is a file: name a directory"), "{err}");
}

#[test]
fn a_peer_without_a_port_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a secret of more than sixteen bytes").unwrap();
    let mut args = serve_args(&dir.path().join("data"));
    args.extend(["--peer", "localhost", "--mesh-secret-file"].map(String::from));
    args.push(secret.display().to_string());
    let err = fails(&mut meshtalk(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(
        err.contains("--peer localhost: give the peer's mesh address as HOST:PORT"),
        "{err}"
    );
}

#[test]
fn logs_in_a_pipe_carry_no_colour_and_ctrl_c_ends_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let args = serve_args(&dir.path().join("data"));
    let mut child = meshtalk(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = log
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("meshtalk is serving"))
        .expect("the server logs that it serves");
    assert!(!serving.contains('\x1b'), "{serving:?}");
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let rest: Vec<String> = log.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {rest:#?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:#?}");
}

#[test]
fn an_unknown_flag_points_at_help_and_guesses_nothing() {
    let out = meshtalk(&["serve", "--prot", "5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unexpected argument '--prot'"), "{err}");
    assert!(err.contains("--help"), "{err}");
    assert!(!err.contains("--operator"), "no unrelated guess: {err}");
}
