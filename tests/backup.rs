//! `meshtalk backup`: a consistent copy of a running server's SQLite store,
//! taken while messages keep coming, that a server started on it serves.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{ChildServer, log_in_at};
use meshtalk::client::To;

fn backup(file: &std::path::Path, data: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshtalk"))
        .arg("backup")
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_under_load_restores_to_a_working_server() {
    let (_dir, data) = common::data_dir();
    let server = ChildServer::start(&data);
    let alice = log_in_at(&server.url, "alice", true).await.0;
    log_in_at(&server.url, "bob", true).await;
    let bob = To::User("bob".into());
    for n in 0..50 {
        alice
            .send(&bob, &format!("before {n}"), None)
            .await
            .unwrap();
    }

    // Sends go on while the copy is taken.
    let sending = Arc::new(AtomicBool::new(true));
    let sent_during = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (alice, bob, sending, sent) = (
            alice.clone(),
            bob.clone(),
            sending.clone(),
            sent_during.clone(),
        );
        tokio::spawn(async move {
            // At most 500, so history's newest 1000 still hold the first 50.
            while sending.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) < 500 {
                let n = sent.load(Ordering::SeqCst);
                alice
                    .send(&bob, &format!("during {n}"), None)
                    .await
                    .unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let file = _dir.path().join("copy.db");
    let (f, d) = (file.clone(), data.clone());
    let out = tokio::task::spawn_blocking(move || backup(&f, &d))
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("copied "), "{said}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    sending.store(false, Ordering::SeqCst);
    sender.await.unwrap();
    assert!(sent_during.load(Ordering::SeqCst) > 0, "the writer went on");

    // No overwriting a backup.
    let again = backup(&file, &data);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // Restored: the copy as a new server's database.
    let (_dir2, restored) = common::data_dir();
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::copy(&file, restored.join("meshtalk.db")).unwrap();
    let second = ChildServer::start(&restored);
    let bob_there = log_in_at(&second.url, "bob", false).await.0;
    let history = bob_there
        .recent(&To::User("alice".into()), 1000)
        .await
        .unwrap();
    let bodies: Vec<&str> = history.iter().map(|m| m.body.as_str()).collect();
    assert!(bodies.len() >= 50, "{bodies:?}");
    let before: Vec<String> = (0..50).map(|n| format!("before {n}")).collect();
    assert_eq!(
        bodies[..50],
        before,
        "every message before the copy, in order"
    );
    // What came in during the copy is a prefix of what was sent: a snapshot.
    for (n, body) in bodies[50..].iter().enumerate() {
        assert_eq!(*body, format!("during {n}"));
    }
    assert!(history.windows(2).all(|w| w[0].id < w[1].id));
    drop(server);
}
