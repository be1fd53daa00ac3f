//! `meshtalk chat` as scripts and flaky networks meet it: commands piped
//! through stdin, and a server that goes away and comes back under a
//! running client.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{PASSWORD, TestServer, next_message};
use meshtalk::client::Client;
use meshtalk::client::chat::{ChatSession, Servers, render_message, show_incoming};
use meshtalk::config::ServeArgs;
use meshtalk::server::Server;
use tokio::io::AsyncWriteExt;

/// `meshtalk chat NAME ARGS…` with `script` on its stdin; its exit status,
/// stdout and stderr.
async fn chat(
    name: &str,
    args: &[&str],
    password: Option<&str>,
    script: &str,
) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshtalk"));
    command
        .arg("chat")
        .arg(name)
        .args(args)
        .env_remove("MESHTALK_PASSWORD")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(password) = password {
        command.env("MESHTALK_PASSWORD", password);
    }
    let mut child = command.spawn().expect("spawn meshtalk chat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let done = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the client ends at the end of its script")
        .unwrap();
    (
        done.status.success(),
        String::from_utf8(done.stdout).unwrap(),
        String::from_utf8(done.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_piped_through_the_chat_client_runs_line_by_line() {
    let t = TestServer::start().await;
    let bob = ChatSession::start(&t.url, "bob", PASSWORD, true)
        .await
        .unwrap();
    let mut bob_events = bob.client().subscribe().await.unwrap();
    // host:port, as people type it, is a server address too.
    let server = t.url.trim_start_matches("http://");
    let script = "/join ops\nhello ops\n/tell bob psst\n/who\n";
    let (ok, out, err) = chat(
        "alice",
        &["--server", server, "--register"],
        Some(PASSWORD),
        script,
    )
    .await;
    assert!(ok, "the client failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "* now in #ops",
            "-> @bob: psst",
            "* alice on test-node",
            "* bob on test-node"
        ],
        "{out}"
    );
    assert!(
        !out.contains('\x1b'),
        "no terminal codes in a pipe: {out:?}"
    );
    // Every send was answered before the client ended: bob has the DM.
    assert_eq!(
        render_message(&next_message(&mut bob_events).await),
        "@alice: psst"
    );
    let history = Client::connect(&t.url)
        .await
        .unwrap()
        .login("alice", PASSWORD)
        .await
        .unwrap()
        .0
        .recent(&meshtalk::client::To::Room("ops".into()), 10)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].body, "hello ops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_piped_client_without_a_password_says_how_to_give_one() {
    let t = TestServer::start().await;
    let (ok, out, err) = chat("alice", &["--server", &t.url], None, "/who\n").await;
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("set MESHTALK_PASSWORD"), "{err}");
}

/// A server with its gRPC door on `grpc`, on the store in `dir`.
async fn server_at(dir: &std::path::Path, grpc: &str) -> Server {
    let mut args = ServeArgs {
        grpc_addr: Some(grpc.to_owned()),
        node_name: Some("test-node".into()),
        send_rate: Some(0.0),
        ..ServeArgs::ephemeral(dir)
    };
    if common::on_postgres() {
        args.store = Some(common::postgres::url_for(dir));
    }
    Server::start(args.resolve().expect("settings"))
        .await
        .expect("server starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_says_once_that_it_lost_the_server_and_once_that_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    // A port of its own, free now, for both lives of the server.
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let url = format!("http://{grpc}");
    let server = server_at(dir.path(), &grpc).await;
    let servers = Servers::new(vec![url.clone()], None);
    let mut alice = ChatSession::start_on(servers.clone(), "alice", PASSWORD, true)
        .await
        .unwrap();
    let bob = ChatSession::start(&url, "bob", PASSWORD, true)
        .await
        .unwrap();
    let screen = common::screen::Screen::default();
    let receiving = tokio::spawn(show_incoming(bob.client().clone(), servers, screen.clone()));
    common::shown(&mut alice, "/tell bob before").await;
    screen.shows("@alice: before").await;

    server.shutdown().await;
    let lost = format!("* connection to {url} lost; reconnecting");
    screen.shows(&lost).await;
    // A line typed while the server is away is refused, plainly.
    assert_eq!(
        common::shown(&mut alice, "/tell bob while away").await,
        [format!(
            "! not sent: {url} is not answering; send it again once reconnected"
        )]
    );
    // Retrying with backoff, it says nothing more while the server is away.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let _server = server_at(dir.path(), &grpc).await;
    screen.shows(&format!("* reconnected to {url}")).await;
    assert_eq!(
        common::shown(&mut alice, "/tell bob after").await,
        ["-> @bob: after"]
    );
    screen.shows("@alice: after").await;
    let lines = screen.lines();
    assert_eq!(
        lines.iter().filter(|l| **l == lost).count(),
        1,
        "{lines:#?}"
    );
    let messages: Vec<&String> = lines.iter().filter(|l| l.starts_with('@')).collect();
    assert_eq!(messages, ["@alice: before", "@alice: after"], "{lines:#?}");
    receiving.abort();
}
