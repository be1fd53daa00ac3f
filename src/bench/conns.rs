//! Idle connections: C logged-in connections, each receiving (a live stream
//! on gRPC), then the server's resident memory per connection, and a check
//! that every one of them is still alive: one direct message to each
//! account must reach all of that account's connections.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use super::fanout::register_all;
use super::receiver::Receiver;
use super::{BenchError, PASSWORD, Proto, Target, TargetArgs, run_id};
use crate::client::{Client, To};

/// Connections per loopback source address, well under its ephemeral ports.
const PER_SOURCE: usize = 20_000;
/// Connections per account.
const PER_ACCOUNT: usize = 32;

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
    let accounts = Accounts::prepare(target, args).await?;
    let mut opened = Opened::open(target, args, &accounts).await;
    let alive = accounts.check(&mut opened.receivers).await?;
    Ok(opened.report(args, alive))
}

/// The run's accounts, the connections' and the teller's, which checks
/// that they are alive.
struct Accounts {
    names: Vec<String>,
    teller: String,
    admin: Client,
    /// On gRPC, each account's login, shared by its connections.
    tokens: Vec<Client>,
}

/// What opening the connections gave, and the server's memory around it.
struct Opened {
    /// By account index.
    receivers: Vec<(usize, Receiver)>,
    /// Connections opened before the memory was first read.
    warmed: usize,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    seconds_to_connect: f64,
    errors: Vec<String>,
}

impl Accounts {
    async fn prepare(target: &Target, args: &ConnsArgs) -> Result<Accounts, BenchError> {
        let id = run_id();
        // Connections share accounts, PER_ACCOUNT each: well under the server's
        // cap on sessions per account.
        let names: Vec<String> = (0..args.connections.div_ceil(PER_ACCOUNT).max(1))
            .map(|k| format!("{id}c{k}"))
            .collect();
        let teller = format!("{id}t");
        eprintln!("registering {} accounts", names.len() + 1);
        register_all(target, &[names.clone(), vec![teller.clone()]].concat()).await?;
        let admin = target.admin().await?;
        // gRPC connections of one account share its login; the socket
        // protocols log in on every connection.
        let mut tokens = Vec::new();
        if args.proto == Proto::Grpc {
            for name in &names {
                let (client, _) = admin
                    .login(name, PASSWORD)
                    .await
                    .map_err(BenchError::setup)?;
                tokens.push(client);
            }
        }
        Ok(Accounts {
            names,
            teller,
            admin,
            tokens,
        })
    }

    /// Opens the connections numbered `range`, `--concurrency` at a time.
    async fn open(
        &self,
        target: &Target,
        args: &ConnsArgs,
        range: Range<usize>,
    ) -> Vec<(usize, Result<Receiver, BenchError>)> {
        futures::stream::iter(range)
            .map(|i| async move {
                let account = i / PER_ACCOUNT;
                let receiver = Receiver::connect(
                    target,
                    args.proto,
                    &self.names[account],
                    None,
                    source(i),
                    self.tokens.get(account),
                )
                .await;
                (account, receiver)
            })
            .buffer_unordered(args.concurrency.max(1))
            .collect()
            .await
    }

    /// Sends one direct message per account and counts the connections it
    /// reaches: each must reach every one of its account's sessions.
    async fn check(&self, receivers: &mut [(usize, Receiver)]) -> Result<usize, BenchError> {
        // Stamped like every bench message, so a receiver tells it from notices.
        let check = super::fanout::stamp(0, 0, 0);
        let (teller, _) = self
            .admin
            .login(&self.teller, PASSWORD)
            .await
            .map_err(BenchError::setup)?;
        for name in &self.names {
            teller
                .send(&To::User(name.clone()), &check, None)
                .await
                .map_err(BenchError::setup)?;
        }
        let checks: Vec<bool> = futures::stream::iter(receivers.iter_mut())
            .map(|(_, r)| async move {
                matches!(
                    tokio::time::timeout(Duration::from_secs(30), r.next()).await,
                    Ok(Ok(m)) if m.stamp.is_some()
                )
            })
            .buffer_unordered(1024)
            .collect()
            .await;
        Ok(checks.into_iter().filter(|ok| *ok).count())
    }
}

impl Opened {
    /// Opens every connection, reading the server's memory after a warm-up
    /// batch and again once all are open.
    async fn open(target: &Target, args: &ConnsArgs, accounts: &Accounts) -> Opened {
        // A first batch warms up what the server allocates once (password
        // threads, buffers, pools), so the measurement sees connections only.
        let warm = args.connections.min(args.concurrency.max(1)).min(64);
        let mut opened = accounts.open(target, args, 0..warm).await;
        let warmed = opened.iter().filter(|(_, r)| r.is_ok()).count();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_before = target.rss_kib();
        let start = std::time::Instant::now();
        opened.extend(accounts.open(target, args, warm..args.connections).await);
        let seconds_to_connect = start.elapsed().as_secs_f64();
        let mut errors = Vec::new();
        let mut receivers = Vec::new();
        for (account, r) in opened {
            match r {
                Ok(r) => receivers.push((account, r)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Let the server settle before reading its memory.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Opened {
            receivers,
            warmed,
            rss_before,
            rss_after: target.rss_kib(),
            seconds_to_connect,
            errors,
        }
    }

    fn report(self, args: &ConnsArgs, alive: usize) -> ConnsReport {
        let mut errors = self.errors;
        errors.sort();
        errors.dedup();
        let connected = self.receivers.len();
        let measured = connected.saturating_sub(self.warmed);
        ConnsReport {
            scenario: "conns",
            proto: args.proto,
            connections: args.connections,
            connected,
            alive,
            rss_before_kib: self.rss_before,
            rss_after_kib: self.rss_after,
            bytes_per_connection: match (self.rss_before, self.rss_after) {
                (Some(b), Some(a)) if measured > 0 => {
                    Some(a.saturating_sub(b) * 1024 / measured as u64)
                }
                _ => None,
            },
            seconds_to_connect: self.seconds_to_connect,
            errors,
        }
    }
}
