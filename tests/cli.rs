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
    assert_eq!(err.matches("meshtalk: ").count(), 1, "said once: {err}");
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

/// The example config with every `# key = value` uncommented, but for keys
/// that name files this test does not have.
fn example_uncommented() -> String {
    let example = include_str!("../meshtalk.example.toml");
    let needs_files = ["tls-cert", "tls-key", "mesh-secret-file", "peer ="];
    example
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(setting)
                if setting.contains(" = ")
                    && setting.starts_with(|c: char| c.is_ascii_lowercase())
                    && !needs_files.iter().any(|k| setting.starts_with(k)) =>
            {
                setting.to_owned()
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_config_names_every_flag_and_checks_clean() {
    let help = meshtalk(&["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let example = include_str!("../meshtalk.example.toml");
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !["config", "check-config", "help"].contains(w))
        .collect();
    assert!(flags.len() > 20, "{help}");
    for flag in flags {
        assert!(
            example.contains(&format!("# {flag} = ")),
            "meshtalk.example.toml lacks {flag}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshtalk.toml");
    std::fs::write(&file, example_uncommented()).unwrap();
    let out = meshtalk(&["serve", "--check-config", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("config OK: node chat1"), "{said}");
    assert!(said.contains("HTTP 127.0.0.1:8080"), "{said}");
    assert!(
        !dir.path().join("meshtalk-data").exists(),
        "a check opens nothing"
    );
}

#[test]
fn a_config_check_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(
        meshtalk(&[
            "serve",
            "--check-config",
            "--tls-cert",
            "nope.pem",
            "--tls-key",
            "nope.pem",
        ])
        .current_dir(dir.path()),
    );
    assert!(err.contains("nope.pem"), "{err}");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "grpc-adr = \"127.0.0.1:1\"\n").unwrap();
    let err = fails(meshtalk(&["serve", "--check-config", "--config"]).arg(&file));
    assert!(err.contains("grpc-adr"), "{err}");
}
