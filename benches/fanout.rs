//! Micro-benchmarks of the fan-out path: one committed room message handed
//! to every subscriber's queue and taken out by its receiver, apart from
//! sockets and the store.
//!
//! `cargo bench --bench fanout`; throughput is in deliveries.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::FutureExt;
use meshtalk::core::hub::{Attachment, Hub};
use meshtalk::core::recent::RecentRooms;
use meshtalk::core::{Delivery, Message, Target, fan_out_batch};
use meshtalk::model::{AccountId, RoomId, SessionId};
use tokio::sync::Notify;

/// Messages per round: about what one writer transaction commits at full speed.
const MESSAGES: usize = 64;

fn deliveries() -> Vec<Delivery> {
    (0..MESSAGES as u64)
        .map(|id| {
            Delivery::new(Message {
                id: id + 1,
                from: "publisher-17".into(),
                to: Target::Room("lobby".into()),
                body: "x".repeat(64),
                sent_at_ms: 1_764_000_000_000,
                client_msg_id: None,
            })
        })
        .collect()
}

/// Takes everything waiting in each receiver's queue.
fn drain(receivers: &mut [Attachment]) -> usize {
    let mut taken = 0;
    for receiver in receivers {
        while let Some(Ok(_)) = receiver.recv().now_or_never() {
            taken += 1;
        }
    }
    taken
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan-out");
    let messages = deliveries();
    for subscribers in [10usize, 100, 1000] {
        let hub = Hub::new(4096, Arc::new(Notify::new()));
        let accounts: Vec<AccountId> = (1..=subscribers as i64).map(AccountId).collect();
        let mut receivers: Vec<Attachment> = accounts
            .iter()
            .map(|&a| hub.attach(a, SessionId(a.0)))
            .collect();
        group.throughput(Throughput::Elements((MESSAGES * subscribers) as u64));
        // Each message pushed into every queue on its own, as a lone commit does.
        group.bench_function(BenchmarkId::new("one by one", subscribers), |b| {
            b.iter(|| {
                for m in &messages {
                    hub.fan_out(m, &accounts, None);
                }
                drain(&mut receivers)
            })
        });
        // A run of commits gathered: one lock and one wake-up per queue.
        group.bench_function(BenchmarkId::new("batched", subscribers), |b| {
            b.iter(|| {
                fan_out_batch(|| {
                    for m in &messages {
                        hub.fan_out(m, &accounts, None);
                    }
                });
                drain(&mut receivers)
            })
        });
    }
    group.finish();
}

fn recent_rooms(c: &mut Criterion) {
    let mut group = c.benchmark_group("ack");
    let recent = RecentRooms::default();
    for id in 1..=4096u64 {
        recent.record(id, RoomId((id % 4) as i64));
    }
    let ids: Vec<u64> = (3073..=4096).collect();
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("sort 1024 acked ids by room", |b| {
        b.iter(|| recent.sort(std::hint::black_box(&ids)))
    });
    group.finish();
}

criterion_group!(benches, fan_out, recent_rooms);
criterion_main!(benches);
