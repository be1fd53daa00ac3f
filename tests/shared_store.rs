//! Three nodes on one PostgreSQL database behave as one service: any node
//! serves any account, live traffic reaches every node's sessions once, and
//! a node killed with SIGKILL loses nothing its clients were told was sent.
//!
//! The nodes are the server binary, so that the kill is a real one.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::lines::{direct, next, quiet, request, until};
use common::{ChildServer, PASSWORD, shown};
use meshtalk::client::chat::{ChatSession, Servers, show_incoming};
use meshtalk::client::line::LineClient;
use meshtalk::client::{Client, To};
use meshtalk::codec::line::ServerLine;

/// Node `name` on `store`, linked to the node at `peer`, if any.
fn node(
    store: &str,
    dir: &Path,
    secret: &Path,
    name: &str,
    peer: Option<SocketAddr>,
) -> ChildServer {
    let data = dir.join(name);
    let mut args = vec![
        "--store".to_owned(),
        store.to_owned(),
        "--node-name".into(),
        name.into(),
        "--mesh-addr".into(),
        "127.0.0.1:0".into(),
        "--mesh-secret-file".into(),
        secret.display().to_string(),
    ];
    if let Some(peer) = peer {
        args.extend(["--peer".to_owned(), peer.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChildServer::start_with(&data, &args)
}

/// A line client logged in as NAME on the node at `talk`.
async fn login(talk: SocketAddr, name: &str, register: bool) -> LineClient {
    let mut c = LineClient::connect(talk).await.expect("connect");
    if register {
        let reply = request(&mut c, &format!("/register {name} {PASSWORD}")).await;
        assert!(reply.is_ok(), "register {name}: {reply:?}");
    }
    let reply = request(&mut c, &format!("/login {name} {PASSWORD}")).await;
    assert!(reply.is_ok(), "login {name}: {reply:?}");
    c
}

fn ops(from: &str, text: &str) -> ServerLine {
    ServerLine::Room {
        room: "ops".into(),
        from: from.into(),
        text: text.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_on_one_database_behave_as_one_service() {
    let store = common::postgres::fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "the secret of the three nodes").unwrap();
    // A line: a - b - c. What a sends c crosses b.
    let a = node(&store, dir.path(), &secret, "a", None);
    let b = node(&store, dir.path(), &secret, "b", a.mesh);
    let c = node(&store, dir.path(), &secret, "c", b.mesh);

    // One set of accounts: each registers on one node.
    let mut ann = login(a.talk, "ann", true).await;
    let mut bob = login(b.talk, "bob", true).await;
    let mut cat = login(c.talk, "cat", true).await;

    // Presence spans the nodes: /who on c names who is on a and b.
    let who = until(&mut cat, "/who", "c sees who is on a and b", |r| {
        r.lines.len() == 3
    })
    .await;
    assert_eq!(who.lines, ["ann a", "bob b", "cat c"]);
    // Every account is served by every node, so each lists it as its own.
    until(&mut bob, "/users *", "b lists every account online", |r| {
        r.lines == ["ann online b", "bob online b", "cat online b"]
    })
    .await;

    // Room speech: joined through three nodes, said once, heard once each.
    for c in [&mut ann, &mut bob, &mut cat] {
        assert!(request(c, "/join ops").await.is_ok());
    }
    ann.send_line("hello all").await.unwrap();
    assert_eq!(next(&mut bob).await, ops("ann", "hello all"));
    assert_eq!(next(&mut cat).await, ops("ann", "hello all"));
    cat.send_line("hi from c").await.unwrap();
    assert_eq!(next(&mut ann).await, ops("cat", "hi from c"));
    assert_eq!(next(&mut bob).await, ops("cat", "hi from c"));

    // Direct messages between nodes, live, once.
    assert!(request(&mut ann, "/tell cat psst").await.is_ok());
    assert_eq!(next(&mut cat).await, direct("ann", "psst"));
    assert!(request(&mut cat, "/tell bob over to b").await.is_ok());
    assert_eq!(next(&mut bob).await, direct("cat", "over to b"));
    quiet(&mut ann).await;
    quiet(&mut bob).await;
    quiet(&mut cat).await;

    // Registered on a a moment ago is known on c at once.
    let _eve = login(a.talk, "eve", true).await;
    assert!(request(&mut cat, "/tell eve welcome").await.is_ok());

    // A DM sent through a to someone offline waits for their next login,
    // which may be on another node.
    drop(login(a.talk, "dan", true).await);
    assert!(
        request(&mut ann, "/tell dan see you tomorrow")
            .await
            .is_ok()
    );
    let mut dan = login(c.talk, "dan", false).await;
    assert_eq!(next(&mut dan).await, direct("ann", "see you tomorrow"));

    // Rooms, memberships, history and cursors are the same from every node:
    // bob, who saw everything on b, logs in on c and has nothing owed.
    // Acknowledgements reach the store within a tenth of a second.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut bob_on_c = login(c.talk, "bob", false).await;
    quiet(&mut bob_on_c).await;
    let rooms = request(&mut bob_on_c, "/rooms").await;
    assert!(
        rooms.lines.contains(&"#ops 3 members (joined)".to_owned()),
        "{rooms:?}"
    );
    assert!(request(&mut bob_on_c, "/join ops").await.is_ok());
    let history = request(&mut bob_on_c, "/history").await;
    assert_eq!(history.end, ServerLine::Ok("2 lines".into()));
    assert_eq!(
        bob_on_c.take_deliveries(),
        [ops("ann", "hello all"), ops("cat", "hi from c")]
    );
    drop(bob_on_c);

    // A deleted account is gone everywhere: its session on c ends, and no
    // node lists it or lets it in.
    let mut dan_on_a = login(a.talk, "dan", false).await;
    assert!(
        request(&mut dan_on_a, &format!("/delete-account {PASSWORD}"))
            .await
            .is_ok()
    );
    until(&mut bob, "/users dan", "b drops dan", |r| {
        r.lines.is_empty()
    })
    .await;
    until(&mut cat, "/users dan", "c drops dan", |r| {
        r.lines.is_empty()
    })
    .await;
    let mut fresh = LineClient::connect(c.talk).await.unwrap();
    let refused = request(&mut fresh, &format!("/login dan {PASSWORD}")).await;
    assert!(!refused.is_ok(), "{refused:?}");
    let ended = tokio::time::timeout(Duration::from_secs(10), dan.read_line()).await;
    assert!(
        matches!(&ended, Ok(Ok(Some(line))) if line.contains("deleted")),
        "dan's session on c is told: {ended:?}"
    );

    // SIGKILL. Fay writes through a, and goes on at b; gus reads through a,
    // and goes on at c. Neither restarts anything.
    drop(login(a.talk, "gus", true).await);
    let fay_servers = Servers::new(vec![a.url.clone(), b.url.clone()], None);
    let mut fay = ChatSession::start_on(fay_servers, "fay", PASSWORD, true)
        .await
        .unwrap();
    let gus_servers = Servers::new(vec![a.url.clone(), c.url.clone()], None);
    let gus = ChatSession::start_on(gus_servers.clone(), "gus", PASSWORD, false)
        .await
        .unwrap();
    let screen = common::screen::Screen::default();
    let receiving = tokio::spawn(show_incoming(
        gus.client().clone(),
        gus_servers,
        screen.clone(),
    ));
    let mut expected = Vec::new();
    for n in 1..=5 {
        assert_eq!(
            shown(&mut fay, &format!("/tell gus {n}")).await,
            [format!("-> @gus: {n}")]
        );
        expected.push(format!("@fay: {n}"));
    }
    let expected_now: Vec<&str> = expected.iter().map(String::as_str).collect();
    screen.shows_messages(&expected_now).await;

    let a_url = a.url.clone();
    a.kill9();
    let after = shown(&mut fay, "/tell gus after the kill").await;
    assert_eq!(
        after,
        [
            format!("* {a_url} is gone; now on {}", b.url),
            "-> @gus: after the kill".to_owned()
        ]
    );
    expected.push("@fay: after the kill".into());
    let expected_now: Vec<&str> = expected.iter().map(String::as_str).collect();
    screen.shows_messages(&expected_now).await;

    // Everything fay was told was sent is stored, as seen from c.
    let (reader, _) = Client::connect(&c.url)
        .await
        .unwrap()
        .login("fay", PASSWORD)
        .await
        .unwrap();
    let history = reader.recent(&To::User("gus".into()), 100).await.unwrap();
    let bodies: Vec<&str> = history.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["1", "2", "3", "4", "5", "after the kill"]);

    // A node restarted on the database links up again; the others were
    // never restarted.
    let a = node(&store, dir.path(), &secret, "a", b.mesh);
    let mut hal = login(a.talk, "hal", true).await;
    until(&mut hal, "/who", "the new a sees c", |r| {
        r.lines.iter().any(|l| l == "cat c")
    })
    .await;
    assert!(request(&mut hal, "/tell cat back again").await.is_ok());
    assert_eq!(next(&mut cat).await, direct("hal", "back again"));
    quiet(&mut cat).await;
    receiving.abort();
}
