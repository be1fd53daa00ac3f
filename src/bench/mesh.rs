//! The mesh: K nodes on loopback ports in a line or a ring, linked the way an
//! operator links them. Reports how long the mesh takes to agree on its
//! topology after a link comes up and after one goes down, and the latency
//! of room speech from node 0 to a listener on every other node, by hop
//! count.
//!
//! The nodes run in this process, each a complete server with its own
//! SQLite store; speaker and listeners are line-protocol clients over TCP.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{BenchError, Latency, PASSWORD, histogram, run_id};
use crate::client::line::LineClient;
use crate::codec::line::ServerLine;
use crate::config::ServeArgs;
use crate::server::Server;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Line,
    Ring,
}

#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// Nodes to start.
    #[arg(short = 'k', long, default_value_t = 5)]
    pub nodes: usize,
    #[arg(long, value_enum, default_value = "line")]
    pub shape: Shape,
    /// Messages node 0's speaker sends.
    #[arg(short, long, default_value_t = 2000)]
    pub messages: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HopLatency {
    pub hops: usize,
    pub received: usize,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeshReport {
    pub scenario: &'static str,
    pub shape: Shape,
    pub nodes: usize,
    pub messages: usize,
    /// From the last link's handshake to every node agreeing on the graph.
    pub converge_link_up_ms: f64,
    /// From dropping one link to every node agreeing on the graph.
    pub converge_link_down_ms: f64,
    pub by_hops: Vec<HopLatency>,
    pub duplicates: u64,
    pub missing: u64,
}

impl MeshReport {
    pub fn print(&self) {
        let mut rows = vec![
            (
                "converge, link up",
                format!("{:.1} ms", self.converge_link_up_ms),
            ),
            (
                "converge, link down",
                format!("{:.1} ms", self.converge_link_down_ms),
            ),
            (
                "deliveries",
                format!("duplicated {} missing {}", self.duplicates, self.missing),
            ),
        ];
        let hops: Vec<(String, String)> = self
            .by_hops
            .iter()
            .map(|h| {
                (
                    format!("{} hops (µs)", h.hops),
                    format!("{} received, {}", h.received, h.latency.describe()),
                )
            })
            .collect();
        rows.extend(hops.iter().map(|(k, v)| (k.as_str(), v.clone())));
        super::print_report(
            &format!(
                "mesh: {} nodes in a {:?}, {} messages from node 0",
                self.nodes, self.shape, self.messages
            ),
            &rows,
            self,
        );
    }
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Waits until every node reports the same graph with `links` links.
async fn agree(servers: &[Server], links: usize) -> Result<Duration, BenchError> {
    let started = Instant::now();
    loop {
        let views: Vec<_> = servers.iter().map(|s| s.mesh().topology()).collect();
        if views
            .iter()
            .all(|v| v.links.len() == links && *v == views[0])
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(BenchError::Setup(format!(
                "the mesh did not agree on {links} links within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn user(server: &Server, name: &str) -> Result<LineClient, BenchError> {
    let mut c = LineClient::connect(server.talk_addr())
        .await
        .map_err(BenchError::setup)?;
    for line in [
        format!("/register {name} {PASSWORD}"),
        format!("/login {name} {PASSWORD}"),
    ] {
        let reply = c.request(&line).await.map_err(BenchError::setup)?;
        if !reply.is_ok() {
            return Err(BenchError::Setup(format!("{line}: {:?}", reply.end)));
        }
    }
    Ok(c)
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub async fn run(args: &MeshArgs) -> Result<MeshReport, BenchError> {
    if args.nodes < 2 || (args.shape == Shape::Ring && args.nodes < 3) {
        return Err(BenchError::Setup(
            "a line needs at least 2 nodes, a ring at least 3".into(),
        ));
    }
    let nodes = Nodes::start(args).await?;
    let converge_link_up = nodes.link_up().await?;
    let deliveries = nodes.speak(args).await?;
    let converge_link_down = nodes.link_down().await?;
    nodes.shutdown().await;
    Ok(MeshReport {
        scenario: "mesh",
        shape: args.shape,
        nodes: args.nodes,
        messages: args.messages,
        converge_link_up_ms: converge_link_up.as_secs_f64() * 1e3,
        converge_link_down_ms: converge_link_down.as_secs_f64() * 1e3,
        by_hops: deliveries
            .by_hops
            .into_iter()
            .map(|(hops, (h, received))| HopLatency {
                hops,
                received,
                latency: Latency::of(&h),
            })
            .collect(),
        duplicates: deliveries.duplicates,
        missing: deliveries.missing,
    })
}

/// The nodes of one run and the links the run makes between them.
struct Nodes {
    servers: Vec<Server>,
    /// By node index, in the order they are made: a line's, then the
    /// ring's closing link.
    links: Vec<(usize, usize)>,
    shape: Shape,
    /// The nodes' data directories and the mesh secret; dropped after the
    /// servers.
    _dir: tempfile::TempDir,
}

/// What the listeners heard, by hop count.
struct Deliveries {
    /// Latencies and messages received, merged over the nodes that far away.
    by_hops: BTreeMap<usize, (Histogram<u64>, usize)>,
    duplicates: u64,
    missing: u64,
}

/// What one listener heard: its latencies, messages received and duplicates.
type Heard = (Histogram<u64>, usize, u64);

impl Nodes {
    /// Starts the nodes, each with its own store and a mesh listener, all
    /// sharing one secret; links none of them yet.
    async fn start(args: &MeshArgs) -> Result<Nodes, BenchError> {
        let dir = tempfile::tempdir().map_err(BenchError::setup)?;
        let secret = dir.path().join("mesh-secret");
        std::fs::write(&secret, format!("bench secret {}", run_id())).map_err(BenchError::setup)?;
        let mut servers = Vec::new();
        for i in 0..args.nodes {
            let mut serve = ServeArgs::ephemeral(&dir.path().join(node_name(i)));
            serve.node_name = Some(node_name(i));
            serve.mesh_addr = Some("127.0.0.1:0".into());
            serve.mesh_secret_file = Some(secret.clone());
            let settings = serve
                .resolve()
                .map_err(BenchError::setup)?
                .without_client_limits();
            servers.push(
                Server::start(settings)
                    .await
                    .map_err(|e| BenchError::Spawn(e.to_string()))?,
            );
        }
        let mut links: Vec<(usize, usize)> = (1..args.nodes).map(|i| (i - 1, i)).collect();
        if args.shape == Shape::Ring {
            links.push((args.nodes - 1, 0));
        }
        Ok(Nodes {
            servers,
            links,
            shape: args.shape,
            _dir: dir,
        })
    }

    /// Makes every link but the last and waits for agreement, then makes
    /// the last: how long from its handshake to every node agreeing.
    async fn link_up(&self) -> Result<Duration, BenchError> {
        let (&(from, to), rest) = self
            .links
            .split_last()
            .ok_or_else(|| BenchError::setup("no links"))?;
        for &(a, b) in rest {
            self.dial(a, b).await?;
        }
        let linked = rest.iter().map(|&(a, b)| a.max(b)).max().unwrap_or(0);
        agree(&self.servers[..=linked], rest.len()).await?;
        let started = Instant::now();
        self.dial(from, to).await?;
        agree(&self.servers, self.links.len()).await?;
        Ok(started.elapsed())
    }

    /// Node `from` dials node `to`, as an operator's `/peer-connect` would.
    async fn dial(&self, from: usize, to: usize) -> Result<(), BenchError> {
        let addr = self.servers[to]
            .mesh_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        self.servers[from]
            .mesh()
            .connect(&addr, false)
            .await
            .map(drop)
            .map_err(BenchError::setup)
    }

    /// Hops from node 0 to node `i`.
    fn hops(&self, i: usize) -> usize {
        match self.shape {
            Shape::Line => i,
            Shape::Ring => i.min(self.servers.len() - i),
        }
    }

    /// A speaker on node 0 sends the run's messages at its rate; a listener
    /// on every other node records when each arrives.
    async fn speak(&self, args: &MeshArgs) -> Result<Deliveries, BenchError> {
        let id = run_id();
        let mut speaker = user(&self.servers[0], &format!("{id}-speaker")).await?;
        let mut listeners = Vec::new();
        for (i, server) in self.servers.iter().enumerate().skip(1) {
            listeners.push((i, user(server, &format!("{id}-l{i}")).await?));
        }
        // Everyone listening is known to be online before the first message.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let expected = args.messages;
        let receiving: Vec<_> = listeners
            .into_iter()
            .map(|(i, listener)| (i, tokio::spawn(listen(listener, expected))))
            .collect();
        let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
        let mut tick = tokio::time::interval(gap);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for seq in 0..args.messages {
            tick.tick().await;
            speaker
                .send_line(&format!("{seq} {}", now_us()))
                .await
                .map_err(BenchError::setup)?;
        }
        let mut heard = Deliveries {
            by_hops: BTreeMap::new(),
            duplicates: 0,
            missing: 0,
        };
        for (i, task) in receiving {
            let (h, received, duplicates) = task.await.map_err(BenchError::setup)?;
            heard.duplicates += duplicates;
            heard.missing += (expected - received) as u64;
            let entry = heard
                .by_hops
                .entry(self.hops(i))
                .or_insert_with(|| (histogram(), 0));
            let _ = entry.0.add(&h);
            entry.1 += received;
        }
        Ok(heard)
    }

    /// Drops the middle link: how long until the ring, now a line, agrees
    /// again, or until both halves of the split line have dropped it.
    async fn link_down(&self) -> Result<Duration, BenchError> {
        let started = Instant::now();
        let (from, to) = self.links[self.links.len() / 2];
        self.servers[from]
            .mesh()
            .kill(&node_name(to))
            .map_err(BenchError::setup)?;
        match self.shape {
            Shape::Ring => agree(&self.servers, self.links.len() - 1).await,
            // A split line never agrees as a whole: each half must drop the link.
            Shape::Line => {
                loop {
                    if self
                        .servers
                        .iter()
                        .all(|s| s.mesh().topology().links.len() < self.links.len())
                    {
                        break;
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        return Err(BenchError::setup("the line did not notice the cut"));
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                Ok(started.elapsed())
            }
        }
    }

    async fn shutdown(self) {
        for server in self.servers {
            server.shutdown().await;
        }
    }
}

/// Reads room speech until every message has come once, or 5 s pass in
/// silence; each carries its sequence number and send time.
async fn listen(mut listener: LineClient, expected: usize) -> Heard {
    let mut h = histogram();
    let mut seen = HashSet::new();
    let mut duplicates = 0u64;
    while seen.len() < expected {
        let next = tokio::time::timeout(Duration::from_secs(5), listener.next_delivery()).await;
        let Ok(Ok(ServerLine::Room { text, .. })) = next else {
            break;
        };
        let Some((seq, sent)) = text.split_once(' ') else {
            continue;
        };
        let (Ok(seq), Ok(sent)) = (seq.parse::<u64>(), sent.parse::<u64>()) else {
            continue;
        };
        if !seen.insert(seq) {
            duplicates += 1;
            continue;
        }
        let _ = h.record(now_us().saturating_sub(sent).max(1));
    }
    (h, seen.len(), duplicates)
}
