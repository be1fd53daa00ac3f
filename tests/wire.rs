//! The binary protocol over real sockets: every capability, replies matched
//! by request id, pushes told apart, and bad frames answered or closed on
//! with a reason while a neighbour carries on undisturbed.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use bytes::Bytes;
use common::{PASSWORD, TestServer};
use meshtalk::client::wire::{WireClient, WireError};
use meshtalk::codec::frame::{Frame, VERSION, arg};
use meshtalk::codec::wire::{Status, op};
use meshtalk::core::Target;

fn status<T: std::fmt::Debug>(result: Result<T, WireError>) -> Status {
    match result {
        Err(WireError::Rejected {
            status: Some(status),
            ..
        }) => status,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn every_capability_over_the_binary_protocol() {
    let t = TestServer::start().await;
    let alice = t.wire_user("alice").await;
    let bob = t.wire_user("bob").await;

    // DMs: the reply to the sender, a push to the recipient.
    let sent = alice.send_dm("BOB", "lunch?", "c-1").await.unwrap();
    let m = bob.next_message().await.unwrap();
    assert_eq!(
        (m.id, m.from.as_str(), m.body.as_str()),
        (sent.id, "alice", "lunch?")
    );
    assert_eq!(m.to, Target::User("bob".into()));
    assert_eq!(m.client_msg_id.as_deref(), Some("c-1"));
    let retry = alice.send_dm("bob", "lunch?", "c-1").await.unwrap();
    assert!(retry.duplicate && retry.id == sent.id);
    bob.ack(&[m.id]).await.unwrap();

    // Rooms.
    assert_eq!(alice.join("#Rust").await.unwrap(), "Rust");
    bob.join("rust").await.unwrap();
    let said = alice.send_room("rust", "hello rust", "").await.unwrap();
    let m = bob.next_message().await.unwrap();
    assert_eq!((m.id, m.to), (said.id, Target::Room("Rust".into())));
    let history = bob.history(true, "rust", 10).await.unwrap();
    assert_eq!(
        history.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["hello rust"]
    );
    let dms = bob.history(false, "alice", 10).await.unwrap();
    assert_eq!(dms.len(), 1);
    assert_eq!(
        bob.call(op::LEAVE, vec![arg::str("rust")]).await.unwrap(),
        [arg::bool(true)]
    );
    let rooms = bob.call(op::ROOMS, vec![]).await.unwrap();
    assert_eq!(rooms.len(), 6, "two rooms, three arguments each");
    assert_eq!(rooms[0], arg::str("lobby"));
    assert_eq!(
        rooms[3..],
        [arg::str("Rust"), arg::u32(1), arg::bool(false)]
    );

    // Views.
    assert_eq!(bob.who().await.unwrap(), ["alice", "bob"]);
    let users = bob
        .call(op::LIST_USERS, vec![arg::str("a*")])
        .await
        .unwrap();
    assert_eq!(
        users,
        [arg::str("alice"), arg::bool(true), arg::str("test-node")]
    );
    let stats = bob.call(op::STATS, vec![]).await.unwrap();
    assert_eq!(stats[0], arg::u64(2), "messages");
    assert_eq!(stats[1], arg::u64(2), "accounts");
    assert_eq!(stats[5], arg::str("test-node"));
    let echo = bob
        .call(op::PING, vec![arg::str("x"), arg::str("y")])
        .await
        .unwrap();
    assert_eq!(echo, [arg::str("x"), arg::str("y")]);

    // Operators only.
    assert_eq!(status(bob.call(op::PEERS, vec![]).await), Status::Perm);
    let root = t.wire_user("root").await;
    assert_eq!(
        root.call(op::TOPOLOGY, vec![]).await.unwrap(),
        [arg::u32(1), arg::str("test-node")]
    );
    assert_eq!(
        status(
            root.call(op::PEER_CONNECT, vec![arg::str("h"), arg::u16(1)])
                .await
        ),
        Status::Invalid
    );

    // Log out, log in elsewhere: waiting messages arrive there.
    bob.call(op::LOGOUT, vec![]).await.unwrap();
    assert_eq!(status(bob.who().await), Status::Auth);
    let later = alice
        .send_dm("bob", "while you were out", "")
        .await
        .unwrap();
    let bob2 = WireClient::connect(t.server.wire_addr()).await.unwrap();
    bob2.login("bob", PASSWORD).await.unwrap();
    let waiting = bob2.next_message().await.unwrap();
    assert_eq!(waiting.id, later.id);

    bob2.call(op::DELETE_ACCOUNT, vec![arg::str(PASSWORD)])
        .await
        .unwrap();
    assert_eq!(
        status(alice.send_dm("bob", "gone?", "").await),
        Status::NotFound
    );
}

#[tokio::test]
async fn concurrent_requests_are_matched_by_request_id() {
    let t = TestServer::start().await;
    let alice = t.wire_user("alice").await;
    t.wire_user("bob").await;
    let sends = (0..50).map(|i| {
        let alice = alice.clone();
        async move {
            (
                i,
                alice
                    .send_dm("bob", &format!("m{i}"), &format!("id-{i}"))
                    .await
                    .unwrap(),
            )
        }
    });
    let results = futures::future::join_all(sends).await;
    let history = alice.history(false, "bob", 100).await.unwrap();
    for (i, sent) in results {
        let stored = history.iter().find(|m| m.id == sent.id).unwrap();
        assert_eq!(
            stored.body,
            format!("m{i}"),
            "reply {i} matched its own request"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_error_replies_and_the_connection_goes_on() {
    let t = TestServer::start().await;
    let c = WireClient::connect(t.server.wire_addr()).await.unwrap();
    assert_eq!(status(c.who().await), Status::Auth, "log in first");
    assert_eq!(status(c.login("nobody", PASSWORD).await), Status::Auth);
    assert_eq!(
        status(c.register("no way", PASSWORD).await),
        Status::Invalid
    );
    c.register("carol", PASSWORD).await.unwrap();
    assert_eq!(status(c.register("CAROL", PASSWORD).await), Status::Exists);
    c.login("carol", PASSWORD).await.unwrap();

    assert_eq!(status(c.call(0x5e, vec![]).await), Status::UnknownOpcode);
    assert_eq!(status(c.call(op::JOIN, vec![]).await), Status::Arguments);
    assert_eq!(
        status(c.call(op::WHO, vec![arg::str("x")]).await),
        Status::Arguments
    );
    assert_eq!(
        status(
            c.call(op::JOIN, vec![Bytes::from_static(b"\xff\xfe")])
                .await
        ),
        Status::Utf8
    );
    assert_eq!(
        status(c.call(op::ACK, vec![arg::str("abc")]).await),
        Status::Arguments
    );
    assert_eq!(
        status(
            c.call(
                op::HISTORY,
                vec![
                    Bytes::from_static(&[7]),
                    arg::str("x"),
                    arg::u64(0),
                    arg::u32(1),
                    arg::bool(false)
                ]
            )
            .await
        ),
        Status::Arguments
    );
    assert_eq!(
        status(c.send_dm("nobody", "hi", "").await),
        Status::NotFound
    );
    assert_eq!(
        status(c.send_room("nowhere", "hi", "").await),
        Status::NotFound
    );
    assert_eq!(status(c.send_room("lobby", "", "").await), Status::Invalid);
    assert_eq!(
        status(c.send_room("lobby", &"x".repeat(4097), "").await),
        Status::Invalid
    );

    // A frame whose arguments overrun it: the length still delimits it, so
    // it is answered and the next frame is read as usual.
    let mut raw = tokio::net::TcpStream::connect(t.server.wire_addr())
        .await
        .unwrap();
    let mut lying = Frame::request(op::PING, 1000, vec![arg::str("abc")])
        .to_bytes()
        .to_vec();
    lying[12] = 3; // claims three arguments, carries one
    let mut lying_ack = Frame::request(op::ACK, 1001, vec![arg::u64(1)])
        .to_bytes()
        .to_vec();
    lying_ack[12] = 2;
    lying.extend_from_slice(&lying_ack);
    lying.extend_from_slice(&Frame::request(op::PING, 1002, vec![]).to_bytes());
    raw.write_all(&lying).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut replies = vec![];
    while replies.len() < 3 {
        raw.read_buf(&mut buf).await.unwrap();
        while let Some(frame) = Frame::decode(&mut buf, 1 << 20).unwrap() {
            replies.push(frame);
        }
    }
    assert_eq!(
        (replies[0].request_id, replies[0].status),
        (1000, Status::BadFrame as u8)
    );
    let why = String::from_utf8(replies[0].args[0].to_vec()).unwrap();
    assert!(why.contains("runs past the end"), "{why}");
    assert_eq!(
        (replies[1].request_id, replies[1].opcode, replies[1].status),
        (1001, op::ACK, Status::BadFrame as u8)
    );
    assert_eq!((replies[2].request_id, replies[2].status), (1002, 0));
    assert_eq!(c.who().await.unwrap(), ["carol"], "still the same session");
}

async fn expect_bye(c: &WireClient, expected: Status) -> String {
    let frame = tokio::time::timeout(Duration::from_secs(5), c.next_push())
        .await
        .expect("a BYE in time")
        .expect("a BYE before the close");
    assert_eq!(frame.opcode, op::PUSH_BYE);
    assert_eq!(Status::from_u8(frame.status), Some(expected));
    let text = String::from_utf8(frame.args[0].to_vec()).unwrap();
    assert!(c.next_push().await.is_none(), "then the server closes");
    text
}

#[tokio::test]
async fn untrustworthy_streams_are_closed_with_a_reason_and_neighbours_carry_on() {
    let t = TestServer::start().await;
    let neighbour = t.wire_user("neighbour").await;

    // A length over the limit.
    let c = WireClient::connect(t.server.wire_addr()).await.unwrap();
    c.send_raw(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let why = expect_bye(&c, Status::TooLarge).await;
    assert!(why.contains("over the limit"), "{why}");

    // A length too short for a header.
    let c = WireClient::connect(t.server.wire_addr()).await.unwrap();
    c.send_raw(&[0, 0, 0, 2, 1, 1]).await.unwrap();
    expect_bye(&c, Status::BadFrame).await;

    // Another protocol version: answered, then closed.
    let c = WireClient::connect(t.server.wire_addr()).await.unwrap();
    let mut frame = Frame::request(op::PING, 5, vec![]);
    frame.version = 9;
    let reply = c.exchange(frame).await.unwrap();
    assert_eq!(Status::from_u8(reply.status), Some(Status::Version));
    assert_eq!(reply.version, VERSION);
    assert!(c.next_push().await.is_none());

    // A truncated frame, then the client vanishes.
    let c = WireClient::connect(t.server.wire_addr()).await.unwrap();
    let whole = Frame::request(op::PING, 1, vec![arg::str("half")]).to_bytes();
    c.send_raw(&whole[..whole.len() - 2]).await.unwrap();
    drop(c);

    // A client that disconnects abruptly while logged in.
    let gone = t.wire_user("gone").await;
    drop(gone);

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(neighbour.who().await.unwrap(), ["neighbour"]);
    assert_eq!(
        neighbour
            .call(op::PING, vec![arg::str("still fine")])
            .await
            .unwrap(),
        [arg::str("still fine")]
    );
}

#[tokio::test]
async fn pipelined_sends_are_stored_and_answered_in_request_order() {
    let t = TestServer::start().await;
    let c = t.wire_user("piper").await;
    drop(c);
    let mut raw = tokio::net::TcpStream::connect(t.server.wire_addr())
        .await
        .unwrap();
    let mut burst = Frame::request(op::LOGIN, 1, vec![arg::str("piper"), arg::str(PASSWORD)])
        .to_bytes()
        .to_vec();
    // More than a connection's window of sends, so it fills and drains.
    for i in 0..300u32 {
        let frame = if i == 50 {
            Frame::request(op::WHO, 2 + i, vec![])
        } else if i == 70 {
            Frame::request(
                op::SEND_ROOM,
                2 + i,
                vec![arg::str("nowhere"), arg::str("x"), arg::str("")],
            )
        } else {
            Frame::request(
                op::SEND_ROOM,
                2 + i,
                vec![arg::str("lobby"), arg::str(&format!("m{i}")), arg::str("")],
            )
        };
        burst.extend_from_slice(&frame.to_bytes());
    }
    raw.write_all(&burst).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut replies = vec![];
    while replies.len() < 301 {
        raw.read_buf(&mut buf).await.unwrap();
        while let Some(frame) = Frame::decode(&mut buf, 1 << 20).unwrap() {
            if frame.request_id != 0 {
                replies.push(frame);
            }
        }
    }
    let ids: Vec<u32> = replies.iter().map(|r| r.request_id).collect();
    assert_eq!(
        ids,
        (1..=301).collect::<Vec<_>>(),
        "replies in request order"
    );
    assert_eq!(replies[51].opcode, op::WHO);
    assert_eq!(replies[71].status, Status::NotFound as u8);
    let stored: Vec<u64> = replies[1..]
        .iter()
        .filter(|r| r.opcode == op::SEND_ROOM && r.status == 0)
        .map(|r| arg::to_u64(&r.args[0]).unwrap())
        .collect();
    assert_eq!(stored.len(), 298);
    assert!(
        stored.windows(2).all(|w| w[0] < w[1]),
        "stored in request order"
    );
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_every_reply_it_is_owed() {
    let t = TestServer::start().await;
    drop(t.wire_user("closer").await);
    let mut raw = tokio::net::TcpStream::connect(t.server.wire_addr())
        .await
        .unwrap();
    let mut burst = Frame::request(op::LOGIN, 1, vec![arg::str("closer"), arg::str(PASSWORD)])
        .to_bytes()
        .to_vec();
    for i in 0..40u32 {
        let args = vec![arg::str("lobby"), arg::str(&format!("m{i}")), arg::str("")];
        burst.extend_from_slice(&Frame::request(op::SEND_ROOM, 2 + i, args).to_bytes());
    }
    raw.write_all(&burst).await.unwrap();
    raw.shutdown().await.unwrap(); // done sending; still reading
    let mut buf = bytes::BytesMut::new();
    let mut replies = vec![];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read_buf(&mut buf))
            .await
            .expect("the server answers, then closes")
            .unwrap();
        while let Some(frame) = Frame::decode(&mut buf, 1 << 20).unwrap() {
            replies.push(frame);
        }
        if n == 0 {
            break;
        }
    }
    assert_eq!(replies.len(), 41, "a reply for the login and every send");
    assert!(replies.iter().all(|r| r.status == 0));
    let sent: Vec<u32> = replies.iter().map(|r| r.request_id).collect();
    assert_eq!(sent, (1..=41).collect::<Vec<_>>());
}

/// Logs bob in on a new connection and takes `n` pushes: their ids, sorted.
async fn relogin(t: &TestServer, n: usize) -> (WireClient, Vec<u64>) {
    let bob = WireClient::connect(t.server.wire_addr()).await.unwrap();
    bob.login("bob", PASSWORD).await.unwrap();
    let mut ids = vec![];
    for _ in 0..n {
        ids.push(bob.next_message().await.unwrap().id);
    }
    ids.sort_unstable();
    (bob, ids)
}

#[tokio::test]
async fn one_ack_of_direct_and_room_ids_stops_exactly_those() {
    let t = TestServer::start().await;
    let alice = t.wire_user("alice").await;
    let bob = t.wire_user("bob").await;
    bob.call(op::LOGOUT, vec![]).await.unwrap();
    let (mut dms, mut speech) = (vec![], vec![]);
    for i in 0..5 {
        dms.push(
            alice
                .send_dm("bob", &format!("dm{i}"), "")
                .await
                .unwrap()
                .id,
        );
        let said = alice.send_room("lobby", &format!("room{i}"), "").await;
        speech.push(said.unwrap().id);
    }

    let (bob, got) = relogin(&t, 10).await;
    let mut all = [dms.clone(), speech.clone()].concat();
    all.sort_unstable();
    assert_eq!(got, all);

    // The first three DMs one by one, the first three room messages by the
    // newest of them, and an id that was never sent: one frame.
    let mut acked = dms[..3].to_vec();
    acked.extend([speech[2], 999_999]);
    bob.ack(&acked).await.unwrap();
    // An ACK with one argument that is not an id is refused as a whole.
    assert_eq!(
        status(
            bob.call(op::ACK, vec![arg::u64(dms[3]), arg::str("abc")])
                .await
        ),
        Status::Arguments
    );
    drop(bob);

    let (bob, again) = relogin(&t, 4).await;
    let mut rest = [&dms[3..], &speech[3..]].concat();
    rest.sort_unstable();
    assert_eq!(again, rest, "only what was not acknowledged comes again");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), bob.next_message())
            .await
            .is_err(),
        "and nothing more"
    );
}

#[tokio::test]
async fn a_client_that_only_sends_drops_messages_and_still_gets_replies_and_bye() {
    let t = TestServer::start().await;
    let bot = t.wire_user("bot").await;
    let carol = t.wire_user("carol").await;
    let bob = t.wire_user("bob").await;
    bot.ignore_messages();

    bob.send_dm("bot", "for the bot", "").await.unwrap();
    let said = bob.send_room("lobby", "to the room", "").await.unwrap();
    // Carol, reading as usual, gets the speech the bot drops.
    assert_eq!(carol.next_message().await.unwrap().id, said.id);
    let sent = bot.send_room("lobby", "beep", "").await.unwrap();
    assert_eq!(carol.next_message().await.unwrap().id, sent.id);
    assert_eq!(
        bot.call(op::PING, vec![arg::str("alive")]).await.unwrap(),
        [arg::str("alive")]
    );
    if let Ok(push) = tokio::time::timeout(Duration::from_millis(300), bot.next_push()).await {
        panic!("expected no push, got {push:?}");
    }
    // A BYE is not a message: it still comes, with its reason.
    bot.send_raw(&[0x7f, 0, 0, 0]).await.unwrap();
    let why = expect_bye(&bot, Status::TooLarge).await;
    assert!(why.contains("over the limit"), "{why}");
}
