//! Idle connections: C logged-in connections, each receiving (a live stream
//! on gRPC), then the server's resident memory per connection, and a check
//! that every one of them is still alive: one direct message to the account
//! must reach all C sessions.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::driver::Receiver;
use super::fanout::register_all;
use super::{BenchError, PASSWORD, Proto, Target, TargetArgs, run_id};
use crate::client::To;

/// Connections per loopback source address, well under its ephemeral ports.
const PER_SOURCE: usize = 20_000;

#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, value_enum, default_value = "line")]
    pub proto: Proto,
    /// Connections to open and hold.
    #[arg(short, long, default_value_t = 5000)]
    pub connections: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnsReport {
    pub scenario: &'static str,
    pub proto: Proto,
    pub connections: usize,
    pub connected: usize,
    pub alive: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub bytes_per_connection: Option<u64>,
    pub seconds_to_connect: f64,
    pub errors: Vec<String>,
}

impl ConnsReport {
    pub fn print(&self) {
        super::print_report(
            &format!(
                "conns over {:?}: {} idle connections",
                self.proto, self.connections
            ),
            &[
                (
                    "connected / alive",
                    format!("{} / {}", self.connected, self.alive),
                ),
                (
                    "server memory",
                    match self.bytes_per_connection {
                        Some(b) => format!("{b} bytes per connection"),
                        None => "unknown (pass --pid or --spawn)".into(),
                    },
                ),
                (
                    "seconds to connect",
                    format!("{:.1}", self.seconds_to_connect),
                ),
                ("errors", format!("{:?}", self.errors)),
            ],
            self,
        );
    }
}

fn source(i: usize) -> Option<IpAddr> {
    let n = 1 + i / PER_SOURCE;
    Some(IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        (n / 256) as u8,
        (n % 256) as u8,
    )))
}

pub async fn run(target: &Target, args: &ConnsArgs) -> Result<ConnsReport, BenchError> {
    let id = run_id();
    let (name, sender) = (format!("{id}c"), format!("{id}t"));
    register_all(target, &[name.clone(), sender.clone()]).await?;
    let admin = target.admin().await?;
    // gRPC connections share one login; the socket protocols log in each.
    let token = match args.proto {
        Proto::Grpc => Some(
            admin
                .login(&name, PASSWORD)
                .await
                .map_err(BenchError::setup)?
                .0,
        ),
        _ => None,
    };
    let open = |range: std::ops::Range<usize>| {
        futures::stream::iter(range)
            .map(|i| Receiver::connect(target, args.proto, &name, None, source(i), token.as_ref()))
            .buffer_unordered(args.concurrency.max(1))
            .collect::<Vec<Result<Receiver, BenchError>>>()
    };
    // A first batch warms up what the server allocates once (password
    // threads, buffers, pools), so the measurement sees connections only.
    let warm = args.connections.min(args.concurrency.max(1)).min(64);
    let mut opened = open(0..warm).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = target.rss_kib();
    let start = std::time::Instant::now();
    opened.extend(open(warm..args.connections).await);
    let seconds_to_connect = start.elapsed().as_secs_f64();
    let mut errors = Vec::new();
    let mut receivers = Vec::new();
    for r in opened {
        match r {
            Ok(r) => receivers.push(r),
            Err(e) => errors.push(e.to_string()),
        }
    }
    // Let the server settle before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = target.rss_kib();
    let connected = receivers.len();

    let (teller, _) = admin
        .login(&sender, PASSWORD)
        .await
        .map_err(BenchError::setup)?;
    teller
        .send(&To::User(name.clone()), "are you all there?", None)
        .await
        .map_err(BenchError::setup)?;
    let checks: Vec<bool> = futures::stream::iter(receivers.iter_mut())
        .map(|r| async move {
            matches!(
                tokio::time::timeout(Duration::from_secs(30), r.next()).await,
                Ok(Some(Ok(m))) if m.body == "are you all there?"
            )
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    let alive = checks.into_iter().filter(|ok| *ok).count();
    errors.sort();
    errors.dedup();
    Ok(ConnsReport {
        scenario: "conns",
        proto: args.proto,
        connections: args.connections,
        connected,
        alive,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        bytes_per_connection: match (rss_before, rss_after) {
            (Some(b), Some(a)) if connected > warm => {
                Some(a.saturating_sub(b) * 1024 / (connected - warm) as u64)
            }
            _ => None,
        },
        seconds_to_connect,
        errors,
    })
}
