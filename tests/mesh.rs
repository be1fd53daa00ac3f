//! The mesh, end to end: several real server processes on loopback ports,
//! linked by their operators, with line-protocol users on each.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::MeshNode;
use meshtalk::client::line::{LineClient, Reply};
use meshtalk::codec::line::ServerLine;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
        let end = ServerLine::Ok(format!("{nodes} nodes, {links} links"));
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

async fn request(c: &mut LineClient, line: &str) -> Reply {
    c.request(line).await.expect("request")
}

/// The next room line or DM, within 10 s.
async fn next(c: &mut LineClient) -> ServerLine {
    tokio::time::timeout(Duration::from_secs(10), c.next_delivery())
        .await
        .expect("a delivery in time")
        .expect("delivery")
}

/// Nothing more arrives for a while: catches duplicates.
async fn quiet(c: &mut LineClient) {
    let extra = tokio::time::timeout(Duration::from_millis(400), c.next_delivery()).await;
    assert!(extra.is_err(), "unexpected delivery: {extra:?}");
}

fn room(from: &str, text: &str) -> ServerLine {
    ServerLine::Room {
        room: "lobby".into(),
        from: from.into(),
        text: text.into(),
    }
}

fn direct(from: &str, text: &str) -> ServerLine {
    ServerLine::Direct {
        from: from.into(),
        text: text.into(),
    }
}

/// Repeats `line` until its reply satisfies `done`; panics after 15 s.
async fn until(c: &mut LineClient, line: &str, what: &str, done: impl Fn(&Reply) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = request(c, line).await;
        if done(&reply) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}; last reply {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Reads one mesh frame: its JSON text.
async fn read_frame(stream: &mut TcpStream) -> Option<String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.ok()?;
    String::from_utf8(body).ok()
}

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
    // Another protocol version: refused with the reason.
    let mut old = TcpStream::connect(a_mesh).await.unwrap();
    let hello = read_frame(&mut old).await.expect("a's hello");
    assert!(
        hello.contains(r#""type":"hello""#) && hello.contains(r#""node":"a""#),
        "{hello}"
    );
    write_frame(
        &mut old,
        r#"{"type":"hello","node":"old","instance":1,"version":99,"nonce":"00"}"#,
    )
    .await;
    let refusal = read_frame(&mut old).await.expect("a refusal");
    assert!(
        refusal.contains(r#""type":"refuse""#) && refusal.contains("version 99"),
        "{refusal}"
    );
    closes(&mut old).await;
    // Silence: a connection that never says hello is dropped.
    let mut silent = TcpStream::connect(a_mesh).await.unwrap();
    closes(&mut silent).await;

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
    until(&mut ann, "/users sam", "both claims are known", |r| {
        r.lines == ["Sam online a", "sam online b"]
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
async fn a_peer_with_the_secret_that_sends_bad_names_is_cut_off() {
    let mesh = Mesh::start(&["a"]);
    let secret = std::fs::read_to_string(&mesh.secret).unwrap();
    let secret = secret.trim().as_bytes();
    let mut op = mesh.node("a").operator().await;
    for bad in [
        // A record whose account name would forge a line on the line protocol.
        r#"{"type":"state","node":"fake","instance":1,"version":9,"kind":"accounts","accounts":[["x\r\n+OK forged",1]]}"#,
        // Speech from a name no node would accept.
        r#"{"type":"speech","origin":"fake","instance":1,"seq":1,"room":"lobby","from":"a b","body":"hi","sent_ms":1}"#,
    ] {
        let mut peer = TcpStream::connect(mesh.node("a").mesh).await.unwrap();
        let hello: serde_json::Value =
            serde_json::from_str(&read_frame(&mut peer).await.expect("hello")).unwrap();
        let their_nonce = hello["nonce"].as_str().unwrap().to_owned();
        let nonce = meshtalk::mesh::handshake::nonce();
        write_frame(
            &mut peer,
            &format!(
                r#"{{"type":"hello","node":"fake","instance":1,"version":1,"nonce":"{nonce}"}}"#
            ),
        )
        .await;
        let proof = read_frame(&mut peer).await.expect("a's proof");
        assert!(proof.contains(r#""type":"proof""#), "{proof}");
        let mac = meshtalk::mesh::handshake::prove(secret, &their_nonce, &nonce, "fake");
        write_frame(&mut peer, &format!(r#"{{"type":"proof","mac":"{mac}"}}"#)).await;
        assert_eq!(
            read_frame(&mut peer).await.as_deref(),
            Some(r#"{"type":"ready"}"#)
        );
        write_frame(&mut peer, r#"{"type":"ready"}"#).await;
        until(&mut op, "/peers", "fake is linked", |r| {
            r.end == ServerLine::Ok("1 peers".into())
        })
        .await;
        write_frame(&mut peer, bad).await;
        closes(&mut peer).await;
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
