//! Nodes on one PostgreSQL database serve any account: the chat client
//! given several servers goes on at the next when the one in use stops,
//! as the same session, with nothing lost and nothing sent twice.

mod common;

use common::{PASSWORD, TestServer, log_in_at, next_message, shown};
use meshtalk::client::chat::{ChatSession, Servers, render_message};
use meshtalk::client::{Client, ClientError, To};
use meshtalk::config::ServeArgs;
use meshtalk::core::Moderation;
use tonic::Code;

/// A node on `store`, linked as a mesh to the node at `peer`, if any:
/// nodes that share a store carry live traffic to one another.
async fn node(
    store: &str,
    name: &str,
    secret: &std::path::Path,
    peer: Option<std::net::SocketAddr>,
) -> TestServer {
    TestServer::start_with(ServeArgs {
        store: Some(store.to_owned()),
        node_name: Some(name.to_owned()),
        mesh_addr: Some("127.0.0.1:0".into()),
        mesh_secret_file: Some(secret.to_owned()),
        peer: peer.into_iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    })
    .await
}

/// Nodes `a` and `b` on one fresh database, linked; the temp dir holds the
/// mesh secret.
/// Registers NAME through the node at `url`.
async fn register(url: &str, name: &str) {
    Client::connect(url)
        .await
        .unwrap()
        .register(name, PASSWORD)
        .await
        .unwrap();
}

async fn linked_pair() -> (TestServer, TestServer, tempfile::TempDir) {
    let store = common::postgres::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a shared secret of the test mesh").unwrap();
    let a = node(&store, "a", &secret, None).await;
    let b = node(&store, "b", &secret, a.server.mesh_addr()).await;
    a.linked(1).await;
    b.linked(1).await;
    (a, b, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_client_goes_on_at_the_next_node_when_its_node_stops() {
    let (a, b, _dir) = linked_pair().await;
    let servers = Servers::new(vec![a.url.clone(), b.url.clone()], None);
    let mut alice = ChatSession::start_on(servers, "alice", PASSWORD, true)
        .await
        .expect("alice registers on a");
    assert_eq!(alice.server(), Some(a.url.as_str()));
    // Bob registered through a logs in on b: one set of accounts.
    let bob = ChatSession::start(&a.url, "bob", PASSWORD, true)
        .await
        .unwrap();
    drop(bob);
    let bob = ChatSession::start(&b.url, "bob", PASSWORD, false)
        .await
        .expect("an account made on a logs in on b");
    let mut bob_events = bob.client().subscribe().await.unwrap();
    assert_eq!(
        shown(&mut alice, "/tell bob before").await,
        ["-> @bob: before"]
    );

    let a_url = a.url.clone();
    let TestServer { server, .. } = a;
    server.shutdown().await;

    let lines = shown(&mut alice, "/tell bob after").await;
    assert_eq!(
        lines,
        [
            format!("* {a_url} is gone; now on {}", b.url),
            "-> @bob: after".into()
        ]
    );
    assert_eq!(alice.server(), Some(b.url.as_str()));
    // Bob, on b all along, got both, each once and in order.
    assert_eq!(
        render_message(&next_message(&mut bob_events).await),
        "@alice: before"
    );
    assert_eq!(
        render_message(&next_message(&mut bob_events).await),
        "@alice: after"
    );
    common::assert_quiet(&mut bob_events).await;
    // The session is the same one: its history is there on b.
    let history = shown(&mut alice, "/join lobby").await;
    assert_eq!(history, ["* now in #lobby"]);
}

/// Two nodes on one database with no mesh between them: the worst case of
/// a link that is down, where no word of a change made through one node
/// reaches the other; the store has it, and the other node goes by it.
async fn unlinked_pair() -> (TestServer, TestServer) {
    let store = common::postgres::fresh_database();
    let start = |name: &str| ServeArgs {
        store: Some(store.clone()),
        node_name: Some(name.to_owned()),
        ..Default::default()
    };
    let a = TestServer::start_with(start("a")).await;
    let b = TestServer::start_with(start("b")).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logout_through_one_node_ends_the_token_on_another_that_never_heard_of_it() {
    let (a, b) = unlinked_pair().await;
    register(&a.url, "ann").await;
    let (on_a, login) = log_in_at(&a.url, "ann", false).await;
    let on_b = Client::connect(&b.url)
        .await
        .unwrap()
        .with_token(&login.token)
        .unwrap();
    let mut stream = on_b.subscribe().await.expect("a's token works on b");
    on_a.logout().await.unwrap();
    // What b's audit, which runs every few seconds, does.
    b.server.core().audit_sessions().await.unwrap();
    let refused = on_b.rooms().await.expect_err("the token is dead on b");
    assert!(
        matches!(&refused, ClientError::Rpc(s) if s.code() == Code::Unauthenticated),
        "{refused:?}"
    );
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message()).await;
    assert!(
        matches!(&ended, Ok(Err(s)) if s.code() == Code::Unauthenticated)
            || matches!(ended, Ok(Ok(None))),
        "b's stream of the session ends: {ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_left_through_one_node_is_left_on_another_at_the_next_login_there() {
    let (a, b) = unlinked_pair().await;
    register(&a.url, "bob").await;
    let (on_b, _) = log_in_at(&b.url, "bob", false).await;
    on_b.join("ops").await.unwrap();
    let (on_a, _) = log_in_at(&a.url, "bob", false).await;
    assert!(
        on_a.leave("ops").await.unwrap(),
        "a reads the join from the store"
    );
    let (on_b, _) = log_in_at(&b.url, "bob", false).await;
    let refused = on_b
        .send(&To::Room("ops".into()), "still here?", None)
        .await
        .expect_err("no longer a member, on b either");
    assert!(
        matches!(&refused, ClientError::Rpc(s) if s.code() == Code::PermissionDenied),
        "{refused:?}"
    );
    let rooms = on_b.rooms().await.unwrap();
    let ops = rooms
        .iter()
        .find(|r| r.name == "ops")
        .expect("#ops is listed");
    assert!(!ops.joined, "{rooms:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspension_through_one_node_ends_the_sessions_on_its_siblings_with_the_notice() {
    let (a, b, _dir) = linked_pair().await;
    let root = a.user(common::OPERATOR).await;
    register(&a.url, "bob").await;
    let (on_b, _) = log_in_at(&b.url, "bob", false).await;
    let mut stream = on_b.subscribe().await.unwrap();

    let done = root
        .moderate(Moderation::Suspend, "bob".into(), "off-topic".into())
        .await
        .unwrap();
    // a ended the session in the store; b's stream is told why.
    assert_eq!((done.node.as_str(), done.sessions_ended), ("a", 1));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("b ends the stream in time");
    match ended {
        Err(status) => assert_eq!(
            (status.code(), status.message()),
            (
                Code::PermissionDenied,
                "your account was suspended by root: off-topic"
            )
        ),
        other => panic!("expected the notice, got {other:?}"),
    }
    let refused = on_b.rooms().await.expect_err("the token is dead on b");
    assert!(
        matches!(&refused, ClientError::Rpc(s) if s.code() == Code::Unauthenticated),
        "{refused:?}"
    );
    let refused = Client::connect(&b.url)
        .await
        .unwrap()
        .login("bob", PASSWORD)
        .await
        .expect_err("b refuses a suspended account's log-in");
    assert!(
        matches!(&refused, ClientError::Rpc(s) if s.code() == Code::PermissionDenied),
        "{refused:?}"
    );
}
