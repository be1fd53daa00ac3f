//! A subscriber that stops reading must not slow anyone else; when its queue
//! overflows it is cut off with a reason, and on return it gets what it
//! missed from the store.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{PASSWORD, TestServer, next_message};
use meshtalk::client::{Client, To};
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
