//! History retention through a real server: old room speech and delivered
//! direct messages go, a room keeps its newest, and a direct message not yet
//! delivered stays until its recipient has it.

mod common;

use std::time::Duration;

use common::{log_in_at, next_message};
use meshtalk::client::To;
use meshtalk::config::ServeArgs;
use meshtalk::server::Server;

async fn server(dir: &std::path::Path, rule: impl FnOnce(&mut ServeArgs)) -> (Server, String) {
    let mut args = ServeArgs {
        node_name: Some("test-node".into()),
        send_rate: Some(0.0),
        registrations_per_ip: Some(0),
        ..ServeArgs::ephemeral(dir)
    };
    if common::on_postgres() {
        args.store = Some(common::postgres::url_for(dir));
    }
    rule(&mut args);
    let server = Server::start(args.resolve().unwrap()).await.unwrap();
    let url = format!("http://{}", server.grpc_addr());
    (server, url)
}

fn bodies(messages: &[meshtalk::proto::Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn old_history_goes_and_an_undelivered_direct_message_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (first, url) = server(dir.path(), |_| {}).await;
    let alice = log_in_at(&url, "alice", true).await.0;
    log_in_at(&url, "bob", true).await;
    let lobby = To::Room("lobby".into());
    for n in 0..5 {
        alice.send(&lobby, &format!("old {n}"), None).await.unwrap();
    }
    alice
        .send(&To::User("bob".into()), "while you were out", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    first.shutdown().await;

    // Restarted keeping one second of history: the job runs at start.
    let (_second, url) = server(dir.path(), |a| a.history_retention = Some(1)).await;
    let alice = log_in_at(&url, "alice", false).await.0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !alice.recent(&lobby, 100).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "old speech stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bob = log_in_at(&url, "bob", false).await.0;
    let mut events = bob.subscribe().await.unwrap();
    assert_eq!(next_message(&mut events).await.body, "while you were out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_keeps_its_newest_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (first, url) = server(dir.path(), |_| {}).await;
    let alice = log_in_at(&url, "alice", true).await.0;
    let lobby = To::Room("lobby".into());
    for n in 0..10 {
        alice.send(&lobby, &format!("say {n}"), None).await.unwrap();
    }
    first.shutdown().await;

    let (_second, url) = server(dir.path(), |a| a.room_history_max = Some(3)).await;
    let alice = log_in_at(&url, "alice", false).await.0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = alice.recent(&lobby, 100).await.unwrap();
        if bodies(&left) == ["say 7", "say 8", "say 9"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            bodies(&left)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New speech is kept as it comes; the cap applies at the next run.
    alice.send(&lobby, "after", None).await.unwrap();
    assert_eq!(alice.recent(&lobby, 100).await.unwrap().len(), 4);
}
