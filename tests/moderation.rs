//! Operators kick and suspend accounts, through every door and across the
//! mesh: the account's sessions end with a notice naming the operator and
//! the reason, a suspended account's log-ins are refused until it is
//! restored, and nobody else may do it.

mod common;

use std::time::Duration;

use common::{OPERATOR, PASSWORD, TestServer};
use meshtalk::client::wire::{WireClient, WireError};
use meshtalk::client::{Client, ClientError};
use meshtalk::codec::line::ServerLine;
use meshtalk::codec::wire::{Reply, Request, Status, op};
use meshtalk::config::ServeArgs;
use meshtalk::core::{MAX_REASON, Moderated, Moderation};
use tonic::Code;

/// The line a line-protocol connection gets as the server ends it, and
/// that the server then closes it.
async fn closing_line(c: &mut meshtalk::client::line::LineClient) -> ServerLine {
    let line = tokio::time::timeout(Duration::from_secs(10), c.next_delivery())
        .await
        .expect("a closing line in time")
        .expect("a closing line");
    let after = tokio::time::timeout(Duration::from_secs(10), c.read_line())
        .await
        .expect("the server closes in time");
    assert!(
        matches!(after, Ok(None)),
        "then the server closes: {after:?}"
    );
    line
}

fn rpc_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Code, String) {
    match result {
        Err(ClientError::Rpc(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected a status, got {other:?}"),
    }
}

fn wire_refusal<T: std::fmt::Debug>(result: Result<T, WireError>) -> (Option<Status>, String) {
    match result {
        Err(WireError::Rejected { status, text }) => (status, text),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_kick_ends_every_session_behind_every_door_with_the_reason() {
    let t = TestServer::start().await;
    let mut root = t.line_user(OPERATOR).await;
    let mut bob_line = t.line_user("bob").await;
    let bob_grpc = t.session("bob").await;
    let mut bob_events = bob_grpc.subscribe().await.unwrap();
    let bob_wire = WireClient::connect(t.server.wire_addr()).await.unwrap();
    bob_wire.login("bob", PASSWORD).await.unwrap();
    let mut carol = t.line_user("carol").await;

    let reply = root.request("/kick bob spamming #lobby").await.unwrap();
    assert_eq!(
        reply.end,
        ServerLine::Ok("kicked bob on test-node (3 sessions ended)".into())
    );

    let notice = "you were kicked by root: spamming #lobby";
    assert_eq!(
        closing_line(&mut bob_line).await,
        ServerLine::Err {
            code: "perm".into(),
            text: notice.into()
        }
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), bob_events.message())
        .await
        .expect("the stream ends in time");
    match ended {
        Err(status) => assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, notice)
        ),
        other => panic!("expected the stream to end with the notice, got {other:?}"),
    }
    let bye = tokio::time::timeout(Duration::from_secs(10), bob_wire.next_push())
        .await
        .expect("a BYE in time")
        .expect("a BYE");
    assert_eq!(bye.opcode, op::PUSH_BYE);
    assert_eq!(bye.status, Status::Perm as u8);
    assert_eq!(&bye.args[0][..], notice.as_bytes());

    // The tokens are dead; the account is not: bob may log in again.
    let (code, _) = rpc_code(bob_grpc.rooms().await);
    assert_eq!(code, Code::Unauthenticated);
    let again = t.client().await.login("bob", PASSWORD).await;
    assert!(again.is_ok(), "a kicked account logs in again: {again:?}");

    // Nobody else was touched.
    assert!(carol.request("/rooms").await.unwrap().is_ok());
}

#[tokio::test]
async fn a_suspended_account_is_refused_at_every_door_until_restored() {
    let t = TestServer::start().await;
    let root = t.user(OPERATOR).await;
    let mut bob = t.line_user("bob").await;

    let done = root
        .moderate(Moderation::Suspend, "bob".into(), "flooding".into())
        .await
        .unwrap();
    assert_eq!(
        done,
        Moderated {
            name: "bob".into(),
            node: "test-node".into(),
            sessions_ended: 1,
            changed: true,
        }
    );
    let notice = "your account was suspended by root: flooding";
    assert_eq!(
        closing_line(&mut bob).await,
        ServerLine::Err {
            code: "perm".into(),
            text: notice.into()
        }
    );

    let refusal = "this account is suspended by root: flooding";
    let mut line = meshtalk::client::line::LineClient::connect(t.server.talk_addr())
        .await
        .unwrap();
    let reply = line
        .request(&format!("/login bob {PASSWORD}"))
        .await
        .unwrap();
    assert_eq!(
        reply.end,
        ServerLine::Err {
            code: "perm".into(),
            text: refusal.into()
        }
    );
    // Only the password's holder learns of the suspension.
    let reply = line.request("/login bob not-the-password").await.unwrap();
    assert_eq!(reply.error_code(), Some("auth"), "{reply:?}");
    let (code, message) = rpc_code(t.client().await.login("bob", PASSWORD).await);
    assert_eq!((code, message.as_str()), (Code::PermissionDenied, refusal));
    let wire = WireClient::connect(t.server.wire_addr()).await.unwrap();
    assert_eq!(
        wire_refusal(wire.login("bob", PASSWORD).await),
        (Some(Status::Perm), refusal.to_owned())
    );

    // Restored over the binary protocol by the operator's own session there.
    let root_wire = WireClient::connect(t.server.wire_addr()).await.unwrap();
    root_wire.login(OPERATOR, PASSWORD).await.unwrap();
    let restore = Request::Moderate {
        action: Moderation::Restore,
        name: "BOB",
        reason: "",
    };
    let Reply::Moderated(done) = root_wire.request(&restore).await.unwrap() else {
        panic!("a moderation reply")
    };
    assert_eq!((done.name.as_str(), done.changed), ("bob", true));
    let Reply::Moderated(again) = root_wire.request(&restore).await.unwrap() else {
        panic!("a moderation reply")
    };
    assert!(!again.changed, "nothing left to lift");
    assert!(
        line.request(&format!("/login bob {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );

    // Admin.Kick over gRPC ends the line session just opened.
    let kicked = root
        .moderate(Moderation::Kick, "bob".into(), "one more time".into())
        .await
        .unwrap();
    assert_eq!((kicked.sessions_ended, kicked.changed), (1, true));
    assert_eq!(
        closing_line(&mut line).await,
        ServerLine::Err {
            code: "perm".into(),
            text: "you were kicked by root: one more time".into()
        }
    );
}

/// A server on `dir`, kept there across restarts.
async fn server_on(dir: &std::path::Path) -> (meshtalk::server::Server, String) {
    let mut args = ServeArgs {
        node_name: Some("test-node".into()),
        registrations_per_ip: Some(0),
        ..ServeArgs::ephemeral(dir)
    };
    if common::on_postgres() {
        args.store = Some(common::postgres::url_for(dir));
    }
    let server = meshtalk::server::Server::start(args.resolve().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", server.grpc_addr());
    (server, url)
}

#[tokio::test]
async fn a_suspension_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first, url) = server_on(dir.path()).await;
    let client = Client::connect(&url).await.unwrap();
    client.register(OPERATOR, PASSWORD).await.unwrap();
    client.register("bob", PASSWORD).await.unwrap();
    first.core().grant_operator(OPERATOR).await.unwrap();
    let (root, _) = client.login(OPERATOR, PASSWORD).await.unwrap();
    root.moderate(Moderation::Suspend, "bob".into(), String::new())
        .await
        .unwrap();
    first.shutdown().await;

    let (_second, url) = server_on(dir.path()).await;
    let (code, message) = rpc_code(
        Client::connect(&url)
            .await
            .unwrap()
            .login("bob", PASSWORD)
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (Code::PermissionDenied, "this account is suspended by root")
    );
}

#[tokio::test]
async fn only_operators_moderate_and_bad_requests_get_clear_errors() {
    let t = TestServer::start().await;
    let mut root = t.line_user(OPERATOR).await;
    let mut bob = t.line_user("bob").await;

    let refused = bob.request("/kick root").await.unwrap();
    assert_eq!(refused.error_code(), Some("perm"), "{refused:?}");
    let (code, _) = rpc_code(
        t.session("bob")
            .await
            .moderate(Moderation::Suspend, "root".into(), String::new())
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    let bob_wire = WireClient::connect(t.server.wire_addr()).await.unwrap();
    bob_wire.login("bob", PASSWORD).await.unwrap();
    let kick_root = Request::Moderate {
        action: Moderation::Kick,
        name: "root",
        reason: "",
    };
    assert_eq!(
        wire_refusal(bob_wire.request(&kick_root).await).0,
        Some(Status::Perm)
    );

    for (line, code, text) in [
        ("/kick nobody", "not-found", "no such user: nobody"),
        ("/kick", "usage", "/kick NAME [REASON]"),
        ("/restore bob now", "usage", "/restore NAME"),
        (
            "/suspend root",
            "invalid",
            "name: you cannot suspend yourself",
        ),
    ] {
        let reply = root.request(line).await.unwrap();
        assert_eq!(
            reply.end,
            ServerLine::Err {
                code: code.into(),
                text: text.into()
            },
            "{line}"
        );
    }
    let long = format!("/kick bob {}", "x".repeat(MAX_REASON + 1));
    assert_eq!(
        root.request(&long).await.unwrap().error_code(),
        Some("invalid")
    );

    // A reason cannot smuggle a forged line into the victim's stream.
    let root_wire = WireClient::connect(t.server.wire_addr()).await.unwrap();
    root_wire.login(OPERATOR, PASSWORD).await.unwrap();
    let forged = Request::Moderate {
        action: Moderation::Kick,
        name: "bob",
        reason: "bye\r\n+OK forged",
    };
    assert_eq!(
        wire_refusal(root_wire.request(&forged).await).0,
        Some(Status::Invalid)
    );
    // A KICK frame missing its reason is answered, and the connection goes on.
    let short = root_wire
        .call(op::KICK, vec![bytes::Bytes::from_static(b"bob")])
        .await;
    assert_eq!(wire_refusal(short).0, Some(Status::Arguments));

    // After all that, bob is still here and still heard.
    assert!(bob.request("/rooms").await.unwrap().is_ok());
    assert!(root_wire.request(&Request::Rooms).await.is_ok());
}

#[tokio::test]
async fn the_chat_client_ends_with_the_notice_when_kicked() {
    let t = TestServer::start().await;
    let mut root = t.line_user(OPERATOR).await;
    drop(t.user("bob").await);
    let mut chat = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshtalk"))
        .args(["chat", "bob", "--server", &t.url])
        .env("MESHTALK_PASSWORD", PASSWORD)
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The client is in once bob is online.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !root
        .request("/who")
        .await
        .unwrap()
        .lines
        .iter()
        .any(|l| l.contains("bob"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never came online"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(root.request("/kick bob be nice").await.unwrap().is_ok());
    // stdin stays open: the client ends because it was kicked, not at EOF.
    let stdin = chat.stdin.take();
    let out = tokio::time::timeout(Duration::from_secs(15), chat.wait_with_output())
        .await
        .expect("the client ends")
        .unwrap();
    drop(stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("you were kicked by root: be nice"),
        "{stderr}"
    );
}

/// Two nodes on stores of their own, linked.
async fn two_nodes() -> (TestServer, TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a shared secret of the test mesh").unwrap();
    let start = |name: &str, peer: Option<std::net::SocketAddr>| ServeArgs {
        node_name: Some(name.to_owned()),
        mesh_addr: Some("127.0.0.1:0".into()),
        mesh_secret_file: Some(secret.clone()),
        peer: peer.into_iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let a = TestServer::start_with(start("a", None)).await;
    let b = TestServer::start_with(start("b", a.server.mesh_addr())).await;
    a.linked(1).await;
    b.linked(1).await;
    (a, b, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_on_one_node_suspends_an_account_homed_on_another() {
    let (a, b, _dir) = two_nodes().await;
    let mut root = a.line_user(OPERATOR).await;
    let mut bob = b.line_user("bob").await;
    // a learns of bob from b.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = root.request("/users bob").await.unwrap();
        if reply.lines.iter().any(|l| l.contains("bob")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never heard of bob"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let reply = root.request("/suspend bob flooding").await.unwrap();
    assert_eq!(
        reply.end,
        ServerLine::Ok("suspended bob on b (1 session ended)".into())
    );
    assert_eq!(
        closing_line(&mut bob).await,
        ServerLine::Err {
            code: "perm".into(),
            text: "your account was suspended by root: flooding".into()
        }
    );
    let on_b = Client::connect(&b.url).await.unwrap();
    let (code, _) = rpc_code(on_b.login("bob", PASSWORD).await);
    assert_eq!(code, Code::PermissionDenied);

    let reply = root.request("/kick bob@nowhere").await.unwrap();
    assert_eq!(reply.error_code(), Some("not-found"), "{reply:?}");

    let reply = root.request("/restore bob").await.unwrap();
    assert_eq!(reply.end, ServerLine::Ok("restored bob on b".into()));
    assert!(on_b.login("bob", PASSWORD).await.is_ok());
}
