//! The mesh, end to end: several real server processes on loopback ports,
//! linked by their operators, with line-protocol users on each.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use common::MeshNode;
use common::lines::{direct, next, quiet, request, until};
use meshtalk::client::line::LineClient;
use meshtalk::codec::line::ServerLine;
use meshtalk::mesh::handshake::{self, Transport};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Mesh {
    dir: TempDir,
    secret: PathBuf,
    nodes: Vec<MeshNode>,
}

impl Mesh {
    /// Starts one node per name, none linked yet.
    fn start(names: &[&str]) -> Mesh {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("mesh-secret");
        std::fs::write(&secret, "a shared secret of the test mesh\n").expect("secret");
        let mut mesh = Mesh {
            dir,
            secret,
            nodes: Vec::new(),
        };
        for name in names {
            mesh.spawn(name, "127.0.0.1:0", &[]);
        }
        mesh
    }

    fn spawn(&mut self, name: &str, mesh_addr: &str, extra: &[String]) {
        let data = self.dir.path().join(name);
        let node = MeshNode::start(name, &data, &self.secret, mesh_addr, extra);
        match self.nodes.iter().position(|n| n.name == name) {
            Some(i) => self.nodes[i] = node,
            None => self.nodes.push(node),
        }
    }

    fn node(&self, name: &str) -> &MeshNode {
        self.nodes.iter().find(|n| n.name == name).expect("node")
    }

    /// `from`'s operator links it to `to`.
    async fn link(&self, from: &str, to: &str) {
        let mut op = self.node(from).operator().await;
        let addr = self.node(to).mesh;
        let reply = request(
            &mut op,
            &format!("/peer-connect {} {}", addr.ip(), addr.port()),
        )
        .await;
        assert_eq!(
            reply.end,
            ServerLine::Ok(format!("linked to {to}")),
            "{reply:?}"
        );
    }

    /// Waits until every node reports the same topology with `links` links.
    async fn converged(&self, nodes: usize, links: usize) {
        let mut ops = Vec::new();
        for node in &self.nodes {
            ops.push(node.operator().await);
        }
        let plural = |n: usize, what: &str| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        let end = ServerLine::Ok(format!(
            "{}, {}",
            plural(nodes, "node"),
            plural(links, "link")
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut seen = Vec::new();
            for op in ops.iter_mut() {
                seen.push(request(op, "/topology").await);
            }
            if seen
                .iter()
                .all(|r| r.end == end && r.lines == seen[0].lines)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{nodes} nodes never agreed on {links} links: {seen:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Says a line in the current room: speech has no reply.
async fn say(c: &mut LineClient, text: &str) {
    c.send_line(text).await.expect("say");
}

fn room(from: &str, text: &str) -> ServerLine {
    ServerLine::Room {
        room: "lobby".into(),
        from: from.into(),
        text: text.into(),
    }
}

/// Waits until `asker` sees every name in `names` in `/users`.
async fn knows(asker: &mut LineClient, names: &[&str]) {
    until(
        asker,
        "/users",
        &format!("the directory lists {names:?}"),
        |reply| {
            names
                .iter()
                .all(|n| reply.lines.iter().any(|l| l.starts_with(&format!("{n} "))))
        },
    )
    .await;
}

#[tokio::test]
async fn a_line_of_three_behaves_as_one_server() {
    let mesh = Mesh::start(&["a", "b", "c"]);
    mesh.link("b", "a").await;
    mesh.link("b", "c").await;
    mesh.converged(3, 2).await;

    let mut ann = mesh.node("a").login("ann", true).await;
    let mut bob = mesh.node("b").login("bob", true).await;
    let mut cat = mesh.node("c").login("cat", true).await;
    knows(&mut ann, &["ann", "bob", "cat"]).await;
    knows(&mut cat, &["ann", "bob", "cat"]).await;

    // Speech said on an end node reaches both others, once.
    say(&mut ann, "hello from a").await;
    assert_eq!(next(&mut bob).await, room("ann", "hello from a"));
    assert_eq!(next(&mut cat).await, room("ann", "hello from a"));
    say(&mut cat, "hi from c").await;
    assert_eq!(next(&mut ann).await, room("cat", "hi from c"));
    assert_eq!(next(&mut bob).await, room("cat", "hi from c"));
    quiet(&mut ann).await;
    quiet(&mut bob).await;
    quiet(&mut cat).await;

    // A DM across two hops, live.
    let reply = request(&mut ann, "/tell cat psst").await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(next(&mut cat).await, direct("ann", "psst"));
    let reply = request(&mut cat, "/tell ann back at you").await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(next(&mut ann).await, direct("cat", "back at you"));

    // An offline DM to a user homed two hops away waits at its home node.
    let dan = mesh.node("c").login("dan", true).await;
    drop(dan);
    knows(&mut ann, &["dan"]).await;
    let reply = request(&mut ann, "/tell dan see you tomorrow").await;
    assert!(reply.is_ok(), "{reply:?}");
    let mut dan = mesh.node("c").login("dan", false).await;
    assert_eq!(next(&mut dan).await, direct("ann", "see you tomorrow"));

    // Who is online, gathered from every node.
    let who = request(&mut ann, "/who").await;
    for line in ["ann a", "bob b", "cat c", "dan c"] {
        assert!(who.lines.iter().any(|l| l == line), "{line} in {who:?}");
    }
    assert_eq!(who.end, ServerLine::Ok("4 online".into()));
    until(&mut bob, "/users ?a?", "b sees cat and dan online", |r| {
        r.lines == ["cat online c", "dan online c"]
    })
    .await;
    let stats = request(&mut cat, "/stats mesh").await;
    assert!(
        stats.lines.contains(&"node mesh of 3 nodes".to_owned()),
        "{stats:?}"
    );

    // A name is global; unknown users are still unknown.
    let mut fresh = LineClient::connect(mesh.node("a").talk).await.unwrap();
    let taken = request(&mut fresh, &format!("/register cat {}", common::PASSWORD)).await;
    assert_eq!(taken.error_code(), Some("exists"), "{taken:?}");
    assert_eq!(
        request(&mut ann, "/tell nobody hi").await.error_code(),
        Some("not-found")
    );

    // Mesh commands are for operators only.
    assert_eq!(request(&mut ann, "/peers").await.error_code(), Some("perm"));
    assert_eq!(
        request(&mut ann, "/peer-kill b").await.error_code(),
        Some("perm")
    );
    let mut op = mesh.node("b").operator().await;
    let peers = request(&mut op, "/peers").await;
    assert_eq!(peers.end, ServerLine::Ok("2 peers".into()));
    assert!(peers.lines[0].starts_with("a ") && peers.lines[0].ends_with(" outbound"));
}

#[tokio::test]
async fn loops_deliver_once_and_a_dead_node_is_routed_around_and_rejoins() {
    let mut mesh = Mesh::start(&["a", "b", "c", "d"]);
    mesh.link("a", "b").await;
    mesh.link("b", "c").await;
    mesh.link("c", "d").await;
    mesh.link("d", "a").await;
    mesh.converged(4, 4).await;

    let mut users = Vec::new();
    for (node, user) in [("a", "ann"), ("b", "bob"), ("c", "cat"), ("d", "dee")] {
        users.push(mesh.node(node).login(user, true).await);
    }
    for u in users.iter_mut() {
        knows(u, &["ann", "bob", "cat", "dee"]).await;
    }
    // Every message reaches every other node once, though the ring offers two ways.
    for (i, speaker) in ["ann", "bob", "cat", "dee"].iter().enumerate() {
        let text = format!("round the ring from {speaker}");
        say(&mut users[i], &text).await;
        for (j, listener) in users.iter_mut().enumerate() {
            if i != j {
                assert_eq!(next(listener).await, room(speaker, &text));
            }
        }
    }
    for u in users.iter_mut() {
        quiet(u).await;
    }

    // b dies: a reaches c the other way round.
    let b_mesh = mesh.node("b").mesh;
    let b_users = users.remove(1);
    drop(b_users);
    mesh.nodes
        .iter_mut()
        .find(|n| n.name == "b")
        .unwrap()
        .kill9();
    let mut op_a = mesh.node("a").operator().await;
    until(&mut op_a, "/topology", "a sees b gone", |r| {
        r.end == ServerLine::Ok("4 nodes, 2 links".into())
    })
    .await;
    // Who is online names b as not answering: it was there a moment ago.
    let who = request(&mut users[0], "/who").await;
    assert!(
        who.lines.contains(&"no answer from b".to_owned()),
        "{who:?}"
    );
    let [ann, cat, dee] = &mut users[..] else {
        unreachable!()
    };
    let reply = request(ann, "/tell cat via d").await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(next(cat).await, direct("ann", "via d"));
    say(cat, "still here").await;
    assert_eq!(next(ann).await, room("cat", "still here"));
    assert_eq!(next(dee).await, room("cat", "still here"));
    // While b is down, a DM to its user cannot be stored: the sender hears so.
    let down = request(ann, "/tell bob are you there").await;
    assert_eq!(down.error_code(), Some("unavailable"), "{down:?}");

    // b comes back on its old address: a redials it, and b dials c itself.
    let c_mesh = mesh.node("c").mesh;
    mesh.spawn(
        "b",
        &b_mesh.to_string(),
        &["--peer".into(), c_mesh.to_string()],
    );
    mesh.converged(4, 4).await;
    let mut bob = mesh.node("b").login("bob", false).await;
    // b caught up on the directory, and the others on b's presence.
    knows(&mut bob, &["ann", "cat", "dee"]).await;
    let ann = &mut users[0];
    until(ann, "/users bob", "a sees bob online again", |r| {
        r.lines == ["bob online b"]
    })
    .await;
    say(&mut bob, "back").await;
    for u in users.iter_mut() {
        assert_eq!(next(u).await, room("bob", "back"));
    }
}

#[tokio::test]
async fn five_nodes_with_two_paths_between_every_pair() {
    let names = ["a", "b", "c", "d", "e"];
    let mesh = Mesh::start(&names);
    for (from, to) in [
        ("a", "b"),
        ("b", "c"),
        ("c", "d"),
        ("d", "e"),
        ("e", "a"),
        ("a", "c"),
    ] {
        mesh.link(from, to).await;
    }
    mesh.converged(5, 6).await;
    let mut users = Vec::new();
    for name in names {
        users.push(mesh.node(name).login(&format!("user-{name}"), true).await);
    }
    let all: Vec<String> = names.iter().map(|n| format!("user-{n}")).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    for u in users.iter_mut() {
        knows(u, &all).await;
    }
    for i in 0..names.len() {
        let text = format!("from {}", all[i]);
        say(&mut users[i], &text).await;
        for (j, listener) in users.iter_mut().enumerate() {
            if i != j {
                assert_eq!(next(listener).await, room(all[i], &text));
            }
        }
    }
    for u in users.iter_mut() {
        quiet(u).await;
    }
    let who = request(&mut users[3], "/who").await;
    assert_eq!(who.end, ServerLine::Ok("5 online".into()), "{who:?}");
}

/// Writes one frame in clear, as a node of protocol version 1 did.
async fn write_frame(stream: &mut TcpStream, json: &str) {
    let mut frame = (json.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(json.as_bytes());
    stream.write_all(&frame).await.expect("write");
}

/// The node closes the connection in time, whatever else it says first.
async fn closes(stream: &mut TcpStream) {
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the node kept a bad peer's connection open");
}

/// A hand-driven peer that holds the secret: it runs the Noise handshake
/// and then says whatever the test wants, in encrypted frames.
struct FakePeer {
    stream: TcpStream,
    transport: Transport,
    wire: BytesMut,
    plain: BytesMut,
}

impl FakePeer {
    async fn dial(addr: SocketAddr, secret: &[u8]) -> FakePeer {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let transport = handshake::initiate(&mut stream, secret)
            .await
            .expect("the Noise handshake");
        FakePeer {
            stream,
            transport,
            wire: BytesMut::new(),
            plain: BytesMut::new(),
        }
    }

    /// Dials and completes the hellos as node `name`.
    async fn link(addr: SocketAddr, secret: &[u8], name: &str) -> FakePeer {
        let mut peer = FakePeer::dial(addr, secret).await;
        let hello = peer.recv().await.expect("hello");
        assert!(hello.contains(r#""type":"hello""#), "{hello}");
        peer.send(&format!(
            r#"{{"type":"hello","node":"{name}","instance":1,"version":2}}"#
        ))
        .await;
        assert_eq!(peer.recv().await.as_deref(), Some(r#"{"type":"ready"}"#));
        peer.send(r#"{"type":"ready"}"#).await;
        peer
    }

    /// Sends one frame.
    async fn send(&mut self, json: &str) {
        let mut plain = (json.len() as u32).to_be_bytes().to_vec();
        plain.extend_from_slice(json.as_bytes());
        let mut out = BytesMut::new();
        self.transport.seal(&plain, &mut out).expect("seal");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next frame's JSON text; `None` once the node closes or sends
    /// something that does not open.
    async fn recv(&mut self) -> Option<String> {
        loop {
            if self.plain.len() >= 4 {
                let len = u32::from_be_bytes(self.plain[..4].try_into().ok()?) as usize;
                if self.plain.len() >= 4 + len {
                    let frame = self.plain.split_to(4 + len);
                    return String::from_utf8(frame[4..].to_vec()).ok();
                }
            }
            match self.transport.open(&mut self.wire, &mut self.plain) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) => return None,
            }
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                self.stream.read_buf(&mut self.wire),
            )
            .await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn closes(&mut self) {
        closes(&mut self.stream).await;
    }
}

fn secret_of(mesh: &Mesh) -> Vec<u8> {
    let secret = std::fs::read_to_string(&mesh.secret).unwrap();
    secret.trim().as_bytes().to_vec()
}

#[tokio::test]
async fn strangers_and_garbage_are_refused_and_the_node_keeps_serving() {
    let mesh = Mesh::start(&["a", "b"]);
    // A node with another secret.
    let other_secret = mesh.dir.path().join("other-secret");
    std::fs::write(&other_secret, "not the secret of this mesh").unwrap();
    let stranger = MeshNode::start(
        "x",
        &mesh.dir.path().join("x"),
        &other_secret,
        "127.0.0.1:0",
        &[],
    );
    let mut op = mesh.node("a").operator().await;
    let refused = request(
        &mut op,
        &format!(
            "/peer-connect {} {}",
            stranger.mesh.ip(),
            stranger.mesh.port()
        ),
    )
    .await;
    assert_eq!(refused.error_code(), Some("unavailable"), "{refused:?}");
    let ServerLine::Err { text, .. } = &refused.end else {
        unreachable!()
    };
    assert!(text.contains("mesh secret"), "{text}");
    // A node may not take a name already in the mesh.
    mesh.link("a", "b").await;
    mesh.converged(2, 1).await;
    let impostor_node = MeshNode::start(
        "b",
        &mesh.dir.path().join("b2"),
        &mesh.secret,
        "127.0.0.1:0",
        &[],
    );
    let impostor = impostor_node.mesh;
    let clash = request(
        &mut op,
        &format!("/peer-connect {} {}", impostor.ip(), impostor.port()),
    )
    .await;
    assert_eq!(clash.error_code(), Some("unavailable"), "{clash:?}");

    let a_mesh = mesh.node("a").mesh;
    // Bytes that are not frames at all: an HTTP request.
    let mut garbage = TcpStream::connect(a_mesh).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closes(&mut garbage).await;
    // A stranger announcing a frame far bigger than any handshake needs.
    let mut garbage = TcpStream::connect(a_mesh).await.unwrap();
    garbage.write_all(&100_000u32.to_be_bytes()).await.unwrap();
    closes(&mut garbage).await;
    // A frame that is not JSON.
    let mut garbage = TcpStream::connect(a_mesh).await.unwrap();
    write_frame(&mut garbage, "{not json").await;
    closes(&mut garbage).await;
    // A node of protocol version 1 (a hello in clear) gets nowhere.
    let mut old = TcpStream::connect(a_mesh).await.unwrap();
    write_frame(
        &mut old,
        r#"{"type":"hello","node":"old","instance":1,"version":1,"nonce":"00"}"#,
    )
    .await;
    closes(&mut old).await;
    // Another protocol version past the handshake: refused with the reason.
    let mut other = FakePeer::dial(a_mesh, &secret_of(&mesh)).await;
    let hello = other.recv().await.expect("a's hello");
    assert!(
        hello.contains(r#""type":"hello""#) && hello.contains(r#""node":"a""#),
        "{hello}"
    );
    other
        .send(r#"{"type":"hello","node":"other","instance":1,"version":99}"#)
        .await;
    let refusal = other.recv().await.expect("a refusal");
    assert!(
        refusal.contains(r#""type":"refuse""#) && refusal.contains("version 99"),
        "{refusal}"
    );
    other.closes().await;
    // Silence: a connection that never starts the handshake is dropped, and
    // so is one that holds the secret but never says hello.
    let mut silent = TcpStream::connect(a_mesh).await.unwrap();
    closes(&mut silent).await;
    let mut mute = FakePeer::dial(a_mesh, &secret_of(&mesh)).await;
    assert!(mute.recv().await.is_some_and(|h| h.contains("hello")));
    mute.closes().await;

    // Through all that, a kept its link and its users.
    mesh.converged(2, 1).await;
    let mut ann = mesh.node("a").login("ann", true).await;
    let mut bob = mesh.node("b").login("bob", true).await;
    knows(&mut bob, &["ann"]).await;
    say(&mut ann, "still serving").await;
    assert_eq!(next(&mut bob).await, room("ann", "still serving"));

    // An operator drops a link: it stays down.
    let reply = request(&mut op, "/peer-kill b").await;
    assert_eq!(reply.end, ServerLine::Ok("dropped b".into()));
    mesh.converged(2, 0).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        request(&mut op, "/peers").await.end,
        ServerLine::Ok("0 peers".into())
    );
    assert_eq!(
        request(&mut op, "/peer-kill b").await.error_code(),
        Some("not-found")
    );
}

#[tokio::test]
async fn a_name_claimed_on_both_sides_of_a_partition_goes_to_the_earlier_claim() {
    let mesh = Mesh::start(&["a", "b"]);
    // Apart, both nodes accept the same name: b's claim comes first.
    let mut sam_b = mesh.node("b").login("sam", true).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut sam_a = mesh.node("a").login("Sam", true).await;
    let mut ann = mesh.node("a").login("ann", true).await;
    mesh.link("a", "b").await;
    mesh.converged(2, 1).await;
    // The later claim is listed with its node.
    until(&mut ann, "/users sam", "both claims are known", |r| {
        r.lines == ["sam online b", "Sam@a online a"]
    })
    .await;

    // The bare name goes to the earlier claim, even from the later one's node.
    let reply = request(&mut ann, "/tell sam which one?").await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(next(&mut sam_b).await, direct("ann", "which one?"));
    // name@node reaches the other.
    let reply = request(&mut ann, "/tell sam@a you, here").await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(next(&mut sam_a).await, direct("ann", "you, here"));
    quiet(&mut sam_b).await;
    quiet(&mut sam_a).await;
    // A name nobody holds on a node is not found there.
    let reply = request(&mut ann, "/tell ann@b hello").await;
    assert_eq!(reply.error_code(), Some("not-found"), "{reply:?}");
}

#[tokio::test]
async fn the_later_of_two_accounts_sharing_a_name_is_shown_with_its_node() {
    let mesh = Mesh::start(&["b", "c"]);
    // Apart, both nodes take the name zed: b's claim comes first.
    let mut zed_b = mesh.node("b").login("zed", true).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut zed_c = mesh.node("c").login("zed", true).await;
    let mut ann = mesh.node("b").login("ann", true).await;
    let mut cal = mesh.node("c").login("cal", true).await;
    mesh.link("b", "c").await;
    mesh.converged(2, 1).await;
    for viewer in [&mut ann, &mut cal] {
        until(viewer, "/users z*", "both claims are listed apart", |r| {
            r.lines == ["zed online b", "zed@c online c"]
        })
        .await;
    }

    // The later claimant's speech carries its node on every node, its own
    // included; the earlier one keeps the bare name.
    say(&mut zed_c, "i am zed too").await;
    for listener in [&mut ann, &mut cal, &mut zed_b] {
        assert_eq!(next(listener).await, room("zed@c", "i am zed too"));
    }
    say(&mut zed_b, "the first zed").await;
    for listener in [&mut ann, &mut cal, &mut zed_c] {
        assert_eq!(next(listener).await, room("zed", "the first zed"));
    }

    // Direct messages likewise, across the link and within a node.
    for (from_c, to, shown) in [
        (true, "ann", "zed@c"),
        (true, "cal", "zed@c"),
        (false, "ann", "zed"),
        (false, "cal", "zed"),
    ] {
        let text = format!("to {to} from {shown}");
        let sender = if from_c { &mut zed_c } else { &mut zed_b };
        let reply = request(sender, &format!("/tell {to} {text}")).await;
        assert!(reply.is_ok(), "{reply:?}");
        let receiver = if to == "ann" { &mut ann } else { &mut cal };
        assert_eq!(next(receiver).await, direct(shown, &text));
    }
    // The name shown is the one that reaches that account.
    let reply = request(&mut ann, "/tell zed@c got it").await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(next(&mut zed_c).await, direct("ann", "got it"));

    // Who is online, gathered from both nodes, as either side sees it.
    for viewer in [&mut ann, &mut cal] {
        let who = request(viewer, "/who").await;
        assert_eq!(who.lines, ["ann b", "cal c", "zed b", "zed@c c"], "{who:?}");
    }
    for c in [&mut ann, &mut cal, &mut zed_b, &mut zed_c] {
        quiet(c).await;
    }
}

#[tokio::test]
async fn a_peer_with_the_secret_that_sends_bad_names_is_cut_off() {
    let mesh = Mesh::start(&["a"]);
    let secret = secret_of(&mesh);
    let mut op = mesh.node("a").operator().await;
    for bad in [
        // A record whose account name would forge a line on the line protocol.
        r#"{"type":"state","node":"fake","instance":1,"version":9,"kind":"accounts","accounts":[["x\r\n+OK forged",1]]}"#,
        // Speech from a name no node would accept.
        r#"{"type":"speech","origin":"fake","instance":1,"seq":1,"room":"lobby","from":"a b","body":"hi","sent_ms":1}"#,
    ] {
        let mut peer = FakePeer::link(mesh.node("a").mesh, &secret, "fake").await;
        until(&mut op, "/peers", "fake is linked", |r| {
            r.end == ServerLine::Ok("1 peer".into())
        })
        .await;
        peer.send(bad).await;
        peer.closes().await;
        until(&mut op, "/peers", "fake is cut off", |r| {
            r.end == ServerLine::Ok("0 peers".into())
        })
        .await;
    }
    // Nothing forged reached the directory, and a still serves.
    let mut ann = mesh.node("a").login("ann", true).await;
    let users = request(&mut ann, "/users").await;
    assert_eq!(users.lines, ["ann online a", "op-a online a"]);
}

#[tokio::test]
async fn what_only_siblings_send_is_ignored_from_a_node_on_another_store() {
    let mesh = Mesh::start(&["a"]);
    let secret = secret_of(&mesh);
    let mut ann = mesh.node("a").login("ann", true).await;
    let mut op = mesh.node("a").operator().await;
    let mut peer = FakePeer::link(mesh.node("a").mesh, &secret, "fake").await;
    until(&mut op, "/peers", "fake is linked", |r| {
        r.end == ServerLine::Ok("1 peer".into())
    })
    .await;
    // A sibling's news names accounts by their id in the shared store; the
    // first accounts made here are ann's and the operator's.
    let routed = |op: &str, rest: &str| {
        format!(r#"{{"type":"routed","src":"fake","dst":"a","hops":8,"op":"{op}",{rest}}}"#)
    };
    for account in 1..=2 {
        let forged = [
            routed(
                "deliver",
                &format!(
                    r#""id":900{account},"from":"mallory","to":"ann","account":{account},"body":"forged","sent_ms":1"#
                ),
            ),
            routed(
                "removed",
                &format!(r#""account":{account},"notice":"forged kick""#),
            ),
            routed("deleted", &format!(r#""account":{account}"#)),
        ];
        for frame in forged {
            peer.send(&frame).await;
        }
    }
    // The link reads in order: once the record sent after them shows,
    // the node has taken in every forged frame.
    peer.send(
        r#"{"type":"state","node":"fake","instance":1,"version":1,"kind":"accounts","accounts":[["zed",1]]}"#,
    )
    .await;
    let users = until(&mut op, "/users", "fake's account shows", |r| {
        r.lines.iter().any(|l| l.starts_with("zed "))
    })
    .await;
    for here in ["ann online a", "op-a online a"] {
        assert!(users.lines.iter().any(|l| l == here), "{users:?}");
    }
    quiet(&mut ann).await;
    let rooms = request(&mut ann, "/rooms").await;
    assert!(rooms.is_ok(), "ann's session was ended: {rooms:?}");
}

#[tokio::test]
async fn operators_link_nodes_over_grpc_admin() {
    use meshtalk::config::ServeArgs;
    use meshtalk::proto;
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a shared secret of the test mesh").unwrap();
    let node = |name: &str| ServeArgs {
        node_name: Some(name.into()),
        mesh_secret_file: Some(secret.clone()),
        ..Default::default()
    };
    let a = common::TestServer::start_with(node("a")).await;
    let b = common::TestServer::start_with(node("b")).await;
    let (root_a, root_b) = (a.user("root").await, b.user("root").await);
    let listening = root_b
        .admin()
        .peer_listen(root_b.request(proto::PeerListenRequest {
            host: "127.0.0.1".into(),
            port: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .address;
    let addr: std::net::SocketAddr = listening.parse().unwrap();
    let linked = root_a
        .admin()
        .peer_connect(root_a.request(proto::PeerConnectRequest {
            host: addr.ip().to_string(),
            port: addr.port().into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(linked.node, "b");

    // A user online on b shows up in a's Who, gathered over the mesh.
    let bob = b.user("bob").await;
    let _online = bob.subscribe().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let who = root_a.who().await.unwrap();
        let names: Vec<(String, String)> = who
            .users
            .iter()
            .map(|u| (u.name.clone(), u.node.clone()))
            .collect();
        if names.contains(&("bob".into(), "b".into())) {
            assert!(who.missing_nodes.is_empty());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{who:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // root was registered on both nodes before they linked, a's first: over
    // gRPC too, b's account is listed with its node.
    let roots: Vec<(String, String)> = root_a
        .users("root")
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.name, u.node))
        .collect();
    assert_eq!(
        roots,
        [
            ("root".to_owned(), "a".to_owned()),
            ("root@b".to_owned(), "b".to_owned())
        ]
    );
    let topology = root_b
        .admin()
        .topology(root_b.request(proto::TopologyRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topology.nodes, ["a", "b"]);
    assert_eq!(topology.links.len(), 1);
    let stats = root_a.stats(true).await.unwrap();
    assert_eq!(stats.node, "mesh of 2 nodes");
    assert!(stats.accounts >= 3, "{stats:?}");

    // Ports past u16 and unknown nodes are refused with their own codes.
    let bad_port = root_a
        .admin()
        .peer_connect(root_a.request(proto::PeerConnectRequest {
            host: "127.0.0.1".into(),
            port: 70_000,
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_port.code(), Code::InvalidArgument);
    let unknown = root_a
        .admin()
        .peer_disconnect(root_a.request(proto::PeerDisconnectRequest { node: "zed".into() }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    root_a
        .admin()
        .peer_disconnect(root_a.request(proto::PeerDisconnectRequest { node: "b".into() }))
        .await
        .unwrap();
    let peers = root_a
        .admin()
        .peers(root_a.request(proto::PeersRequest {}))
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert!(peers.is_empty(), "{peers:?}");
}

/// A node whose log the test reads, for what must be reported there.
struct LoggedNode {
    talk: SocketAddr,
    mesh: SocketAddr,
    name: String,
    child: std::process::Child,
    log: common::Log,
}

impl LoggedNode {
    fn start(name: &str, dir: &Path, secret: &Path) -> LoggedNode {
        let data_dir = dir.join(name);
        let args = common::mesh_node_args(name, &data_dir, secret, "127.0.0.1:0");
        let (child, serving, log) = common::spawn_server_with(&data_dir, &args, None);
        let addr = |key| {
            common::log_field(&serving, key)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} address in {serving}"))
        };
        LoggedNode {
            talk: addr("talk"),
            mesh: addr("mesh"),
            name: name.to_owned(),
            child,
            log,
        }
    }

    async fn operator(&self) -> LineClient {
        let name = format!("op-{}", self.name);
        let mut c = LineClient::connect(self.talk).await.expect("connect");
        let _ = request(&mut c, &format!("/register {name} {}", common::PASSWORD)).await;
        let reply = request(&mut c, &format!("/login {name} {}", common::PASSWORD)).await;
        assert!(reply.is_ok(), "{reply:?}");
        c
    }

    fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits up to 15 s for a log line after the first `since` that holds
    /// every one of `words`.
    async fn logged(&self, since: usize, words: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let found = self.log.lock().unwrap()[since..]
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} never logged {words:?}: {:#?}",
                self.name,
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection through a relay: (dialler to node, node to dialler).
type Recording = (Vec<u8>, Vec<u8>);

/// A TCP relay in front of a node's mesh port. It records what crosses it,
/// both ways, per connection, and when told flips one byte of the next
/// Noise message the dialler sends after its first (handshake) message.
struct Relay {
    addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recording>>>,
    tamper: Arc<AtomicBool>,
    tampered: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            recorded: Arc::default(),
            tamper: Arc::default(),
            tampered: Arc::default(),
        };
        let (recorded, tamper, tampered) = (
            relay.recorded.clone(),
            relay.tamper.clone(),
            relay.tampered.clone(),
        );
        tokio::spawn(async move {
            while let Ok((dialler, _)) = listener.accept().await {
                let Ok(node) = TcpStream::connect(to).await else {
                    continue;
                };
                let index = {
                    let mut recorded = recorded.lock().unwrap();
                    recorded.push((Vec::new(), Vec::new()));
                    recorded.len() - 1
                };
                let (mut from_dialler, mut to_dialler) = dialler.into_split();
                let (mut from_node, mut to_node) = node.into_split();
                let (rec, tamper, tampered) = (recorded.clone(), tamper.clone(), tampered.clone());
                tokio::spawn(async move {
                    // Message by message: a 2-byte length, then the message.
                    let mut first = true;
                    loop {
                        let mut len = [0u8; 2];
                        if from_dialler.read_exact(&mut len).await.is_err() {
                            break;
                        }
                        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                        if from_dialler.read_exact(&mut body).await.is_err() {
                            break;
                        }
                        if !first && !body.is_empty() && tamper.swap(false, Ordering::SeqCst) {
                            let middle = body.len() / 2;
                            body[middle] ^= 0x01;
                            tampered.fetch_add(1, Ordering::SeqCst);
                        }
                        first = false;
                        let mut message = len.to_vec();
                        message.extend_from_slice(&body);
                        rec.lock().unwrap()[index].0.extend_from_slice(&message);
                        if to_node.write_all(&message).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_node.shutdown().await;
                });
                let rec = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match from_node.read(&mut buf).await {
                            Ok(n) if n > 0 => {
                                rec.lock().unwrap()[index].1.extend_from_slice(&buf[..n]);
                                if to_dialler.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                    let _ = to_dialler.shutdown().await;
                });
            }
        });
        relay
    }

    fn recorded(&self, connection: usize) -> Recording {
        self.recorded.lock().unwrap()[connection].clone()
    }

    fn connections(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_node_without_the_secret_is_refused_and_the_refusal_is_logged() {
    let mesh = Mesh::start(&[]);
    let a = LoggedNode::start("a", mesh.dir.path(), &mesh.secret);
    let other_secret = mesh.dir.path().join("other-secret");
    std::fs::write(&other_secret, "not the secret of this mesh").unwrap();
    let x = MeshNode::start(
        "x",
        &mesh.dir.path().join("x"),
        &other_secret,
        "127.0.0.1:0",
        &[],
    );
    let mut op_x = x.operator().await;
    let since = a.log_len();
    let refused = request(
        &mut op_x,
        &format!("/peer-connect 127.0.0.1 {}", a.mesh.port()),
    )
    .await;
    assert_eq!(refused.error_code(), Some("unavailable"), "{refused:?}");
    let ServerLine::Err { text, .. } = &refused.end else {
        unreachable!()
    };
    assert!(
        text.contains("refused the handshake") && text.contains("mesh secret"),
        "{text}"
    );
    a.logged(since, &["does not hold this mesh's secret"]).await;
    let mut op_a = a.operator().await;
    assert_eq!(
        request(&mut op_a, "/peers").await.end,
        ServerLine::Ok("0 peers".into())
    );
}

#[tokio::test]
async fn nothing_crosses_a_link_in_clear_and_a_recorded_link_replayed_gets_nowhere() {
    let mesh = Mesh::start(&["a"]);
    let b = LoggedNode::start("b", mesh.dir.path(), &mesh.secret);
    let relay = Relay::start(b.mesh).await;
    let mut op_a = mesh.node("a").operator().await;
    let mut op_b = b.operator().await;
    let mut ann = mesh.node("a").login("ann", true).await;
    let reply = request(
        &mut op_a,
        &format!("/peer-connect 127.0.0.1 {}", relay.addr.port()),
    )
    .await;
    assert_eq!(reply.end, ServerLine::Ok("linked to b".into()), "{reply:?}");
    knows(&mut op_b, &["ann"]).await;
    say(&mut ann, "a secret plan").await;
    assert_eq!(next(&mut op_b).await, room("ann", "a secret plan"));

    // Frames, names and words: none of them readable on the wire.
    let (sent, received) = relay.recorded(0);
    for clear in [
        "\"type\":\"",
        "\"hello\"",
        "op-a",
        "op-b",
        "a secret plan",
        "lobby",
    ] {
        assert!(!holds(&sent, clear), "{clear} in clear from a");
        assert!(!holds(&received, clear), "{clear} in clear from b");
    }

    // a lets go; everything it sent, replayed on a new connection, is not a
    // link: the handshake's first message is accepted again, but the keys
    // are new, so the first replayed frame fails its check.
    let reply = request(&mut op_a, "/peer-kill b").await;
    assert_eq!(reply.end, ServerLine::Ok("dropped b".into()));
    until(&mut op_b, "/peers", "b sees a gone", |r| {
        r.end == ServerLine::Ok("0 peers".into())
    })
    .await;
    let since = b.log_len();
    let mut replayer = TcpStream::connect(b.mesh).await.unwrap();
    let _ = replayer.write_all(&sent).await;
    let mut back = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), replayer.read_to_end(&mut back)).await;
    assert!(read.is_ok(), "b kept the replayer's connection open");
    b.logged(since, &["integrity failure"]).await;
    assert!(
        !holds(&back, "\"type\":\""),
        "b answered a replayer in clear"
    );
    assert_eq!(
        request(&mut op_b, "/peers").await.end,
        ServerLine::Ok("0 peers".into())
    );
    let users = request(&mut op_b, "/users").await;
    assert!(
        users.lines.iter().all(|l| !l.contains(" online a")),
        "{users:?}"
    );
}

#[tokio::test]
async fn a_frame_altered_in_flight_ends_the_link_and_a_clean_redial_restores_it() {
    let mesh = Mesh::start(&["a"]);
    let b = LoggedNode::start("b", mesh.dir.path(), &mesh.secret);
    let relay = Relay::start(b.mesh).await;
    let mut op_a = mesh.node("a").operator().await;
    let mut op_b = b.operator().await;
    let reply = request(
        &mut op_a,
        &format!("/peer-connect 127.0.0.1 {}", relay.addr.port()),
    )
    .await;
    assert_eq!(reply.end, ServerLine::Ok("linked to b".into()), "{reply:?}");
    until(&mut op_b, "/peers", "b lists a", |r| {
        r.end == ServerLine::Ok("1 peer".into())
    })
    .await;

    // a's next message, its record of the account registered here, is
    // altered on the way.
    let since = b.log_len();
    relay.tamper.store(true, Ordering::SeqCst);
    let _ann = mesh.node("a").login("ann", true).await;
    let line = b
        .logged(since, &["integrity failure", "link to a ended"])
        .await;
    assert_eq!(relay.tampered.load(Ordering::SeqCst), 1, "{line}");

    // a redials through the same relay, untouched now: the link is back and
    // carries a's records again.
    knows(&mut op_b, &["ann"]).await;
    until(&mut op_b, "/peers", "b lists a again", |r| {
        r.end == ServerLine::Ok("1 peer".into())
    })
    .await;
    assert!(relay.connections() >= 2);
}

#[tokio::test]
async fn frames_larger_than_a_noise_message_cross_in_several() {
    let mesh = Mesh::start(&["a"]);
    let secret = secret_of(&mesh);
    let a = mesh.node("a").mesh;
    let mut big = FakePeer::link(a, &secret, "big").await;
    // About 100 KB: more than one Noise message holds.
    let accounts: Vec<String> = (0..5000)
        .map(|i| format!(r#"["user-{i:05}",{i}]"#))
        .collect();
    let record = format!(
        r#"{{"type":"state","node":"big","instance":1,"version":9,"kind":"accounts","accounts":[{}]}}"#,
        accounts.join(",")
    );
    assert!(record.len() > handshake::MAX_MESSAGE);
    big.send(&record).await;
    let mut op = mesh.node("a").operator().await;
    until(&mut op, "/users user-04999", "a took the record", |r| {
        r.lines == ["user-04999 offline big"]
    })
    .await;

    // a passes it on to a newcomer, whole.
    let mut other = FakePeer::link(a, &secret, "other").await;
    let expected: serde_json::Value = serde_json::from_str(&record).unwrap();
    loop {
        let frame = other.recv().await.expect("a's records");
        if frame.contains(r#""node":"big""#) {
            let got: serde_json::Value = serde_json::from_str(&frame).unwrap();
            assert_eq!(got, expected);
            break;
        }
    }
}
