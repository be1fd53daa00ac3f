//! Room fan-out: S subscribers in one room, P publishers each sending M
//! messages of B bytes. Every body starts with its send time, publisher and
//! sequence number, so subscribers measure latency and spot missing and
//! duplicated deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::delivery::{Ended, Received};
use super::receiver::Receiver;
use super::sender::Speaker;
use super::{BenchError, Latency, PASSWORD, Proto, Target, TargetArgs, histogram, run_id};

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The protocol every connection speaks.
    #[arg(long, value_enum, default_value = "line")]
    pub proto: Proto,
    /// Subscribers in the room.
    #[arg(short, long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publishers in the room.
    #[arg(short, long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages each publisher sends.
    #[arg(short, long, default_value_t = 5000)]
    pub messages: usize,
    /// Bytes per message body (at least the 40-odd bytes of its header).
    #[arg(short, long, default_value_t = 64)]
    pub bytes: usize,
    /// Messages per second across all publishers [default: as fast as possible].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Sends each binary or gRPC publisher keeps in flight (the server
    /// works on up to 256 at a time per binary connection).
    #[arg(long, default_value_t = 256)]
    pub pipeline: usize,
    /// Seconds of silence after which subscribers stop waiting.
    #[arg(long, default_value_t = 5)]
    pub idle_timeout: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub proto: Proto,
    pub subscribers: usize,
    pub publishers: usize,
    pub messages: usize,
    pub bytes: usize,
    pub rate: Option<f64>,
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub seconds: f64,
    pub sent_per_sec: f64,
    pub delivered_per_sec: f64,
    pub latency: Latency,
    pub errors: Vec<String>,
}

impl FanoutReport {
    pub fn print(&self) {
        super::print_report(
            &format!(
                "fanout over {:?}: {} subscribers, {} publishers x {} messages of {} bytes",
                self.proto, self.subscribers, self.publishers, self.messages, self.bytes
            ),
            &[
                ("delivered/s", format!("{:.0}", self.delivered_per_sec)),
                ("sent/s", format!("{:.0}", self.sent_per_sec)),
                ("latency µs", self.latency.describe()),
                (
                    "deliveries",
                    super::describe_tally(
                        self.expected,
                        self.received,
                        self.duplicates,
                        self.missing,
                    ),
                ),
                ("seconds", format!("{:.2}", self.seconds)),
                ("errors", format!("{:?}", self.errors)),
            ],
            self,
        );
    }
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A body stamped with its send time, publisher and sequence number.
pub fn stamp(publisher: usize, seq: usize, bytes: usize) -> String {
    let mut body = format!("{:016x} {publisher} {seq} ", now_nanos());
    while body.len() < bytes {
        body.push('.');
    }
    body
}

/// When each publisher's messages are due at a total rate.
///
/// The publishers take turns: at 1,000 messages/s from 4 publishers, one
/// message is due every millisecond, publisher 0's at 0, 4, 8 ms, publisher
/// 1's at 1, 5, 9 ms. Four publishers each pacing themselves from the same
/// start would send together every 4 ms, and what a paced run measured
/// would be a burst of four messages, the last of which waits for the other
/// three to be written to every subscriber.
#[derive(Clone, Copy)]
pub struct Pacing {
    start: Instant,
    rate: Option<f64>,
    publisher: usize,
    publishers: usize,
}

impl Pacing {
    pub fn new(start: Instant, rate: Option<f64>, publisher: usize, publishers: usize) -> Self {
        Pacing {
            start,
            rate: rate.filter(|r| *r > 0.0),
            publisher,
            publishers: publishers.max(1),
        }
    }

    /// When this publisher's message number `seq` is due (None: at once).
    pub fn due(&self, seq: usize) -> Option<Instant> {
        let rate = self.rate?;
        let slot = seq * self.publishers + self.publisher;
        Some(self.start + Duration::from_secs_f64(slot as f64 / rate))
    }

    /// Waits until this publisher's message number `seq` is due.
    pub async fn wait(&self, seq: usize) {
        if let Some(due) = self.due(seq) {
            tokio::time::sleep_until(due.into()).await;
        }
    }

    pub fn paced(&self) -> bool {
        self.rate.is_some()
    }
}

/// What one receiver saw.
pub struct Tally {
    pub unique: u64,
    pub duplicates: u64,
    pub latency: hdrhistogram::Histogram<u64>,
    pub last: Option<Instant>,
    pub error: Option<String>,
}

impl Tally {
    /// Counts one batch of deliveries against `seen`, a bit per (publisher,
    /// seq) pair.
    fn count(
        &mut self,
        batch: &[Received],
        (publishers, per_publisher): (usize, usize),
        seen: &mut [u64],
    ) {
        // Everything one read brought arrived at the same moment.
        let now = now_nanos();
        self.last = Some(Instant::now());
        for received in batch {
            let Some((sent, publisher, seq)) = received.stamp else {
                continue;
            };
            if publisher >= publishers || seq >= per_publisher {
                continue;
            }
            let index = publisher * per_publisher + seq;
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            if seen[word] & bit != 0 {
                self.duplicates += 1;
                continue;
            }
            seen[word] |= bit;
            self.unique += 1;
            let _ = self
                .latency
                .record((now.saturating_sub(sent) / 1000).max(1));
        }
    }
}

/// Receives until `expected` distinct (publisher, seq) pairs have arrived,
/// the stream ends, or `idle` passes in silence.
pub async fn tally(
    mut receiver: Receiver,
    publishers: usize,
    per_publisher: usize,
    idle: Duration,
    progress: Arc<AtomicU64>,
) -> Tally {
    let expected = (publishers * per_publisher) as u64;
    let mut seen = vec![0u64; (publishers * per_publisher).div_ceil(64)];
    let mut t = Tally {
        unique: 0,
        duplicates: 0,
        latency: histogram(),
        last: None,
        error: None,
    };
    let mut batch = Vec::new();
    let mut to_ack = Vec::new();
    while t.unique < expected {
        batch.clear();
        match tokio::time::timeout(idle, receiver.next_batch(&mut batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(Ended::Said(reason))) => {
                t.error = Some(reason);
                break;
            }
            Ok(Err(Ended::Closed)) | Err(_) => break,
        }
        let before = t.unique;
        t.count(&batch, (publishers, per_publisher), &mut seen);
        to_ack.extend(batch.iter().filter_map(|r| r.id));
        progress.fetch_add(t.unique - before, Ordering::Relaxed);
        if to_ack.len() >= 1024 {
            to_ack = receiver.ack(std::mem::take(&mut to_ack)).await;
        }
    }
    receiver.settle().await;
    if !to_ack.is_empty() {
        let _ = receiver.ack(to_ack).await;
        receiver.settle().await;
    }
    t
}

/// Registers NAMES, a few at a time (password hashing is deliberately slow).
pub async fn register_all(target: &Target, names: &[String]) -> Result<(), BenchError> {
    let admin = target.admin().await?;
    let results: Vec<_> = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let admin = admin.clone();
            async move { admin.register(&name, PASSWORD).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map(drop)
        .map_err(BenchError::setup)
}

/// Registers the run's accounts and makes its room; returns the room, the
/// subscribers' names and the publishers'.
async fn prepare(
    target: &Target,
    args: &FanoutArgs,
) -> Result<(String, Vec<String>, Vec<String>), BenchError> {
    let id = run_id();
    let room = format!("{id}-room");
    let subs: Vec<String> = (0..args.subscribers).map(|i| format!("{id}s{i}")).collect();
    let pubs: Vec<String> = (0..args.publishers).map(|i| format!("{id}p{i}")).collect();
    eprintln!("registering {} accounts", subs.len() + pubs.len());
    register_all(target, &[subs.clone(), pubs.clone()].concat()).await?;
    // The room exists before anyone joins it from a publisher connection.
    let admin = target.admin().await?;
    let (first, _) = admin
        .login(&subs[0], PASSWORD)
        .await
        .map_err(BenchError::setup)?;
    first.join(&room).await.map_err(BenchError::setup)?;
    Ok((room, subs, pubs))
}

pub async fn run(target: &Target, args: &FanoutArgs) -> Result<FanoutReport, BenchError> {
    let (room, subs, pubs) = prepare(target, args).await?;
    eprintln!("connecting {} subscribers", subs.len());
    // Spread over the nodes in turn, when the run has several.
    let mut receivers = Vec::with_capacity(subs.len());
    for node in 0..target.nodes() {
        let names: Vec<String> = subs
            .iter()
            .skip(node)
            .step_by(target.nodes())
            .cloned()
            .collect();
        receivers.extend(
            Receiver::connect_all(target.node(node), args.proto, &names, Some(&room)).await?,
        );
    }
    let mut senders = Vec::new();
    for (p, name) in pubs.iter().enumerate() {
        senders.push(Speaker::connect(target.node(p), args.proto, name, &room).await?);
    }

    let delivered = Arc::new(AtomicU64::new(0));
    let expected = (args.subscribers * args.publishers * args.messages) as u64;
    let counter = delivered.clone();
    let _progress = super::progress("fanout", move || {
        format!(
            "{} of {expected} delivered",
            counter.load(Ordering::Relaxed)
        )
    });

    let idle = Duration::from_secs(args.idle_timeout);
    let (publishers, messages) = (args.publishers, args.messages);
    let tallies: Vec<_> = receivers
        .into_iter()
        .map(|r| tokio::spawn(tally(r, publishers, messages, idle, delivered.clone())))
        .collect();
    let start = Instant::now();
    let publishing: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(p, sender)| {
            let pacing = Pacing::new(start, args.rate, p, args.publishers);
            let (room, lanes) = (room.clone(), args.pipeline.max(1));
            tokio::spawn(publish(
                sender,
                room,
                p,
                args.messages,
                args.bytes,
                pacing,
                lanes,
            ))
        })
        .collect();
    let mut errors = Vec::new();
    for task in publishing {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("publisher: {e}")),
            Err(e) => errors.push(format!("publisher: {e}")),
        }
    }
    let sent_seconds = start.elapsed().as_secs_f64();

    report(args, tallies, errors, start, sent_seconds).await
}

/// Gathers what the subscribers saw into the report.
async fn report(
    args: &FanoutArgs,
    tallies: Vec<tokio::task::JoinHandle<Tally>>,
    mut errors: Vec<String>,
    start: Instant,
    sent_seconds: f64,
) -> Result<FanoutReport, BenchError> {
    let expected = (args.subscribers * args.publishers * args.messages) as u64;
    let mut latency = histogram();
    let (mut received, mut duplicates, mut last) = (0, 0, start);
    for task in tallies {
        let t = task.await.map_err(BenchError::setup)?;
        received += t.unique;
        duplicates += t.duplicates;
        last = last.max(t.last.unwrap_or(start));
        let _ = latency.add(&t.latency);
        if let Some(e) = t.error {
            errors.push(format!("subscriber: {e}"));
        }
    }
    errors.sort();
    errors.dedup();
    let seconds = last.duration_since(start).as_secs_f64().max(1e-9);
    Ok(FanoutReport {
        scenario: "fanout",
        proto: args.proto,
        subscribers: args.subscribers,
        publishers: args.publishers,
        messages: args.messages,
        bytes: args.bytes,
        rate: args.rate,
        expected,
        received,
        duplicates,
        missing: expected - received,
        seconds,
        sent_per_sec: (args.publishers * args.messages) as f64 / sent_seconds.max(1e-9),
        delivered_per_sec: received as f64 / seconds,
        latency: Latency::of(&latency),
        errors,
    })
}

async fn publish(
    sender: Speaker,
    room: String,
    publisher: usize,
    messages: usize,
    bytes: usize,
    pacing: Pacing,
    pipeline: usize,
) -> Result<(), String> {
    let lane = match sender {
        Speaker::Lanes(lane) => lane,
        Speaker::Line(mut line) => {
            // One writer, no replies to wait for.
            for seq in 0..messages {
                pacing.wait(seq).await;
                line.say(&stamp(publisher, seq, bytes)).await?;
                // Paced, each line goes out as soon as it is stamped; at
                // full speed, the buffer gathers as many as it holds.
                if pacing.paced() {
                    line.flush().await?;
                }
            }
            return line.finish().await;
        }
    };
    // Binary and gRPC: `pipeline` sends in flight, each lane paced. The
    // lanes run in this one task, as one client's would: a task per lane
    // would cost the load generator a wake-up and a task switch per reply.
    let lanes = (0..pipeline).map(|lane_no| {
        let (lane, room) = (&lane, &room);
        async move {
            // Paced by the publisher's own sequence, so the lanes take
            // turns instead of firing together.
            for seq in (lane_no..messages).step_by(pipeline) {
                pacing.wait(seq).await;
                lane.say(room, &stamp(publisher, seq, bytes)).await?;
            }
            Ok::<(), String>(())
        }
    });
    futures::future::try_join_all(lanes).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_publishers_take_turns() {
        let start = Instant::now();
        let due = |publisher, seq| {
            Pacing::new(start, Some(1000.0), publisher, 4)
                .due(seq)
                .map(|at| at.duration_since(start).as_micros())
        };
        // One message a millisecond in total, never two at once.
        assert_eq!(due(0, 0), Some(0));
        assert_eq!(due(1, 0), Some(1000));
        assert_eq!(due(3, 0), Some(3000));
        assert_eq!(due(0, 1), Some(4000));
        assert_eq!(due(1, 2), Some(9000));
        assert_eq!(Pacing::new(start, None, 1, 4).due(7), None);
        assert_eq!(Pacing::new(start, Some(0.0), 1, 4).due(7), None);
    }
}
