//! Replies nobody reads cost the server almost nothing: a client that opens
//! hundreds of history calls and never reads them holds a few pages, not
//! the whole history once per call.

mod common;

use std::time::Duration;

use common::{ChildServer, PASSWORD, data_dir};
use meshtalk::client::{Client, To};
use meshtalk::proto;
use tonic::transport::Endpoint;

/// HTTP/2 streams one connection opens.
const STREAMS: usize = 256;
const CONNECTIONS: usize = 3;

#[tokio::test]
async fn three_connections_of_unread_history_streams_cost_a_few_megabytes() {
    let (_dir, data) = data_dir();
    let server = ChildServer::start_with(&data, &["--send-rate", "0"]);
    let c = Client::connect(&server.url).await.unwrap();
    c.register("hoarder", PASSWORD).await.unwrap();
    let (c, _) = c.login("hoarder", PASSWORD).await.unwrap();
    // A thousand messages of 4 KB: each call could ask for 4 MB.
    let body = "x".repeat(4000);
    for chunk in 0..20 {
        let sends = (0..50).map(|i| {
            let (c, body) = (c.clone(), body.clone());
            async move {
                c.send(
                    &To::Room("lobby".into()),
                    &body,
                    Some(&format!("{chunk}-{i}")),
                )
                .await
            }
        });
        for sent in futures::future::join_all(sends).await {
            sent.unwrap();
        }
    }
    let mut sessions = Vec::new();
    for _ in 0..CONNECTIONS {
        // Small windows, never opened further: the client reads nothing.
        let channel = Endpoint::from_shared(server.url.clone())
            .unwrap()
            .initial_connection_window_size(65_535)
            .initial_stream_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let (session, _) = Client::new(channel)
            .login("hoarder", PASSWORD)
            .await
            .unwrap();
        sessions.push(session);
    }
    // One history read first, so the store's page cache and read
    // connections are counted before, not as the calls' cost.
    assert_eq!(
        c.recent(&To::Room("lobby".into()), 1000)
            .await
            .unwrap()
            .len(),
        1000
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.resident();

    let mut held = Vec::new();
    for session in &sessions {
        for _ in 0..STREAMS {
            let session = session.clone();
            held.push(tokio::spawn(async move {
                let request = session.request(proto::GetMessagesRequest {
                    conversation: Some(proto::get_messages_request::Conversation::Room(
                        "lobby".into(),
                    )),
                    after_id: 0,
                    limit: 1000,
                    newest: false,
                });
                // The call is made and its stream kept, unread, until the
                // test ends.
                let stream = session.chat().get_messages(request).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(stream);
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = server.resident().saturating_sub(before);
    eprintln!(
        "{CONNECTIONS} connections x {STREAMS} unread history calls: +{} KiB resident",
        grown / 1024
    );
    assert!(
        grown < 16 << 20,
        "unread history calls grew the server by {} MiB",
        grown >> 20
    );

    // Readers are not starved: a fresh session reads the whole history.
    let reader = Client::connect(&server.url).await.unwrap();
    reader.register("reader", PASSWORD).await.unwrap();
    let (reader, _) = reader.login("reader", PASSWORD).await.unwrap();
    let got = reader
        .recent(&To::Room("lobby".into()), 1000)
        .await
        .unwrap();
    assert_eq!(got.len(), 1000);
    for task in held {
        task.abort();
    }
}

#[tokio::test]
async fn a_history_written_in_one_piece_is_capped_and_pages_on() {
    let t = common::TestServer::start().await;
    let speaker = t.user("speaker").await;
    let body = "y".repeat(4000);
    let sends = (0..200).map(|i| {
        let (speaker, body) = (speaker.clone(), body.clone());
        async move {
            speaker
                .send(&To::Room("lobby".into()), &body, Some(&i.to_string()))
                .await
        }
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
    let reader = t.wire_user("reader").await;
    let mut seen = 0;
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = reader
            .history_page(true, "lobby", after, 1000, false)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        let bytes: usize = page.iter().map(|m| m.body.len()).sum();
        assert!(
            bytes <= meshtalk::core::HISTORY_REPLY_BYTES,
            "{bytes} bytes in one reply"
        );
        after = last.id;
        seen += page.len();
        pages += 1;
    }
    assert_eq!(seen, 200, "paging by cursor reads everything");
    assert!(pages >= 4, "{pages} pages");

    // The line protocol's /history keeps the newest that fit.
    let mut line = t.line_user("liner").await;
    let reply = line.request("/history 1000").await.unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    assert!(reply.lines.is_empty(), "history comes as room lines");
    let shown = line.take_deliveries();
    assert!((40..200).contains(&shown.len()), "{} lines", shown.len());
}
