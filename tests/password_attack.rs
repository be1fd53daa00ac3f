//! What a password-guessing flood costs everyone else: a normal user's login
//! latency and a direct message's round trip, quiet and under 50 guessing
//! connections, and the process's resident memory after 200 password checks.
//!
//! A measurement, not a check: run it with
//! `cargo test --test password_attack -- --ignored --nocapture` (dependencies,
//! argon2 among them, are optimised in the test profile too).
//! The figures are in `docs/security.md`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{PASSWORD, TestServer, line_from};

use meshtalk::codec::line::ServerLine;

const ATTACKERS: usize = 50;

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn summary(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({} samples)",
        at(0.5),
        at(0.9),
        at(1.0),
        ms.len()
    )
}

/// Logins of `alice` and DMs from `alice` to `bob`, all from 127.0.0.2.
async fn probe(t: &TestServer, rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let talk = t.server.talk_addr();
    let mut logins = vec![];
    for _ in 0..rounds {
        let mut c = line_from(talk, "127.0.0.2").await;
        let started = Instant::now();
        let reply = c
            .request(&format!("/login alice {PASSWORD}"))
            .await
            .unwrap();
        logins.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(reply.is_ok(), "{reply:?}");
    }
    let mut alice = line_from(talk, "127.0.0.2").await;
    assert!(
        alice
            .request(&format!("/login alice {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );
    let mut bob = line_from(talk, "127.0.0.3").await;
    assert!(
        bob.request(&format!("/login bob {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );
    let mut dms = vec![];
    for i in 0..rounds * 4 {
        let started = Instant::now();
        alice
            .send_line(&format!("/tell bob ping {i}"))
            .await
            .unwrap();
        loop {
            match bob.next_delivery().await.unwrap() {
                ServerLine::Direct { text, .. } if text == format!("ping {i}") => break,
                _ => {}
            }
        }
        dms.push(started.elapsed().as_secs_f64() * 1e3);
        let _ = alice.read_reply().await.unwrap();
    }
    (logins, dms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run it by name with --ignored --nocapture"]
async fn a_guessing_flood_against_one_account() {
    let t = TestServer::start().await;
    for name in ["victim", "alice", "bob"] {
        t.line_user(name).await;
    }
    let (logins, dms) = probe(&t, 10).await;
    eprintln!("quiet: login {}", summary(logins));
    eprintln!("quiet: DM round trip {}", summary(dms));

    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut attackers = vec![];
    for a in 0..ATTACKERS {
        let (stop, checked, refused) = (stop.clone(), checked.clone(), refused.clone());
        let talk = t.server.talk_addr();
        attackers.push(tokio::spawn(async move {
            let mut c = line_from(talk, "127.0.0.1").await;
            let mut guess = 0u64;
            while !stop.load(Ordering::Relaxed) {
                guess += 1;
                let Ok(reply) = c.request(&format!("/login victim guess-{a}-{guess}")).await else {
                    return;
                };
                match reply.error_code() {
                    Some("auth") => checked.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let checked_before = checked.load(Ordering::Relaxed);
    let (logins, dms) = probe(&t, 10).await;
    let elapsed = started.elapsed().as_secs_f64();
    let guesses = checked.load(Ordering::Relaxed) - checked_before;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    eprintln!(
        "attack: {ATTACKERS} connections, {:.1} passwords checked/s against the victim, {} attempts refused unchecked",
        guesses as f64 / elapsed,
        refused.load(Ordering::Relaxed)
    );
    eprintln!("attack: login {}", summary(logins));
    eprintln!("attack: DM round trip {}", summary(dms));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run it by name with --ignored --nocapture"]
async fn resident_memory_after_200_password_checks() {
    let t = TestServer::start().await;
    t.line_user("alice").await;
    let before = resident_kib();
    let talk = t.server.talk_addr();
    // Eight at a time, from eight addresses, as many users logging in would.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = line_from(talk, &format!("127.0.1.{}", i + 1)).await;
                for _ in 0..25 {
                    let reply = c
                        .request(&format!("/login alice {PASSWORD}"))
                        .await
                        .unwrap();
                    assert!(reply.is_ok(), "{reply:?}");
                    c.request("/logout").await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_kib();
    eprintln!(
        "resident memory: {} MiB before, {} MiB after 200 password checks (+{} MiB)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    );
}
