//! Durable direct messages: C senders, each sending M messages to its own
//! recipient and waiting for each acknowledgement (given only after the
//! commit), one at a time or with several in flight. Recipients check they
//! got every message once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::fanout::{register_all, stamp, tally};
use super::receiver::Receiver;
use super::sender::Teller;
use super::{BenchError, Latency, Proto, Target, TargetArgs, histogram, run_id};

#[derive(Debug, Clone, Args)]
pub struct DmArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, value_enum, default_value = "grpc")]
    pub proto: Proto,
    /// Concurrent senders (each with its own connection and recipient).
    #[arg(short, long, default_value_t = 50)]
    pub clients: usize,
    /// Messages each sender sends.
    #[arg(short, long, default_value_t = 2000)]
    pub messages: usize,
    /// Bytes per message body.
    #[arg(short, long, default_value_t = 64)]
    pub bytes: usize,
    /// Sends each binary or gRPC sender keeps in flight, each waiting for
    /// its own acknowledgement (the line protocol's `/tell` waits for its
    /// `+OK` before the next).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Seconds of silence after which recipients stop waiting.
    #[arg(long, default_value_t = 5)]
    pub idle_timeout: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DmReport {
    pub scenario: &'static str,
    pub proto: Proto,
    pub clients: usize,
    pub pipeline: usize,
    pub messages: usize,
    pub bytes: usize,
    pub acked: u64,
    pub acked_per_sec: f64,
    pub ack_latency: Latency,
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub seconds: f64,
    pub errors: Vec<String>,
}

impl DmReport {
    pub fn print(&self) {
        super::print_report(
            &format!(
                "dm over {:?}: {} senders x {} durable messages of {} bytes, {} in flight each",
                self.proto, self.clients, self.messages, self.bytes, self.pipeline
            ),
            &[
                ("acked sends/s", format!("{:.0}", self.acked_per_sec)),
                ("ack latency µs", self.ack_latency.describe()),
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

pub async fn run(target: &Target, args: &DmArgs) -> Result<DmReport, BenchError> {
    let id = run_id();
    let senders: Vec<String> = (0..args.clients).map(|i| format!("{id}d{i}")).collect();
    let recipients: Vec<String> = (0..args.clients).map(|i| format!("{id}r{i}")).collect();
    eprintln!("registering {} accounts", 2 * args.clients);
    register_all(target, &[senders.clone(), recipients.clone()].concat()).await?;

    let receivers = Receiver::connect_all(target, args.proto, &recipients, None).await?;
    let connections: Vec<Teller> = futures::stream::iter(senders.iter())
        .map(|name| Teller::connect(target, args.proto, name))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let total = (args.clients * args.messages) as u64;
    let _progress = super::progress("dm", move || {
        format!("{} of {total} acked", counter.load(Ordering::Relaxed))
    });
    let idle = Duration::from_secs(args.idle_timeout);
    let delivered = Arc::new(AtomicU64::new(0));
    // Each recipient hears from one sender: "publisher" 0 in the stamp.
    let tallies: Vec<_> = receivers
        .into_iter()
        .map(|r| tokio::spawn(tally(r, 1, args.messages, idle, delivered.clone())))
        .collect();

    let start = Instant::now();
    let sending: Vec<_> = connections
        .into_iter()
        .zip(recipients)
        .map(|(sender, to)| tokio::spawn(tell_all(sender, to, args.clone(), acked.clone())))
        .collect();
    let mut errors = Vec::new();
    let mut latency = histogram();
    for task in sending {
        match task.await {
            Ok(Ok(h)) => {
                let _ = latency.add(&h);
            }
            Ok(Err(e)) => errors.push(format!("sender: {e}")),
            Err(e) => errors.push(format!("sender: {e}")),
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    let acked = acked.load(Ordering::Relaxed);
    report(args, tallies, errors, (acked, seconds), latency).await
}

/// Sends every message of one connection to `to`, over the connection's
/// lanes: each sends every `lanes`-th message and waits for its
/// acknowledgement before the next. They run as one task with one
/// histogram, as one client would.
async fn tell_all(
    sender: Teller,
    to: String,
    args: DmArgs,
    acked: Arc<AtomicU64>,
) -> Result<hdrhistogram::Histogram<u64>, String> {
    let lanes = sender.lanes(args.pipeline);
    let latency = std::sync::Mutex::new(histogram());
    let stride = lanes.len();
    let lanes = lanes.into_iter().enumerate().map(|(lane, mut sender)| {
        let (acked, latency, to) = (&acked, &latency, &to);
        async move {
            for seq in (lane..args.messages).step_by(stride) {
                let began = Instant::now();
                sender.tell(to, &stamp(0, seq, args.bytes)).await?;
                let micros = (began.elapsed().as_micros() as u64).max(1);
                if let Ok(mut latency) = latency.lock() {
                    let _ = latency.record(micros);
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }
    });
    futures::future::try_join_all(lanes).await?;
    latency
        .into_inner()
        .map_err(|_| "a lane panicked".to_string())
}

/// Gathers what the recipients saw into the report.
async fn report(
    args: &DmArgs,
    tallies: Vec<tokio::task::JoinHandle<super::fanout::Tally>>,
    mut errors: Vec<String>,
    (acked, seconds): (u64, f64),
    latency: hdrhistogram::Histogram<u64>,
) -> Result<DmReport, BenchError> {
    let total = (args.clients * args.messages) as u64;
    let (mut received, mut duplicates) = (0, 0);
    for task in tallies {
        let t = task.await.map_err(BenchError::setup)?;
        received += t.unique;
        duplicates += t.duplicates;
        if let Some(e) = t.error {
            errors.push(format!("recipient: {e}"));
        }
    }
    errors.sort();
    errors.dedup();
    Ok(DmReport {
        scenario: "dm",
        proto: args.proto,
        clients: args.clients,
        pipeline: args.pipeline.max(1),
        messages: args.messages,
        bytes: args.bytes,
        acked,
        acked_per_sec: acked as f64 / seconds,
        ack_latency: Latency::of(&latency),
        expected: total,
        received,
        duplicates,
        missing: total - received,
        seconds,
        errors,
    })
}
