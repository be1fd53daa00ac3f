//! Nodes on one PostgreSQL database serve any account: the chat client
//! given several servers goes on at the next when the one in use stops,
//! as the same session, with nothing lost and nothing sent twice.

mod common;

use common::{PASSWORD, TestServer, next_message};
use meshtalk::client::chat::{ChatSession, Outcome, Servers, render_message};
use meshtalk::config::ServeArgs;

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

async fn show(session: &mut ChatSession, line: &str) -> Vec<String> {
    match session.handle(line).await {
        Outcome::Show(lines) => lines,
        Outcome::Quit => panic!("{line:?} quit"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_client_goes_on_at_the_next_node_when_its_node_stops() {
    let store = common::postgres::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a shared secret of the test mesh").unwrap();
    let a = node(&store, "a", &secret, None).await;
    let b = node(&store, "b", &secret, a.server.mesh_addr()).await;
    a.linked(1).await;
    b.linked(1).await;
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
        show(&mut alice, "/tell bob before").await,
        ["-> @bob: before"]
    );

    let a_url = a.url.clone();
    let TestServer { server, .. } = a;
    server.shutdown().await;

    let lines = show(&mut alice, "/tell bob after").await;
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
    let history = show(&mut alice, "/join lobby").await;
    assert_eq!(history, ["* now in #lobby"]);
}
