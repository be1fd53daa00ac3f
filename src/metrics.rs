//! What an operator scrapes: the process's counters, gauges and histograms,
//! encoded in the Prometheus text format for the HTTP door's `/metrics`.
//!
//! The metrics are the process's, in one static registry, so any layer
//! counts with one atomic add and nothing has to be passed down to it. A
//! process runs one server; tests that start several in one process see
//! their counters added up, which is why they only check that counters
//! move. Figures that are state rather than events (open sessions,
//! acknowledgements waiting) are read at scrape time by the server and set
//! here just before encoding.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A client door, as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    Grpc,
    Line,
    Binary,
    Http,
}

impl Door {
    fn label(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Line => "line",
            Door::Binary => "binary",
            Door::Http => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ByProtocol {
    protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ByAction {
    action: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ByDirection {
    direction: &'static str,
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    connections: Family<ByProtocol, Gauge>,
    connections_accepted: Family<ByProtocol, Counter>,
    connections_refused: Counter,
    sessions: Gauge,
    messages_stored: Counter,
    deliveries: Counter,
    slow_consumers: Counter,
    commit_seconds: Histogram,
    batch_size: Histogram,
    acks_pending: Gauge,
    mesh_links: Gauge,
    mesh_frames: Family<ByDirection, Counter>,
    login_failures: Counter,
    rate_limited: Counter,
    moderations: Family<ByAction, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            connections_accepted: Family::default(),
            connections_refused: Counter::default(),
            sessions: Gauge::default(),
            messages_stored: Counter::default(),
            deliveries: Counter::default(),
            slow_consumers: Counter::default(),
            // 50 µs to about 3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1 to 4,096 mutations.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            acks_pending: Gauge::default(),
            mesh_links: Gauge::default(),
            mesh_frames: Family::default(),
            login_failures: Counter::default(),
            rate_limited: Counter::default(),
            moderations: Family::default(),
        };
        let mut r = Registry::with_prefix("meshtalk");
        r.register(
            "connections",
            "Open client connections, by protocol",
            m.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections admitted, by protocol",
            m.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections refused at the gate (per-address or total cap)",
            m.connections_refused.clone(),
        );
        r.register(
            "sessions",
            "Live delivery streams of logged-in sessions",
            m.sessions.clone(),
        );
        r.register(
            "messages_stored",
            "Messages committed to the store",
            m.messages_stored.clone(),
        );
        r.register(
            "deliveries",
            "Messages handed to live streams",
            m.deliveries.clone(),
        );
        r.register(
            "slow_consumers",
            "Live streams cut off for falling a whole queue behind",
            m.slow_consumers.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Time from a batch's first write to its commit returning",
            m.commit_seconds.clone(),
        );
        r.register(
            "store_batch_mutations",
            "Mutations (messages, memberships, accounts) committed per transaction",
            m.batch_size.clone(),
        );
        r.register(
            "acks_pending",
            "Acknowledged ids held in memory, not yet written",
            m.acks_pending.clone(),
        );
        r.register(
            "mesh_links",
            "Live links to other nodes",
            m.mesh_links.clone(),
        );
        r.register(
            "mesh_frames",
            "Peer frames, by direction (in, out)",
            m.mesh_frames.clone(),
        );
        r.register(
            "login_failures",
            "Log-ins refused for a wrong name or password",
            m.login_failures.clone(),
        );
        r.register(
            "rate_limited",
            "Requests held back or refused by a send allowance",
            m.rate_limited.clone(),
        );
        r.register(
            "moderations",
            "Operators' acts on accounts homed here, by action (kick, suspend, restore)",
            m.moderations.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct Open(Door);

impl Drop for Open {
    fn drop(&mut self) {
        METRICS
            .connections
            .get_or_create(&ByProtocol {
                protocol: self.0.label(),
            })
            .dec();
    }
}

/// Counts a connection admitted through `door`; it stays counted as open
/// while the returned guard lives.
pub fn connection_opened(door: Door) -> Open {
    let by = ByProtocol {
        protocol: door.label(),
    };
    METRICS.connections_accepted.get_or_create(&by).inc();
    METRICS.connections.get_or_create(&by).inc();
    Open(door)
}

pub fn connection_refused() {
    METRICS.connections_refused.inc();
}

pub fn messages_stored(n: u64) {
    METRICS.messages_stored.inc_by(n);
}

pub fn delivered(n: u64) {
    if n > 0 {
        METRICS.deliveries.inc_by(n);
    }
}

pub fn slow_consumer() {
    METRICS.slow_consumers.inc();
}

/// A committed transaction of `mutations` that took `took`.
pub fn committed(mutations: usize, took: Duration) {
    METRICS.commit_seconds.observe(took.as_secs_f64());
    METRICS.batch_size.observe(mutations as f64);
}

pub fn mesh_frame_in() {
    METRICS
        .mesh_frames
        .get_or_create(&ByDirection { direction: "in" })
        .inc();
}

pub fn mesh_frame_out() {
    METRICS
        .mesh_frames
        .get_or_create(&ByDirection { direction: "out" })
        .inc();
}

pub fn login_failed() {
    METRICS.login_failures.inc();
}

/// An operator's kick, suspension or restore, by its name.
pub fn moderated(action: &'static str) {
    METRICS
        .moderations
        .get_or_create(&ByAction { action })
        .inc();
}

pub fn rate_limited() {
    METRICS.rate_limited.inc();
}

/// What the server knows only by looking, at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct State {
    pub sessions: u64,
    pub acks_pending: u64,
    pub mesh_links: u64,
}

/// Every metric in the Prometheus text format, with `state` as it is now.
pub fn encode(state: State) -> String {
    METRICS.sessions.set(gauge(state.sessions));
    METRICS.acks_pending.set(gauge(state.acks_pending));
    METRICS.mesh_links.set(gauge(state.mesh_links));
    let mut text = String::new();
    // Writing into a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &METRICS.registry);
    text
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_by_convention() {
        let open = connection_opened(Door::Line);
        messages_stored(3);
        committed(3, Duration::from_millis(2));
        let text = encode(State {
            sessions: 2,
            ..State::default()
        });
        for line in [
            "# TYPE meshtalk_messages_stored counter",
            "meshtalk_sessions 2",
            "# TYPE meshtalk_store_commit_seconds histogram",
            "meshtalk_store_batch_mutations_count",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        assert!(text.contains("meshtalk_connections{protocol=\"line\"}"));
        drop(open);
    }
}
