//! The server on an open network: password guessing slowed per account and
//! per address, checks in a bounded queue; operator rights held by accounts,
//! not names; a disk reserve and a full disk said as such; one server per
//! data dir.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{PASSWORD, TestServer, line_from};
use meshtalk::client::line::{LineClient, Reply};
use meshtalk::client::wire::WireClient;
use meshtalk::client::{ClientError, To};
use meshtalk::codec::line::ServerLine;
use meshtalk::codec::wire::{Status, op};
use meshtalk::config::ServeArgs;
use meshtalk::core::{Core, CoreConfig, Limits};
use meshtalk::gateway::listener::{Deadlines, Door, Gate, Shutdown, accept_loop};
use meshtalk::gateway::talk;
use meshtalk::proto;
use meshtalk::server::Server;
use meshtalk::store::SqliteStore;
use tokio::net::TcpListener;
use tonic::Code;

fn err(reply: &Reply) -> (&str, &str) {
    match &reply.end {
        ServerLine::Err { code, text } => (code, text),
        other => panic!("expected -ERR, got {other:?}"),
    }
}

async fn register(server: SocketAddr, from: &str, name: &str) {
    let mut c = line_from(server, from).await;
    let reply = c
        .request(&format!("/register {name} {PASSWORD}"))
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
}

#[tokio::test]
async fn failed_logins_make_the_account_wait_while_others_log_in() {
    let t = TestServer::start().await;
    let talk = t.server.talk_addr();
    register(talk, "127.0.0.5", "victim").await;
    register(talk, "127.0.0.5", "bob").await;

    let mut attacker = line_from(talk, "127.0.0.1").await;
    for guess in 0..4 {
        let reply = attacker
            .request(&format!("/login victim guess{guess}"))
            .await
            .unwrap();
        assert_eq!(err(&reply).0, "auth", "the first guesses are checked");
    }
    // Past the free failures, even the right password is refused unchecked
    // (a check of it would succeed), after a short pause.
    let started = Instant::now();
    let reply = attacker
        .request(&format!("/login victim {PASSWORD}"))
        .await
        .unwrap();
    assert_eq!(
        err(&reply),
        ("limit", "too many failed log-ins; try again in 1 s")
    );
    assert!(
        started.elapsed() >= meshtalk::core::REFUSAL_PAUSE,
        "a refusal during a delay is paused"
    );
    // The same over gRPC and the binary protocol.
    let grpc = t.client().await.login("victim", PASSWORD).await;
    match grpc {
        Err(ClientError::Rpc(status)) => {
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(
                status
                    .message()
                    .starts_with("too many failed log-ins; try again in")
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let wire = WireClient::connect(t.server.wire_addr()).await.unwrap();
    assert_eq!(
        wire.login("victim", PASSWORD).await.unwrap_err().status(),
        Some(Status::Limit)
    );

    // Another account, from another address, logs in meanwhile.
    let mut bob = line_from(talk, "127.0.0.2").await;
    assert!(
        bob.request(&format!("/login bob {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );

    // Once the delay has passed, the right password works, and a success
    // starts the account's count over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut owner = line_from(talk, "127.0.0.3").await;
    let reply = owner
        .request(&format!("/login victim {PASSWORD}"))
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let reply = attacker.request("/login victim again").await.unwrap();
    assert_eq!(err(&reply).0, "auth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_guessing_connections_get_a_handful_of_checks() {
    let t = TestServer::start().await;
    let talk = t.server.talk_addr();
    register(talk, "127.0.0.5", "victim").await;
    register(talk, "127.0.0.5", "alice").await;
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let mut attackers = vec![];
    for a in 0..50 {
        let (stop, checked) = (stop.clone(), checked.clone());
        attackers.push(tokio::spawn(async move {
            let mut c = line_from(talk, "127.0.0.1").await;
            let mut guess = 0;
            while !stop.load(Ordering::Relaxed) {
                guess += 1;
                let reply = c
                    .request(&format!("/login victim g{a}-{guess}"))
                    .await
                    .unwrap();
                let (code, text) = err(&reply);
                match code {
                    "auth" => {
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                    "limit" => assert!(text.starts_with("too many failed log-ins"), "{text}"),
                    _ => panic!("{reply:?}"),
                }
            }
        }));
    }
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let mut c = line_from(talk, "127.0.0.2").await;
        let asked = Instant::now();
        let reply = c
            .request(&format!("/login alice {PASSWORD}"))
            .await
            .unwrap();
        slowest = slowest.max(asked.elapsed());
        assert!(reply.is_ok(), "{reply:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.await.unwrap();
    }
    // 3 free failures, then waits of 1 s and 2 s: in 3 s a few more, plus
    // the two that may be checked at once.
    let checked = checked.load(Ordering::Relaxed);
    assert!(checked <= 8, "{checked} guesses checked in 3 s");
    assert!(slowest < Duration::from_secs(2), "a login took {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_check_queue_a_login_is_told_the_server_is_busy() {
    let t = TestServer::start().await;
    let talk = t.server.talk_addr();
    // Many names from many addresses: nothing makes them wait their turn.
    let mut clients = vec![];
    for i in 0..200u32 {
        clients.push(line_from(talk, &format!("127.0.{}.{}", 2 + i / 200, 1 + i % 200)).await);
    }
    let tries = clients.into_iter().enumerate().map(|(i, mut c)| {
        tokio::spawn(async move { c.request(&format!("/login nobody{i} x")).await.unwrap() })
    });
    let mut busy = 0;
    for reply in futures::future::join_all(tries).await {
        let reply = reply.unwrap();
        match err(&reply) {
            ("auth", _) => {}
            ("limit", "server busy; try again") => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(busy > 0, "200 checks at once overflow the queue");
}

#[tokio::test]
async fn one_address_makes_only_so_many_accounts_at_once() {
    let t = TestServer::start_with(ServeArgs {
        registrations_per_ip: Some(meshtalk::core::throttle::FREE_REGISTRATIONS),
        ..Default::default()
    })
    .await;
    let talk = t.server.talk_addr();
    let mut c = line_from(talk, "127.0.0.9").await;
    for i in 0..meshtalk::core::throttle::FREE_REGISTRATIONS + 1 {
        let reply = c
            .request(&format!("/register user{i} {PASSWORD}"))
            .await
            .unwrap();
        assert!(reply.is_ok(), "{reply:?}");
    }
    let reply = c
        .request(&format!("/register one-more {PASSWORD}"))
        .await
        .unwrap();
    let (code, text) = err(&reply);
    assert_eq!(code, "limit");
    assert!(text.starts_with("too many registrations from your address; try again in"));
    // Another address is not held up.
    register(talk, "127.0.0.10", "elsewhere").await;
}

/// `/peers` succeeds only for operators.
async fn is_operator_on_line(c: &mut LineClient) -> bool {
    let reply = c.request("/peers").await.unwrap();
    match reply.error_code() {
        None => true,
        Some("perm") => false,
        Some(other) => panic!("{other}: {reply:?}"),
    }
}

#[tokio::test]
async fn a_configured_operator_name_without_an_account_grants_nothing() {
    let t = TestServer::start_with(ServeArgs {
        operator: vec!["admin".into()],
        ..Default::default()
    })
    .await;
    let mut c = LineClient::connect(t.server.talk_addr()).await.unwrap();
    assert!(
        c.request(&format!("/register ADMIN {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        c.request(&format!("/login admin {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );
    assert!(!is_operator_on_line(&mut c).await);
}

#[tokio::test]
async fn a_granted_operator_is_one_everywhere_and_its_name_reregistered_is_not() {
    let t = TestServer::start().await;
    let grpc = t.user("chief").await;
    t.server.core().grant_operator("Chief").await.unwrap();

    let mut line = LineClient::connect(t.server.talk_addr()).await.unwrap();
    assert!(
        line.request(&format!("/login chief {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );
    assert!(is_operator_on_line(&mut line).await);
    let wire = WireClient::connect(t.server.wire_addr()).await.unwrap();
    wire.login("chief", PASSWORD).await.unwrap();
    wire.call(op::PEERS, vec![]).await.unwrap();
    grpc.admin()
        .peers(grpc.request(proto::PeersRequest {}))
        .await
        .unwrap();

    // Deleted and registered again, the name is a stranger's.
    assert!(
        line.request(&format!("/delete-account {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );
    let again = t.user("chief").await;
    let refused = again
        .admin()
        .peers(again.request(proto::PeersRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let wire = WireClient::connect(t.server.wire_addr()).await.unwrap();
    wire.login("chief", PASSWORD).await.unwrap();
    assert_eq!(
        wire.call(op::PEERS, vec![]).await.unwrap_err().status(),
        Some(Status::Perm)
    );
}

fn settings(dir: &std::path::Path, args: ServeArgs) -> meshtalk::config::Settings {
    let ephemeral = ServeArgs::ephemeral(dir);
    ServeArgs {
        data_dir: ephemeral.data_dir,
        grpc_addr: ephemeral.grpc_addr,
        talk_addr: ephemeral.talk_addr,
        wire_addr: ephemeral.wire_addr,
        http_addr: ephemeral.http_addr,
        node_name: Some("test-node".into()),
        send_rate: Some(0.0),
        ..args
    }
    .resolve()
    .expect("settings")
}

#[tokio::test]
async fn one_server_per_data_dir_and_operators_named_at_start_need_an_account() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(settings(&data, ServeArgs::default()))
        .await
        .unwrap();
    let refused = Server::start(settings(&data, ServeArgs::default()))
        .await
        .err()
        .expect("a second server on the same data dir is refused");
    assert_eq!(
        refused.to_string(),
        format!(
            "cannot open the store: the data dir {} is in use by process {} (meshtalk.lock); stop it first",
            data.display(),
            std::process::id()
        )
    );
    // The offline grant refuses too while the server runs.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_meshtalk"))
        .args(["operator", "boss", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!cli.status.success());
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("in use by process"),
        "{cli:?}"
    );
    register(first.talk_addr(), "127.0.0.1", "boss").await;
    register(first.talk_addr(), "127.0.0.1", "deputy").await;
    first.shutdown().await;

    // Stopped: the offline grant works, and `--operator` finds an account now.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_meshtalk"))
        .args(["operator", "deputy", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(cli.status.success(), "{cli:?}");
    let second = Server::start(settings(
        &data,
        ServeArgs {
            operator: vec!["boss".into()],
            ..Default::default()
        },
    ))
    .await
    .expect("free again once the first has stopped");
    for name in ["boss", "deputy"] {
        let mut c = LineClient::connect(second.talk_addr()).await.unwrap();
        assert!(
            c.request(&format!("/login {name} {PASSWORD}"))
                .await
                .unwrap()
                .is_ok()
        );
        assert!(is_operator_on_line(&mut c).await, "{name}");
    }
    second.shutdown().await;
}

#[tokio::test]
async fn a_nearly_full_disk_refuses_new_messages_while_logins_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(settings(&data, ServeArgs::default()))
        .await
        .unwrap();
    let alice = WireClient::connect(server.wire_addr()).await.unwrap();
    alice.register("alice", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let bob = WireClient::connect(server.wire_addr()).await.unwrap();
    bob.register("bob", PASSWORD).await.unwrap();
    alice.send_dm("bob", "before", "").await.unwrap();
    server.shutdown().await;

    // A reserve larger than any disk: the server believes it nearly full.
    let server = Server::start(settings(
        &data,
        ServeArgs {
            min_free_disk: Some(u64::MAX),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    const NEARLY_FULL: &str = "disk nearly full: new messages are refused until space is freed";
    let wire = WireClient::connect(server.wire_addr()).await.unwrap();
    wire.login("alice", PASSWORD).await.unwrap();
    let refused = wire.send_dm("bob", "after", "").await.unwrap_err();
    assert_eq!(refused.status(), Some(Status::DiskFull));
    assert!(refused.to_string().starts_with(NEARLY_FULL), "{refused}");
    let history = wire.history(false, "bob", 10).await.unwrap();
    assert_eq!(
        history.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["before"]
    );

    let mut line = LineClient::connect(server.talk_addr()).await.unwrap();
    assert!(
        line.request(&format!("/login bob {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        err(&line.request("/tell alice hi").await.unwrap()),
        ("full", NEARLY_FULL)
    );
    line.send_line("speech in the lobby").await.unwrap();
    assert_eq!(
        err(&line.read_reply().await.unwrap()),
        ("full", NEARLY_FULL)
    );

    let grpc = meshtalk::client::Client::connect(&format!("http://{}", server.grpc_addr()))
        .await
        .unwrap();
    let (grpc, _) = grpc.login("alice", PASSWORD).await.unwrap();
    match grpc.send(&To::Room("lobby".into()), "hello", None).await {
        Err(ClientError::Rpc(status)) => {
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert_eq!(status.message(), NEARLY_FULL);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_full_disk_reaches_the_user_as_disk_full_and_the_server_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("meshtalk.db")).unwrap());
    let core = Core::open(
        store.clone(),
        CoreConfig {
            node: "test-node".into(),
            operators: vec![],
            limits: Limits::default(),
        },
    )
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, shutdown) = Shutdown::new();
    let (draining, _drained) = tokio::sync::mpsc::channel(1);
    let bounds = ServeArgs::default().resolve().unwrap().bounds;
    let door = Door {
        kind: meshtalk::metrics::Door::Line,
        gate: Gate::new(&bounds),
        tls: None,
        handshake_timeout: bounds.read_timeout,
    };
    let deadlines = Deadlines::new(&bounds);
    let serving = core.clone();
    tokio::spawn(accept_loop(
        listener,
        door,
        shutdown,
        draining,
        move |accepted, shutdown| {
            talk::serve_connection(serving.clone(), accepted, deadlines, shutdown)
        },
        talk::refuse,
    ));
    let mut alice = LineClient::connect(addr).await.unwrap();
    for c in [
        format!("/register alice {PASSWORD}"),
        format!("/register bob {PASSWORD}"),
        format!("/login alice {PASSWORD}"),
    ] {
        assert!(alice.request(&c).await.unwrap().is_ok(), "{c}");
    }
    // SQLite answers SQLITE_FULL once the file would grow past its size now.
    store.limit_pages(1).await.unwrap();
    let body = "x".repeat(4000);
    let mut full = None;
    for _ in 0..200 {
        let reply = alice.request(&format!("/tell bob {body}")).await.unwrap();
        if !reply.is_ok() {
            full = Some(reply);
            break;
        }
    }
    let full = full.expect("the database filled up");
    assert_eq!(
        err(&full),
        (
            "full",
            "disk full: the server could not store this; try again later"
        )
    );
    // Reads, and the connection, go on.
    let reply = alice.request("/rooms").await.unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let mut bob = LineClient::connect(addr).await.unwrap();
    let reply = bob.request("/help").await.unwrap();
    assert!(reply.is_ok(), "{reply:?}");
}

#[tokio::test]
async fn guesses_at_the_password_to_delete_an_account_are_throttled_too() {
    let t = TestServer::start().await;
    let mut holder = t.line_user("stolen").await;
    for guess in 0..4 {
        let reply = holder
            .request(&format!("/delete-account guess{guess}"))
            .await
            .unwrap();
        assert_eq!(err(&reply).0, "perm", "the first guesses are checked");
    }
    // Past the free failures, even the right password does not delete it.
    let reply = holder
        .request(&format!("/delete-account {PASSWORD}"))
        .await
        .unwrap();
    assert_eq!(err(&reply).0, "limit", "{reply:?}");
    assert!(holder.request("/who").await.unwrap().is_ok());
}
