//! A subscriber that stops reading must not slow anyone else; when its queue
//! overflows it is cut off with a reason, and on return it gets what it
//! missed from the store.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{PASSWORD, TestServer, next_message};
use meshtalk::client::{Client, To};
use meshtalk::codec::line::ServerLine;
use meshtalk::config::ServeArgs;
use tonic::Code;

const MESSAGES: usize = 300;

#[tokio::test]
async fn a_stalled_subscriber_is_cut_loose_and_catches_up_later() {
    let t = TestServer::start_with(ServeArgs {
        queue_depth: Some(16),
        ..Default::default()
    })
    .await;
    let alice = t.user("alice").await;
    t.client()
        .await
        .register("stalled", PASSWORD)
        .await
        .unwrap();

    // The stalled reader grants the server only a small HTTP/2 window, so its
    // backlog piles up in the server's queue rather than in socket buffers.
    let channel = tonic::transport::Endpoint::from_shared(t.url.clone())
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let stalled = Client::new(channel)
        .login("stalled", PASSWORD)
        .await
        .unwrap()
        .0;
    let mut stalled_stream = stalled.subscribe().await.unwrap();

    let mut live = Vec::new();
    for name in ["carol", "dave", "erin"] {
        let client = t.user(name).await;
        let mut stream = client.subscribe().await.unwrap();
        live.push(tokio::spawn(async move {
            let mut ids = HashSet::new();
            while ids.len() < MESSAGES {
                ids.insert(next_message(&mut stream).await.id);
            }
            ids
        }));
    }

    let body = "x".repeat(2000);
    let mut sent = HashSet::new();
    for _ in 0..MESSAGES {
        sent.insert(
            alice
                .send(&To::Room("lobby".into()), &body, None)
                .await
                .unwrap()
                .id,
        );
    }
    // Every live reader got everything while the stalled one read nothing.
    for reader in live {
        let got = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("live readers are not held up")
            .unwrap();
        assert_eq!(got, sent);
    }

    // The stalled reader wakes up: it finds what was buffered, then the reason.
    let mut first_pass = HashSet::new();
    let ending = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled_stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(event)) => {
                if let Some(meshtalk::proto::event::Kind::Message(m)) = event.kind {
                    first_pass.insert(m.id);
                }
            }
            Ok(None) => panic!("the stream ended without a reason"),
            Err(status) => break status,
        }
    };
    assert_eq!(ending.code(), Code::ResourceExhausted, "{ending:?}");
    assert!(
        ending.message().contains("fell too far behind"),
        "{ending:?}"
    );
    assert!(first_pass.len() < MESSAGES, "it really overflowed");

    // Back again: everything missed comes from the store.
    let mut stream = stalled.subscribe().await.unwrap();
    let mut second_pass = HashSet::new();
    while second_pass.len() < MESSAGES {
        second_pass.insert(next_message(&mut stream).await.id);
    }
    assert_eq!(second_pass, sent);
}

#[tokio::test]
async fn a_stalled_line_client_holds_up_nobody_and_catches_up_later() {
    let t = TestServer::start_with(ServeArgs {
        queue_depth: Some(16),
        ..Default::default()
    })
    .await;
    let alice = t.user("alice").await;
    t.client()
        .await
        .register("stalled", PASSWORD)
        .await
        .unwrap();
    // A small receive buffer, as on a slow link: the server's writes back up
    // instead of vanishing into loopback socket buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(t.server.talk_addr()).await.unwrap();
    let mut stalled = meshtalk::client::line::LineClient::over(stream)
        .await
        .unwrap();
    let reply = stalled
        .request(&format!("/login stalled {PASSWORD}"))
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let mut line_reader = t.line_user("reader").await;
    let wire_reader = t.wire_user("wreader").await;

    // More than the kernel's socket buffers hold (4 MiB on a default Linux).
    const LINE_MESSAGES: usize = 2000;
    let body = "y".repeat(4000);
    let expected_line = format!("#lobby alice: {body}");
    let line_task = tokio::spawn(async move {
        for _ in 0..LINE_MESSAGES {
            let line = tokio::time::timeout(Duration::from_secs(20), line_reader.next_delivery())
                .await
                .expect("the line reader is not held up")
                .unwrap();
            assert_eq!(line.to_string(), expected_line);
        }
    });
    let wire_task = tokio::spawn(async move {
        let mut ids = HashSet::new();
        while ids.len() < LINE_MESSAGES {
            let m = tokio::time::timeout(Duration::from_secs(20), wire_reader.next_message())
                .await
                .expect("the binary reader is not held up")
                .unwrap();
            ids.insert(m.id);
        }
        ids
    });
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (alice, body) = (alice.clone(), body.clone());
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..LINE_MESSAGES / 8 {
                let sent = alice.send(&To::Room("lobby".into()), &body, None).await;
                ids.push(sent.unwrap().id);
            }
            ids
        }));
    }
    let mut sent = HashSet::new();
    for sender in senders {
        sent.extend(sender.await.unwrap());
    }
    line_task.await.unwrap();
    assert_eq!(wire_task.await.unwrap(), sent);

    // The stalled client reads at last: what reached its socket, then why it
    // was cut off.
    let mut first_pass = 0;
    let ending = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.next_delivery())
            .await
            .unwrap_or_else(|_| panic!("lines or an ending; got {first_pass} lines"))
            .unwrap()
        {
            ServerLine::Room { .. } => first_pass += 1,
            other => break other,
        }
    };
    assert!(
        matches!(&ending, ServerLine::Err { code, .. } if code == "overflow"),
        "{ending:?}"
    );
    assert!(first_pass < LINE_MESSAGES, "it really overflowed");

    // Back again: the rest comes from the store.
    let mut back = meshtalk::client::line::LineClient::connect(t.server.talk_addr())
        .await
        .unwrap();
    let reply = back
        .request(&format!("/login stalled {PASSWORD}"))
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let mut second_pass = 0;
    while first_pass + second_pass < LINE_MESSAGES {
        let line = tokio::time::timeout(Duration::from_secs(10), back.next_delivery())
            .await
            .expect("the missed messages arrive")
            .unwrap();
        assert!(matches!(line, ServerLine::Room { .. }), "{line:?}");
        second_pass += 1;
    }
}
