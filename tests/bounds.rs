//! The bounds no client can push past, each tried over real sockets: the
//! time to log in and to finish a line or frame, connections per address
//! and in all, and the send rate's slow-then-cut.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestServer;
use meshtalk::client::To;
use meshtalk::client::line::LineClient;
use meshtalk::client::wire::WireClient;
use meshtalk::codec::frame::{Frame, arg};
use meshtalk::codec::line::ServerLine;
use meshtalk::codec::wire::{Status, op};
use meshtalk::config::ServeArgs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the server writes until it closes the connection.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

/// The BYE frame a binary connection is closed with.
async fn bye_of(client: &WireClient) -> Frame {
    loop {
        let push = tokio::time::timeout(Duration::from_secs(10), client.next_push())
            .await
            .expect("a push before the deadline")
            .expect("a BYE before the connection closes");
        if push.opcode == op::PUSH_BYE {
            return push;
        }
    }
}

#[tokio::test]
async fn a_connection_that_does_not_log_in_is_closed_with_a_reason() {
    let t = TestServer::start_with(ServeArgs {
        login_timeout: Some(1),
        ..Default::default()
    })
    .await;
    let mut idle = TcpStream::connect(t.server.talk_addr()).await.unwrap();
    let said = read_until_closed(&mut idle).await;
    assert!(
        said.contains("-ERR timeout not logged in within 1 s"),
        "{said}"
    );

    let idle = WireClient::connect(t.server.wire_addr()).await.unwrap();
    let bye = bye_of(&idle).await;
    assert_eq!(Status::from_u8(bye.status), Some(Status::Timeout));

    // A logged-in connection may stay quiet past the login deadline.
    let mut alice = t.line_user("alice").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(alice.request("/who").await.unwrap().is_ok());
}

#[tokio::test]
async fn a_line_or_frame_left_unfinished_is_cut_off() {
    let t = TestServer::start_with(ServeArgs {
        read_timeout: Some(1),
        ..Default::default()
    })
    .await;
    // One byte a while, never a whole line: the slow loris.
    let mut loris = TcpStream::connect(t.server.talk_addr()).await.unwrap();
    let started = Instant::now();
    for byte in b"/regis" {
        if loris.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let said = read_until_closed(&mut loris).await;
    assert!(
        said.contains("-ERR timeout a line must end within 1 s"),
        "{said}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Half a binary frame header, then nothing.
    let partial = WireClient::connect(t.server.wire_addr()).await.unwrap();
    partial.send_raw(&[0, 0, 0]).await.unwrap();
    let bye = bye_of(&partial).await;
    assert_eq!(Status::from_u8(bye.status), Some(Status::Timeout));

    // The gRPC door: an HTTP/2 preface a byte at a time.
    let mut loris = TcpStream::connect(t.server.grpc_addr()).await.unwrap();
    let started = Instant::now();
    for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
        if loris.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    read_until_closed(&mut loris).await;
    // Closed before the 24-byte preface could even be sent whole (7 s).
    assert!(started.elapsed() < Duration::from_secs(7));

    // Whole lines and frames, however long the pauses between them, are fine.
    let mut alice = t.line_user("alice").await;
    let grpc = t.user("gina").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(alice.request("/rooms").await.unwrap().is_ok());
    grpc.rooms().await.unwrap();
}

/// Writes `bytes` one at a time, `gap` apart, until the server closes.
async fn trickle(stream: &mut TcpStream, bytes: &[u8], gap: Duration) {
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(gap).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_door_holds_first_bytes_and_each_request_to_the_deadline() {
    let t = TestServer::start_with(ServeArgs {
        read_timeout: Some(1),
        ..Default::default()
    })
    .await;
    let http = t.server.http_addr();
    let gap = Duration::from_millis(300);

    // Connected, and silent.
    let mut silent = TcpStream::connect(http).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut silent).await;
    assert!(started.elapsed() < Duration::from_secs(5));

    // A gRPC-Web call whose body trickles in.
    let mut loris = TcpStream::connect(http).await.unwrap();
    let head = "POST /meshtalk.v1.Accounts/Login HTTP/1.1\r\nHost: x\r\n\
                content-type: application/grpc-web+proto\r\ncontent-length: 40\r\n\r\n";
    loris.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    trickle(&mut loris, &[0; 40], gap).await;
    read_until_closed(&mut loris).await;
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "cut before the 40 bytes (12 s)"
    );

    // The HTTP/2 preface, a byte at a time, as on the gRPC door.
    let mut loris = TcpStream::connect(http).await.unwrap();
    let started = Instant::now();
    trickle(&mut loris, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", gap).await;
    read_until_closed(&mut loris).await;
    assert!(started.elapsed() < Duration::from_secs(7));

    // A body over the cap is refused as it is announced.
    let mut large = TcpStream::connect(http).await.unwrap();
    let head = format!(
        "POST /meshtalk.v1.Accounts/Login HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n",
        meshtalk::gateway::request_clock::MAX_BODY + 1
    );
    large.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut large).await;
    assert!(started.elapsed() < Duration::from_millis(900));

    // Whole requests with long pauses between them are fine, and so is a
    // `Subscribe` that streams long past the deadline once its request is in.
    let health = reqwest::Client::new();
    let url = format!("http://{http}/healthz");
    assert!(health.get(&url).send().await.unwrap().status().is_success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(health.get(&url).send().await.unwrap().status().is_success());

    let alice = t.user("alice").await;
    let (_, login) = t
        .client()
        .await
        .login("alice", common::PASSWORD)
        .await
        .unwrap();
    let mut stream = TcpStream::connect(http).await.unwrap();
    let subscribe = format!(
        "POST /meshtalk.v1.Chat/Subscribe HTTP/1.1\r\nHost: x\r\n\
         content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n\
         authorization: Bearer {}\r\ncontent-length: 5\r\n\r\n",
        login.token
    );
    stream.write_all(subscribe.as_bytes()).await.unwrap();
    stream.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    t.user("bob")
        .await
        .send(&To::User("alice".into()), "still streaming", None)
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("still streaming") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&got)
        );
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the stream answers")
            .unwrap();
        assert!(
            n > 0,
            "the stream was cut: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    drop(alice);
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections_across_doors() {
    let t = TestServer::start_with(ServeArgs {
        max_connections_per_ip: Some(3),
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(LineClient::connect(t.server.talk_addr()).await.unwrap());
    }
    // The fourth, on the line door, is told why and closed.
    let mut fourth = TcpStream::connect(t.server.talk_addr()).await.unwrap();
    let said = read_until_closed(&mut fourth).await;
    assert!(
        said.contains("-ERR limit too many connections from your address"),
        "{said}"
    );
    // The cap counts every door: the binary door refuses too, with a BYE.
    let binary = WireClient::connect(t.server.wire_addr()).await.unwrap();
    let bye = bye_of(&binary).await;
    assert_eq!(Status::from_u8(bye.status), Some(Status::Limit));

    // A connection that leaves makes room.
    held.pop();
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = LineClient::connect(t.server.talk_addr()).await
            && c.welcome.starts_with("* welcome")
        {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "no room after a connection left");
}

#[tokio::test]
async fn the_total_cap_refuses_clearly() {
    let t = TestServer::start_with(ServeArgs {
        max_connections: Some(2),
        ..Default::default()
    })
    .await;
    let _a = LineClient::connect(t.server.talk_addr()).await.unwrap();
    let _b = WireClient::connect(t.server.wire_addr()).await.unwrap();
    let mut third = TcpStream::connect(t.server.talk_addr()).await.unwrap();
    let said = read_until_closed(&mut third).await;
    assert!(
        said.contains("-ERR limit too many connections; try again later"),
        "{said}"
    );
}

fn limited(per_second: f64, burst: u32) -> ServeArgs {
    ServeArgs {
        send_rate: Some(per_second),
        send_burst: Some(burst),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_line_speaker_is_slowed_past_its_burst_then_cut_and_nothing_taken_is_lost() {
    let t = TestServer::start_with(limited(10.0, 2)).await;
    let mut listener = t.line_user("listener").await;
    let mut speaker = t.line_user("speaker").await;

    // Within burst and patience: slowed, never refused.
    let started = Instant::now();
    for i in 0..4 {
        speaker.send_line(&format!("paced {i}")).await.unwrap();
    }
    for i in 0..4 {
        assert_eq!(
            listener.next_delivery().await.unwrap(),
            ServerLine::Room {
                room: "lobby".into(),
                from: "speaker".into(),
                text: format!("paced {i}")
            }
        );
    }
    // Two sends over the burst each waited a tenth of a second.
    assert!(started.elapsed() >= Duration::from_millis(200));

    // Pushing on without a pause: cut off with a reason.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flood: String = (0..50).map(|i| format!("flood {i}\r\n")).collect();
    speaker.send_raw(flood.as_bytes()).await.unwrap();
    let end = loop {
        match speaker.next_delivery().await {
            Ok(ServerLine::Err { code, text }) => break (code, text),
            Ok(_) => continue,
            Err(e) => panic!("closed without a reason: {e}"),
        }
    };
    assert_eq!(end.0, "flood", "{end:?}");
    assert!(end.1.contains("Reconnect in"), "{end:?}");

    // What was taken before the cut is all delivered, in order; nothing
    // after it.
    let mut got = Vec::new();
    while let Ok(Ok(line)) =
        tokio::time::timeout(Duration::from_millis(500), listener.next_delivery()).await
    {
        if let ServerLine::Room { text, .. } = line {
            got.push(text);
        }
    }
    let expected: Vec<String> = (0..got.len()).map(|i| format!("flood {i}")).collect();
    assert_eq!(got, expected);
    assert!((2..50).contains(&got.len()), "{got:?}");
}

#[tokio::test]
async fn a_binary_flood_ends_with_a_flood_bye() {
    let t = TestServer::start_with(limited(10.0, 2)).await;
    let _room = t.line_user("listener").await;
    let speaker = t.wire_user("speaker").await;
    let mut frames = Vec::new();
    for id in 1..=50u32 {
        let args: Vec<Bytes> = vec![arg::str("lobby"), arg::str("flood"), arg::str("")];
        Frame::request(op::SEND_ROOM, id, args).encode(&mut frames);
    }
    speaker.send_raw(&frames).await.unwrap();
    let bye = bye_of(&speaker).await;
    assert_eq!(Status::from_u8(bye.status), Some(Status::Flood));
}

#[tokio::test]
async fn grpc_sends_far_over_the_rate_get_resource_exhausted_with_the_wait() {
    let t = TestServer::start_with(limited(10.0, 2)).await;
    t.line_user("bob").await;
    let alice = t.user("alice").await;
    let sends = (0..40).map(|i| {
        let alice = alice.clone();
        async move {
            alice
                .send(&To::User("bob".into()), &format!("m{i}"), None)
                .await
        }
    });
    let results = futures::future::join_all(sends).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "forty sends at once went through");
    let said = refused[0].to_string();
    assert!(said.contains("try again in"), "{said}");
    // Those let through were slowed, not refused.
    assert!(results.iter().filter(|r| r.is_ok()).count() >= 2);
}

#[tokio::test]
async fn the_total_cap_stays_under_the_open_file_limit() {
    let (_dir, data) = common::data_dir();
    // 128 files: the server keeps 64 for itself, so it admits 64 clients and
    // refuses the rest clearly instead of failing to accept them.
    let server = common::ChildServer::start_limited(&data, &[], Some(128));
    let mut held = Vec::new();
    let (mut welcomed, mut refused) = (0, 0);
    for i in 0..100u8 {
        // Several source addresses, so the per-address cap plays no part.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 1, i % 4 + 1], 0)))
            .unwrap();
        let mut stream = socket.connect(server.talk).await.unwrap();
        let mut first = vec![0; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
            .await
            .expect("every connection is answered, none left hanging")
            .unwrap();
        let said = String::from_utf8_lossy(&first[..n]).into_owned();
        if said.starts_with("* welcome") {
            welcomed += 1;
            held.push(stream);
        } else {
            assert!(
                said.contains("-ERR limit too many connections; try again later"),
                "{said:?}"
            );
            refused += 1;
        }
    }
    assert_eq!((welcomed, refused), (64, 36));
    let log = server.log.lock().unwrap();
    assert!(
        !log.iter().any(|line| line.contains("accept failed")),
        "accepts failed: {log:#?}"
    );
}

#[tokio::test]
async fn logging_in_again_earns_no_new_burst() {
    let t = TestServer::start_with(limited(10.0, 2)).await;
    let _listener = t.line_user("listener").await;
    let mut speaker = t.line_user("speaker").await;
    // Three sends a login would each fit a fresh burst and its patience;
    // the allowance is the connection's, so the third login's sends flood.
    let mut cycle = String::new();
    for round in 0..3 {
        for i in 0..3 {
            cycle.push_str(&format!("round {round} line {i}\r\n"));
        }
        cycle.push_str(&format!(
            "/logout\r\n/login speaker {}\r\n",
            common::PASSWORD
        ));
    }
    speaker.send_raw(cycle.as_bytes()).await.unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), speaker.next_delivery()).await {
            Ok(Ok(ServerLine::Err { code, .. })) => break code,
            Ok(Ok(_)) => continue,
            other => panic!("no flood: {other:?}"),
        }
    };
    assert_eq!(end, "flood");
}
