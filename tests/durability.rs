//! The delivery contract under a crash and a clean stop, with the server as
//! a child process: an acknowledged send survives `kill -9`, and SIGTERM
//! finishes what is in flight, tells open streams why they end and exits 0.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ChildServer, data_dir, log_in_at, next_message};
use meshtalk::client::To;
use meshtalk::config::ServeArgs;
use meshtalk::proto;
use meshtalk::server::Server;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn acked_dms_survive_kill_9_exactly_once_and_in_order() {
    let (_keep, dir) = data_dir();
    let server = ChildServer::start(&dir);
    let alice = log_in_at(&server.url, "alice", true).await.0;
    log_in_at(&server.url, "bob", true).await;
    let mut acked = Vec::with_capacity(1000);
    for i in 0..1000 {
        let sent = alice
            .send(&To::User("bob".into()), &format!("dm-{i}"), None)
            .await
            .unwrap();
        acked.push(sent.id);
    }
    server.kill9();

    let server = ChildServer::start(&dir);
    let bob = log_in_at(&server.url, "bob", false).await.0;
    let mut stream = bob.subscribe().await.unwrap();
    for (i, id) in acked.iter().enumerate() {
        let m = next_message(&mut stream).await;
        assert_eq!((m.id, m.body), (*id, format!("dm-{i}")));
    }
    common::assert_quiet(&mut stream).await;
}

#[tokio::test]
async fn sigterm_ends_streams_finishes_commits_and_exits_zero() {
    let (_keep, dir) = data_dir();
    let mut server = ChildServer::start(&dir);
    let url = server.url.clone();
    let bob = log_in_at(&url, "bob", true).await.0;
    log_in_at(&url, "alice", true).await;
    let mut stream = bob.subscribe().await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    // Senders keep sending through the signal; every send that was answered
    // must be in the store afterwards.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for s in 0..8 {
        let alice = log_in_at(&url, "alice", false).await.0;
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                match alice
                    .send(&To::User("bob".into()), &format!("s{s}-{i}"), None)
                    .await
                {
                    Ok(sent) => acked.lock().unwrap().push(sent.id),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGTERM) }, 0);

    let mut statuses = vec![];
    while let Ok(Some(update)) = watch.message().await {
        statuses.push(update.status);
        if update.status == ServingStatus::NotServing as i32 {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&(ServingStatus::NotServing as i32)),
        "health went NOT_SERVING: {statuses:?}"
    );
    let ending = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends within 10 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ending.code(), Code::Unavailable, "{ending:?}");
    assert!(ending.message().contains("shutting down"), "{ending:?}");

    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(8),
            "the server exits within a few seconds"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 8, "the senders got going: {}", acked.len());

    let server = ChildServer::start(&dir);
    let bob = log_in_at(&server.url, "bob", false).await.0;
    let mut stored = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let mut page = bob
            .chat()
            .get_messages(bob.request(proto::GetMessagesRequest {
                conversation: Some(proto::get_messages_request::Conversation::User(
                    "alice".into(),
                )),
                after_id: after,
                limit: 1000,
                newest: false,
            }))
            .await
            .unwrap()
            .into_inner();
        let before = stored.len();
        while let Some(m) = page.message().await.unwrap() {
            after = m.id;
            stored.insert(m.id);
        }
        if stored.len() == before {
            break;
        }
    }
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acked but lost: {lost:?}");
}

/// Sends `count` DMs from alice to bob and `count` lines to `lobby`; bob
/// takes all of them from his stream and acknowledges them at once.
async fn shown_and_acked(url: &str, count: usize) -> Vec<u64> {
    let alice = log_in_at(url, "alice", false).await.0;
    let bob = log_in_at(url, "bob", false).await.0;
    let mut stream = bob.subscribe().await.unwrap();
    for i in 0..count {
        alice
            .send(&To::User("bob".into()), &format!("dm-{i}"), None)
            .await
            .unwrap();
        alice
            .send(&To::Room("lobby".into()), &format!("room-{i}"), None)
            .await
            .unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..2 * count {
        ids.push(next_message(&mut stream).await.id);
    }
    bob.ack(ids.clone()).await.unwrap();
    ids
}

/// The server in this process on the data directory `dir`.
async fn in_process(dir: &std::path::Path) -> Server {
    let settings = ServeArgs::ephemeral(dir).resolve().unwrap();
    Server::start(settings).await.unwrap()
}

#[tokio::test]
async fn closing_the_store_writes_acknowledgements_still_in_memory() {
    let (_keep, dir) = data_dir();
    let server = in_process(&dir).await;
    let url = format!("http://{}", server.grpc_addr());
    log_in_at(&url, "alice", true).await;
    log_in_at(&url, "bob", true).await;
    shown_and_acked(&url, 5).await;
    // At once, well inside the 100 ms acknowledgements may wait in memory,
    // and without the rest of a shutdown (whose pause for health watchers
    // would let the timer write them): closing the store must write them.
    server.core().close_store().await;
    drop(server);

    let server = in_process(&dir).await;
    let bob = log_in_at(&format!("http://{}", server.grpc_addr()), "bob", false)
        .await
        .0;
    let mut stream = bob.subscribe().await.unwrap();
    common::assert_quiet(&mut stream).await;
}

#[tokio::test]
async fn after_kill_9_unwritten_acknowledgements_only_repeat_messages() {
    let (_keep, dir) = data_dir();
    let server = ChildServer::start(&dir);
    log_in_at(&server.url, "alice", true).await;
    log_in_at(&server.url, "bob", true).await;
    let shown = shown_and_acked(&server.url, 5).await;
    let alice = log_in_at(&server.url, "alice", false).await.0;
    let unseen = alice
        .send(&To::User("bob".into()), "after the ack", None)
        .await
        .unwrap()
        .id;
    server.kill9();

    // Whatever of the acknowledged ten comes again comes with its own id
    // and at most once; the message bob never saw comes for certain.
    let server = ChildServer::start(&dir);
    let bob = log_in_at(&server.url, "bob", false).await.0;
    let mut stream = bob.subscribe().await.unwrap();
    let mut again = Vec::new();
    loop {
        let m = next_message(&mut stream).await;
        if m.id == unseen {
            assert_eq!(m.body, "after the ack");
            break;
        }
        assert!(shown.contains(&m.id), "{} was never sent", m.id);
        assert!(!again.contains(&m.id), "{} came twice", m.id);
        again.push(m.id);
    }
    common::assert_quiet(&mut stream).await;
}
