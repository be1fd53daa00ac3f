//! `meshtalk bench`: a load generator that drives a running server (or one
//! it spawns) over any of the three protocols and reports throughput and
//! latency.
//!
//! Scenarios: [`fanout`] (room speech to many subscribers), [`dm`] (durable
//! direct messages), [`conns`] (idle connections and their memory) and
//! [`mesh`] (linked nodes: convergence and latency by hop count). Each
//! run prints a readable table and one JSON line.

mod connect;
pub mod conns;
mod delivery;
pub mod dm;
pub mod fanout;
mod grpc;
mod in_place;
pub mod mesh;
mod receiver;
mod sender;
mod target;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

pub use target::{Target, TargetArgs};

/// The password of every account a benchmark creates.
pub const PASSWORD: &str = "bench-password";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Line,
    Wire,
    Grpc,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// S subscribers in one room, P publishers sending M messages of B bytes.
    Fanout(fanout::FanoutArgs),
    /// C senders each sending M durable direct messages to its own recipient.
    Dm(dm::DmArgs),
    /// C idle, logged-in, subscribed connections; memory per connection.
    Conns(conns::ConnsArgs),
    /// K linked nodes in a line or ring: convergence time and speech latency by hops.
    Mesh(mesh::MeshArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot start a server: {0}")]
    Spawn(String),
}

impl BenchError {
    pub fn setup(e: impl std::fmt::Display) -> Self {
        BenchError::Setup(e.to_string())
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Microsecond latencies from 1 µs to 10 minutes, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl Latency {
    /// The percentiles as one table cell.
    pub fn describe(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} max {}",
            self.p50_us, self.p90_us, self.p99_us, self.max_us
        )
    }

    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

/// The delivery tally as one table cell.
pub fn describe_tally(expected: u64, received: u64, duplicates: u64, missing: u64) -> String {
    format!("expected {expected} received {received} duplicated {duplicates} missing {missing}")
}

/// A unique prefix for the names one run creates.
pub fn run_id() -> String {
    format!("b{:08x}", rand::random::<u32>())
}

/// Prints a line on stderr every second while `done` is false.
pub fn progress(
    label: &'static str,
    counter: impl Fn() -> String + Send + 'static,
) -> ProgressGuard {
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!("{label}: {}", counter());
        }
    });
    ProgressGuard(task)
}

/// Stops the progress line when dropped.
pub struct ProgressGuard(tokio::task::JoinHandle<()>);

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Prints a report as a table on stdout, then as one JSON line.
pub fn print_report<T: Serialize>(title: &str, rows: &[(&str, String)], report: &T) {
    println!("{title}");
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        println!("  {key:<width$}  {value}");
    }
    match serde_json::to_string(report) {
        Ok(json) => println!("{json}"),
        Err(e) => eprintln!("cannot encode the report: {e}"),
    }
}

/// Runs a benchmark from the command line.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Fanout(a) => {
            let target = Target::open(&a.target).await?;
            let report = fanout::run(&target, &a).await?;
            report.print();
        }
        Scenario::Dm(a) => {
            let target = Target::open(&a.target).await?;
            let report = dm::run(&target, &a).await?;
            report.print();
        }
        Scenario::Conns(a) => {
            let target = Target::open(&a.target).await?;
            let report = conns::run(&target, &a).await?;
            report.print();
        }
        Scenario::Mesh(a) => mesh::run(&a).await?.print(),
    }
    Ok(())
}
