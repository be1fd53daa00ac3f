//! The line protocol over real sockets: every command's reply, the exact
//! `-ERR` codes for bad input, and input split at every byte position.

mod common;

use std::time::Duration;

use common::{PASSWORD, TestServer};
use meshtalk::client::line::{LineClient, Reply};
use meshtalk::codec::line::ServerLine;
use tokio::io::AsyncWriteExt;

fn ok(reply: &Reply) -> &str {
    match &reply.end {
        ServerLine::Ok(text) => text,
        other => panic!("expected +OK, got {other:?} after {:?}", reply.lines),
    }
}

fn err(reply: &Reply) -> (&str, &str) {
    match &reply.end {
        ServerLine::Err { code, text } => (code, text),
        other => panic!("expected -ERR, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_from_register_to_quit() {
    let t = TestServer::start().await;
    let mut alice = LineClient::connect(t.server.talk_addr()).await.unwrap();
    assert!(
        alice
            .welcome
            .starts_with("* welcome to meshtalk on test-node"),
        "{}",
        alice.welcome
    );

    let help = alice.request("/help").await.unwrap();
    assert!(
        help.lines.iter().any(|l| l.starts_with("/tell NAME TEXT")),
        "{help:?}"
    );
    assert_eq!(
        ok(&alice
            .request(&format!("/register alice {PASSWORD}"))
            .await
            .unwrap()),
        "registered alice: now /login alice PASSWORD"
    );
    assert_eq!(
        ok(&alice
            .request(&format!("/login ALICE {PASSWORD}"))
            .await
            .unwrap()),
        "logged in as alice; you are in #lobby"
    );
    let mut bob = t.line_user("bob").await;

    // Speech: no echo to the speaker, a room line to everyone else.
    alice.send_line("hello everyone").await.unwrap();
    alice.send_line("//slash").await.unwrap();
    assert_eq!(
        bob.next_delivery().await.unwrap().to_string(),
        "#lobby alice: hello everyone"
    );
    assert_eq!(
        bob.next_delivery().await.unwrap().to_string(),
        "#lobby alice: /slash"
    );

    let reply = bob.request("/tell alice lunch?").await.unwrap();
    assert!(ok(&reply).starts_with("sent to alice ("), "{reply:?}");
    assert_eq!(
        alice.next_delivery().await.unwrap().to_string(),
        "@bob: lunch?"
    );

    assert_eq!(
        ok(&alice.request("/join #Rust").await.unwrap()),
        "joined #Rust"
    );
    assert_eq!(
        ok(&bob.request("/join rust").await.unwrap()),
        "joined #Rust"
    );
    alice.send_line("in rust now").await.unwrap();
    assert_eq!(
        bob.next_delivery().await.unwrap().to_string(),
        "#Rust alice: in rust now"
    );
    let history = alice.request("/history 5").await.unwrap();
    assert_eq!(ok(&history), "1 line");
    assert_eq!(
        alice.request("/history").await.unwrap().lines.len(),
        0,
        "history lines come as room lines, not notices"
    );

    let users = alice.request("/users A*").await.unwrap();
    assert_eq!(users.lines, ["alice online test-node"]);
    assert_eq!(ok(&users), "1 user");
    let who = alice.request("/who").await.unwrap();
    assert_eq!(who.lines, ["alice test-node", "bob test-node"]);
    let rooms = alice.request("/rooms").await.unwrap();
    assert_eq!(
        rooms.lines,
        ["#lobby 2 members (joined)", "#Rust 2 members (joined)"]
    );
    let stats = alice.request("/stats").await.unwrap();
    assert_eq!(stats.lines[0], "node test-node");
    assert_eq!(stats.lines[1], "messages 4");
    assert_eq!(
        ok(&alice.request("/leave rust").await.unwrap()),
        "left #rust; you are in #lobby"
    );
    assert_eq!(
        ok(&alice.request("/leave rust").await.unwrap()),
        "you were not in #rust"
    );
    assert_eq!(
        err(&alice
            .request(&format!("/login bob {PASSWORD}"))
            .await
            .unwrap())
        .0,
        "state"
    );
    assert_eq!(ok(&alice.request("/logout").await.unwrap()), "logged out");
    assert_eq!(err(&alice.request("/who").await.unwrap()).0, "auth");
    assert_eq!(ok(&alice.request("/quit").await.unwrap()), "bye");
    assert_eq!(
        alice.read_line().await.unwrap(),
        None,
        "the server closes after /quit"
    );
}

#[tokio::test]
async fn offline_dms_arrive_at_login_and_accounts_can_go() {
    let t = TestServer::start().await;
    let mut alice = t.line_user("alice").await;
    let mut bob = t.line_user("bob").await;
    ok(&bob.request("/quit").await.unwrap());
    ok(&alice.request("/tell bob one").await.unwrap());
    ok(&alice.request("/tell bob two").await.unwrap());

    let mut bob = LineClient::connect(t.server.talk_addr()).await.unwrap();
    ok(&bob
        .request(&format!("/login bob {PASSWORD}"))
        .await
        .unwrap());
    assert_eq!(
        bob.next_delivery().await.unwrap().to_string(),
        "@alice: one"
    );
    assert_eq!(
        bob.next_delivery().await.unwrap().to_string(),
        "@alice: two"
    );
    // Written to the socket counts as shown: they do not come again.
    ok(&bob.request("/quit").await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bob = LineClient::connect(t.server.talk_addr()).await.unwrap();
    ok(&bob
        .request(&format!("/login bob {PASSWORD}"))
        .await
        .unwrap());
    assert_eq!(bob.request("/who").await.unwrap().lines.len(), 2);
    assert_eq!(bob.take_deliveries(), [], "nothing was delivered again");

    assert_eq!(
        err(&bob.request("/delete-account wrong").await.unwrap()),
        ("perm", "wrong password")
    );
    assert_eq!(
        ok(&bob
            .request(&format!("/delete-account {PASSWORD}"))
            .await
            .unwrap()),
        "account deleted"
    );
    let reply = alice.request("/tell bob still there?").await.unwrap();
    assert_eq!(err(&reply), ("not-found", "no such user: bob"));
}

#[tokio::test]
async fn bad_input_gets_its_exact_code_and_the_connection_stays() {
    let t = TestServer::start().await;
    let mut c = LineClient::connect(t.server.talk_addr()).await.unwrap();

    // Before login only /help, /register, /login and /quit work.
    for line in [
        "hello",
        "/who",
        "/tell bob hi",
        "/join x",
        "/rooms",
        "/users",
        "/history",
        "/stats",
        "/logout",
        "/peers",
    ] {
        let reply = c.request(line).await.unwrap();
        assert_eq!(
            err(&reply),
            ("auth", "log in first: /login NAME PASSWORD"),
            "{line}"
        );
    }
    assert_eq!(
        err(&c.request("/login nobody pw").await.unwrap()),
        ("auth", "wrong name or password")
    );
    assert_eq!(
        err(&c.request("/register bad!name pw").await.unwrap()).0,
        "invalid"
    );
    ok(&c
        .request(&format!("/register carol {PASSWORD}"))
        .await
        .unwrap());
    assert_eq!(
        err(&c
            .request(&format!("/register CAROL {PASSWORD}"))
            .await
            .unwrap())
        .0,
        "exists"
    );
    assert_eq!(
        err(&c.request("/login carol wrong").await.unwrap()).0,
        "auth"
    );
    ok(&c
        .request(&format!("/login carol {PASSWORD}"))
        .await
        .unwrap());

    let long = "x".repeat(4097);
    assert_eq!(
        err(&c.request(&long).await.unwrap()),
        ("too-long", "line is over 4096 bytes")
    );
    let huge = "y".repeat(100_000);
    assert_eq!(err(&c.request(&huge).await.unwrap()).0, "too-long");
    c.send_raw(b"\xff\xfe\xfd\r\n").await.unwrap();
    assert_eq!(
        err(&c.read_reply().await.unwrap()),
        ("utf8", "line is not valid UTF-8")
    );
    assert_eq!(
        err(&c.request("/dance").await.unwrap()),
        ("unknown", "no such command /dance: try /help")
    );
    assert_eq!(
        err(&c.request("/tell nobody hi").await.unwrap()),
        ("not-found", "no such user: nobody")
    );
    // The code says it is about usage; the text does not say so again.
    for (line, usage) in [
        ("/tell", "/tell NAME TEXT"),
        ("/tell bob", "/tell NAME TEXT"),
        ("/join", "/join ROOM"),
        ("/leave", "/leave ROOM"),
        ("/login x", "/login NAME PASSWORD"),
        ("/history many", "/history [N], N from 1 to 1000"),
        ("/who me", "this command takes no arguments"),
    ] {
        assert_eq!(
            err(&c.request(line).await.unwrap()),
            ("usage", usage),
            "{line}"
        );
    }
    assert_eq!(
        err(&c.request("/join bad#room").await.unwrap()).0,
        "invalid"
    );
    assert_eq!(err(&c.request("/leave lobby").await.unwrap()).0, "invalid");
    assert_eq!(
        err(&c.request("/leave nowhere").await.unwrap()),
        ("not-found", "no such room: #nowhere")
    );
    // Still the same session after all of that.
    assert_eq!(c.request("/who").await.unwrap().lines, ["carol test-node"]);
}

#[tokio::test]
async fn operator_commands_are_refused_to_everyone_else() {
    let t = TestServer::start().await;
    let mut alice = t.line_user("alice").await;
    for line in [
        "/peers",
        "/topology",
        "/peer-listen 127.0.0.1 9999",
        "/peer-connect 127.0.0.1 9999",
        "/peer-kill x",
    ] {
        assert_eq!(
            err(&alice.request(line).await.unwrap()),
            ("perm", "only operators may do that"),
            "{line}"
        );
    }
    let mut root = t.line_user("root").await;
    assert_eq!(ok(&root.request("/peers").await.unwrap()), "0 peers");
    let topology = root.request("/topology").await.unwrap();
    assert_eq!(topology.lines, ["node test-node"]);
    assert_eq!(topology.end, ServerLine::Ok("1 node, 0 links".into()));
    // Linking needs the mesh secret, and this server was started without one.
    assert_eq!(
        err(&root.request("/peer-connect 127.0.0.1 9999").await.unwrap()),
        (
            "invalid",
            "mesh: no mesh secret is configured: start the server with --mesh-secret-file"
        )
    );
}

/// The replies to a script, as raw lines, however its bytes are cut up.
async fn replies(t: &TestServer, parts: &[&[u8]], expect_lines: usize) -> Vec<String> {
    let mut stream = tokio::net::TcpStream::connect(t.server.talk_addr())
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    for part in parts {
        stream.write_all(part).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut client_lines = Vec::new();
    let (read, _write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    use tokio::io::AsyncBufReadExt;
    while client_lines.len() < expect_lines {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n > 0, "closed early after {client_lines:?}");
        assert!(
            line.ends_with("\r\n"),
            "every server line ends CRLF: {line:?}"
        );
        client_lines.push(line);
    }
    client_lines
}

#[tokio::test]
async fn input_split_at_every_byte_and_mixed_line_ends_reply_the_same() {
    let t = TestServer::start().await;
    ok(&t.line_user("dora").await.request("/quit").await.unwrap());
    let script: Vec<u8> = [
        &b"/frob\n"[..],
        b"/who\r\n",
        b"\xff\xfe\n",
        format!("/login dora {PASSWORD}\r\n").as_bytes(),
        b"/rooms\n",
        b"/users d*\r\n",
    ]
    .concat();
    // welcome, -ERR unknown, -ERR auth, -ERR utf8, +OK login, * + +OK rooms, * + +OK users
    let expected_lines = 9;
    let reference = replies(&t, &[&script], expected_lines).await;
    assert!(reference[1].starts_with("-ERR unknown"), "{reference:?}");
    assert!(
        reference[4].starts_with("+OK logged in as dora"),
        "{reference:?}"
    );
    for cut in 1..script.len() {
        let got = replies(&t, &[&script[..cut], &script[cut..]], expected_lines).await;
        assert_eq!(got, reference, "cut at byte {cut}");
    }
    // One byte at a time, too.
    let bytes: Vec<&[u8]> = script.chunks(1).collect();
    assert_eq!(replies(&t, &bytes, expected_lines).await, reference);
}

#[tokio::test]
async fn a_burst_of_speech_is_stored_in_order_and_failures_come_before_the_next_reply() {
    let t = TestServer::start().await;
    let mut c = t.line_user("talker").await;
    let mut burst = Vec::new();
    for i in 0..100 {
        if i == 60 {
            burst.extend_from_slice(b"bad \x01 byte\r\n");
        } else {
            burst.extend_from_slice(format!("line {i}\r\n").as_bytes());
        }
    }
    burst.extend_from_slice(b"/history 200\r\n");
    c.send_raw(&burst).await.unwrap();
    let reply = c.read_reply().await.unwrap();
    assert_eq!(
        err(&reply),
        (
            "invalid",
            "body: it contains a line break or control character"
        )
    );
    let history = c.read_reply().await.unwrap();
    assert_eq!(ok(&history), "99 lines");
    // History lines are room lines, set aside as deliveries by the client.
    let lines: Vec<String> = c.take_deliveries().iter().map(|l| l.to_string()).collect();
    let expected: Vec<String> = (0..100)
        .filter(|i| *i != 60)
        .map(|i| format!("#lobby talker: line {i}"))
        .collect();
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn each_session_speaks_in_the_room_it_last_joined() {
    let t = TestServer::start().await;
    let mut alice = t.line_user("alice").await;
    let mut again = LineClient::connect(t.server.talk_addr()).await.unwrap();
    let login = again.request(&format!("/login alice {PASSWORD}")).await;
    assert!(login.unwrap().is_ok());
    for room in ["/join den", "/join Attic"] {
        assert!(alice.request(room).await.unwrap().is_ok());
    }
    // Leaving a room it does not speak in keeps the session where it is;
    // leaving the one it speaks in sends it back to the lobby.
    let reply = alice.request("/leave den").await.unwrap();
    assert_eq!(ok(&reply), "left #den; you are in #Attic");
    let reply = alice.request("/leave #attic").await.unwrap();
    assert_eq!(ok(&reply), "left #attic; you are in #lobby");
    // The place is the session's: another session of the account never
    // moved until it joined a room of its own.
    assert!(again.request("/join den").await.unwrap().is_ok());
    again.send_line("from the den").await.unwrap();
    let reply = again.request("/leave attic").await.unwrap();
    assert_eq!(ok(&reply), "you were not in #attic");
    // History lines come as room lines, beside the reply.
    assert_eq!(ok(&again.request("/history 1").await.unwrap()), "1 line");
    let shown = again.take_deliveries();
    assert_eq!(
        shown,
        [ServerLine::Room {
            room: "den".into(),
            from: "alice".into(),
            text: "from the den".into()
        }]
    );
    assert_eq!(ok(&alice.request("/history 5").await.unwrap()), "0 lines");
}
