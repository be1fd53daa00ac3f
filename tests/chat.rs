//! Messaging over gRPC: direct messages, rooms, history, acknowledgements,
//! the bidirectional stream, stats and who.

mod common;

use common::{TestServer, assert_quiet, next_message, room_of};
use futures::StreamExt;
use meshtalk::client::{ClientError, To};
use meshtalk::proto::{self, client_frame, server_frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn rpc_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Code, String) {
    match result {
        Err(ClientError::Rpc(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

fn to_bob() -> To {
    To::User("bob".into())
}

#[tokio::test]
async fn online_dm_reaches_every_session_of_the_recipient_at_once() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let bob1 = t.user("bob").await;
    let bob2 = t.session("bob").await;
    let mut s1 = bob1.subscribe().await.unwrap();
    let mut s2 = bob2.subscribe().await.unwrap();
    let mut alice_stream = alice.subscribe().await.unwrap();

    let sent = alice
        .send(&To::User("BOB".into()), "lunch?", None)
        .await
        .unwrap();
    assert!(sent.id > 0 && !sent.duplicate);
    for stream in [&mut s1, &mut s2] {
        let m = next_message(stream).await;
        assert_eq!(
            (m.id, m.sender.as_str(), m.body.as_str()),
            (sent.id, "alice", "lunch?")
        );
        assert_eq!(m.to, Some(proto::message::To::User("bob".into())));
    }
    assert_quiet(&mut alice_stream).await;
}

#[tokio::test]
async fn offline_dms_arrive_in_order_and_until_acked() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut ids = vec![];
    for i in 0..20 {
        ids.push(
            alice
                .send(&to_bob(), &format!("m{i}"), None)
                .await
                .unwrap()
                .id,
        );
    }
    let mut stream = bob.subscribe().await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let m = next_message(&mut stream).await;
        assert_eq!((m.id, m.body), (*id, format!("m{i}")));
    }
    drop(stream);

    // Nothing was acked: all of it comes again.
    let mut stream = bob.subscribe().await.unwrap();
    let mut seen = vec![];
    for _ in 0..20 {
        seen.push(next_message(&mut stream).await.id);
    }
    assert_eq!(seen, ids);
    drop(stream);

    // Acking the first half stops only those.
    bob.ack(ids[..10].to_vec()).await.unwrap();
    let mut stream = bob.subscribe().await.unwrap();
    for id in &ids[10..] {
        assert_eq!(next_message(&mut stream).await.id, *id);
    }
    assert_quiet(&mut stream).await;
    bob.ack(ids[10..].to_vec()).await.unwrap();
    drop(stream);
    let mut stream = bob.subscribe().await.unwrap();
    assert_quiet(&mut stream).await;
}

#[tokio::test]
async fn a_retried_client_msg_id_is_stored_once() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let first = alice.send(&to_bob(), "once", Some("c-1")).await.unwrap();
    let retry = alice.send(&to_bob(), "once", Some("c-1")).await.unwrap();
    assert_eq!(retry.id, first.id);
    assert!(retry.duplicate && !first.duplicate);
    let other = alice.send(&to_bob(), "twice", Some("c-2")).await.unwrap();
    assert_ne!(other.id, first.id);

    let mut stream = bob.subscribe().await.unwrap();
    let m = next_message(&mut stream).await;
    assert_eq!((m.id, m.client_msg_id.as_str()), (first.id, "c-1"));
    assert_eq!(next_message(&mut stream).await.id, other.id);
    assert_quiet(&mut stream).await;
    assert_eq!(alice.stats(false).await.unwrap().messages, 2);
}

#[tokio::test]
async fn room_speech_reaches_members_except_the_sending_session() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let alice_phone = t.session("alice").await;
    let bob = t.user("bob").await;
    let carol = t.user("carol").await;

    assert_eq!(alice.join("#Rust").await.unwrap().room, "Rust");
    let joined = bob.join("rust").await.unwrap();
    assert!(joined.joined);
    assert_eq!(joined.room, "Rust", "the room keeps its first name");
    assert!(!bob.join("#rust").await.unwrap().joined);

    let mut a = alice.subscribe().await.unwrap();
    let mut a_phone = alice_phone.subscribe().await.unwrap();
    let mut b = bob.subscribe().await.unwrap();
    let mut c = carol.subscribe().await.unwrap();

    let sent = alice
        .send(&To::Room("#rust".into()), "borrowck!", None)
        .await
        .unwrap();
    for stream in [&mut b, &mut a_phone] {
        let m = next_message(stream).await;
        assert_eq!(
            (m.id, room_of(&m), m.sender.as_str()),
            (sent.id, Some("Rust"), "alice")
        );
    }
    assert_quiet(&mut a).await;
    assert_quiet(&mut c).await;

    // Everyone is in the lobby.
    let sent = carol
        .send(&To::Room("lobby".into()), "hello", None)
        .await
        .unwrap();
    for stream in [&mut a, &mut a_phone, &mut b] {
        assert_eq!(next_message(stream).await.id, sent.id);
    }

    // Non-members may not speak; after leaving, nothing more arrives.
    let (code, message) = rpc_error(carol.send(&To::Room("rust".into()), "hi", None).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(message.contains("join it first"), "{message}");
    assert!(bob.leave("#rust").await.unwrap());
    assert!(!bob.leave("#rust").await.unwrap());
    alice
        .send(&To::Room("rust".into()), "anyone?", None)
        .await
        .unwrap();
    assert_quiet(&mut b).await;

    let (code, message) = rpc_error(bob.leave("lobby").await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("lobby"), "{message}");

    let rooms = bob.rooms().await.unwrap();
    let rust = rooms.iter().find(|r| r.name == "Rust").unwrap();
    assert_eq!((rust.members, rust.joined), (1, false));
    let lobby = rooms.iter().find(|r| r.name == "lobby").unwrap();
    assert_eq!((lobby.members, lobby.joined), (3, true));
}

#[tokio::test]
async fn history_streams_after_a_cursor_in_order() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let mut room_ids = vec![];
    for i in 0..5 {
        room_ids.push(
            alice
                .send(&To::Room("lobby".into()), &format!("r{i}"), None)
                .await
                .unwrap()
                .id,
        );
    }
    let dm1 = alice.send(&to_bob(), "hi bob", None).await.unwrap().id;
    let dm2 = bob
        .send(&To::User("alice".into()), "hi alice", None)
        .await
        .unwrap()
        .id;

    let history = |after: u64, limit: u32, newest: bool, conversation| {
        let bob = bob.clone();
        async move {
            bob.chat()
                .get_messages(bob.request(proto::GetMessagesRequest {
                    conversation: Some(conversation),
                    after_id: after,
                    limit,
                    newest,
                }))
                .await
                .map(|r| r.into_inner())
        }
    };
    use proto::get_messages_request::Conversation;
    let all: Vec<_> = history(0, 0, false, Conversation::Room("lobby".into()))
        .await
        .unwrap()
        .map(|m| m.unwrap().id)
        .collect()
        .await;
    assert_eq!(all, room_ids);
    let page: Vec<_> = history(room_ids[1], 2, false, Conversation::Room("lobby".into()))
        .await
        .unwrap()
        .map(|m| m.unwrap().body)
        .collect()
        .await;
    assert_eq!(page, ["r2", "r3"]);
    let newest: Vec<_> = history(0, 2, true, Conversation::Room("lobby".into()))
        .await
        .unwrap()
        .map(|m| m.unwrap().body)
        .collect()
        .await;
    assert_eq!(newest, ["r3", "r4"]);
    let dms: Vec<_> = history(0, 0, false, Conversation::User("Alice".into()))
        .await
        .unwrap()
        .map(|m| m.unwrap().id)
        .collect()
        .await;
    assert_eq!(dms, [dm1, dm2]);

    let status = history(0, 0, false, Conversation::Room("nowhere".into()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("#nowhere"),
        "{}",
        status.message()
    );
    alice.join("secret").await.unwrap();
    let status = history(0, 0, false, Conversation::Room("secret".into()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn sends_are_checked() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let (code, message) = rpc_error(alice.send(&To::User("nobody".into()), "hi", None).await);
    assert_eq!(code, Code::NotFound);
    assert_eq!(message, "no such user: nobody");
    let (code, message) = rpc_error(alice.send(&To::Room("nowhere".into()), "hi", None).await);
    assert_eq!(code, Code::NotFound);
    assert_eq!(message, "no such room: #nowhere");
    let (code, message) = rpc_error(alice.send(&To::Room("lobby".into()), "", None).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("empty"), "{message}");
    let (code, message) = rpc_error(
        alice
            .send(&To::Room("lobby".into()), &"x".repeat(4097), None)
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        message.contains("4097 bytes is over the limit of 4096"),
        "{message}"
    );
    alice
        .send(&To::Room("lobby".into()), &"x".repeat(4096), None)
        .await
        .unwrap();
    let (code, message) = rpc_error(
        alice
            .send(&To::Room("lobby".into()), "a\r\n+OK forged", None)
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("line break"), "{message}");

    let status = alice
        .chat()
        .send(alice.request(proto::SendRequest {
            to: None,
            body: "hi".into(),
            client_msg_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // A request over the decoding limit is refused before it reaches the core.
    let status = alice
        .chat()
        .send(alice.request(proto::SendRequest {
            to: Some(proto::send_request::To::Room("lobby".into())),
            body: "x".repeat(100_000),
            client_msg_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    // The connection is still good.
    alice
        .send(&To::Room("lobby".into()), "still here", None)
        .await
        .unwrap();
}

async fn next(inbound: &mut tonic::Streaming<proto::ServerFrame>) -> server_frame::Kind {
    tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message())
        .await
        .expect("a frame within 10 s")
        .expect("stream ok")
        .expect("stream open")
        .kind
        .expect("a frame kind")
}

#[tokio::test]
async fn the_bidirectional_stream_sends_acks_and_delivers() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    let waiting = alice
        .send(&to_bob(), "while you were out", None)
        .await
        .unwrap()
        .id;

    let (tx, rx) = mpsc::channel(16);
    let mut inbound = bob
        .chat()
        .send_and_receive_message(bob.request(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    // What waited comes first.
    match next(&mut inbound).await {
        server_frame::Kind::Event(proto::Event {
            kind: Some(proto::event::Kind::Message(m)),
        }) => assert_eq!((m.id, m.body.as_str()), (waiting, "while you were out")),
        other => panic!("unexpected {other:?}"),
    }
    let send = |request_id, to: proto::send_request::To, body: &str| proto::ClientFrame {
        kind: Some(client_frame::Kind::Send(proto::OutgoingMessage {
            request_id,
            message: Some(proto::SendRequest {
                to: Some(to),
                body: body.into(),
                client_msg_id: String::new(),
            }),
        })),
    };
    tx.send(send(
        7,
        proto::send_request::To::User("alice".into()),
        "back now",
    ))
    .await
    .unwrap();
    tx.send(send(
        8,
        proto::send_request::To::User("nobody".into()),
        "hello?",
    ))
    .await
    .unwrap();
    let mut results = vec![];
    while results.len() < 2 {
        if let server_frame::Kind::SendResult(r) = next(&mut inbound).await {
            results.push(r);
        }
    }
    assert_eq!(results[0].request_id, 7);
    let Some(proto::send_result::Result::Sent(sent)) = &results[0].result else {
        panic!("{results:?}")
    };
    assert_eq!(results[1].request_id, 8);
    let Some(proto::send_result::Result::Error(e)) = &results[1].result else {
        panic!("{results:?}")
    };
    assert_eq!(e.code(), proto::ErrorCode::NotFound);
    assert_eq!(e.code, Code::NotFound as i32, "the numbers are gRPC's");
    assert_eq!(
        alice
            .recent(&to_bob(), 10)
            .await
            .unwrap()
            .last()
            .unwrap()
            .id,
        sent.id
    );

    // Live delivery on the stream, then an ack over it.
    let live = alice.send(&to_bob(), "live", None).await.unwrap().id;
    match next(&mut inbound).await {
        server_frame::Kind::Event(proto::Event {
            kind: Some(proto::event::Kind::Message(m)),
        }) => assert_eq!(m.id, live),
        other => panic!("unexpected {other:?}"),
    }
    tx.send(proto::ClientFrame {
        kind: Some(client_frame::Kind::Ack(proto::AckRequest {
            ids: vec![waiting, live],
        })),
    })
    .await
    .unwrap();
    drop(tx);
    // The server ends the call once the client has finished sending.
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(_frame) = inbound.message().await.expect("a clean end") {}
    });
    end.await
        .expect("the call ends once the client stops sending");
    let mut stream = bob.subscribe().await.unwrap();
    assert_quiet(&mut stream).await;
}

#[tokio::test]
async fn stats_and_who_describe_this_node() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let bob = t.user("bob").await;
    t.user("carol").await;
    alice.join("rust").await.unwrap();
    alice.send(&to_bob(), "one", None).await.unwrap();
    alice
        .send(&To::Room("rust".into()), "two", None)
        .await
        .unwrap();

    let _a = alice.subscribe().await.unwrap();
    let _b1 = bob.subscribe().await.unwrap();
    let _b2 = bob.subscribe().await.unwrap();
    let stats = alice.stats(false).await.unwrap();
    assert_eq!(
        (
            stats.messages,
            stats.accounts,
            stats.sessions_online,
            stats.rooms
        ),
        (2, 3, 2, 2),
        "two streams of one session count once"
    );
    assert_eq!(stats.node, "test-node");
    let who = alice.who().await.unwrap();
    let names: Vec<_> = who.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(who.missing_nodes.is_empty());
}

#[tokio::test]
async fn admin_is_for_operators_only() {
    let t = TestServer::start().await;
    let alice = t.user("alice").await;
    let root = t.user("root").await;
    let status = alice
        .admin()
        .peers(alice.request(proto::PeersRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let topology = root
        .admin()
        .topology(root.request(proto::TopologyRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topology.nodes, ["test-node"]);
    assert!(
        root.admin()
            .peers(root.request(proto::PeersRequest {}))
            .await
            .unwrap()
            .into_inner()
            .peers
            .is_empty()
    );
}

#[tokio::test]
async fn live_deliveries_arrive_in_id_order_under_concurrent_senders() {
    let t = TestServer::start().await;
    let watcher = t.user("watcher").await;
    let mut stream = watcher.subscribe().await.unwrap();
    let mut senders = Vec::new();
    for s in 0..8 {
        let client = t.user(&format!("sender{s}")).await;
        senders.push(tokio::spawn(async move {
            for i in 0..40 {
                client
                    .send(&To::Room("lobby".into()), &format!("{s}-{i}"), None)
                    .await
                    .unwrap();
            }
        }));
    }
    let mut ids = Vec::new();
    while ids.len() < 8 * 40 {
        ids.push(next_message(&mut stream).await.id);
    }
    for sender in senders {
        sender.await.unwrap();
    }
    // Ascending ids mean acknowledging the newest shown message in a room
    // can never skip an older one.
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
}

#[tokio::test]
async fn new_rooms_past_the_node_limit_are_refused() {
    let t = TestServer::start_with(meshtalk::config::ServeArgs {
        max_rooms: Some(3),
        ..Default::default()
    })
    .await;
    let alice = t.user("alice").await;
    alice.join("one").await.unwrap();
    alice.join("two").await.unwrap();
    let (code, message) = rpc_error(alice.join("three").await);
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.contains("3 rooms"), "{message}");
    // Existing rooms can still be joined.
    t.user("bob").await.join("two").await.unwrap();
}
