//! `meshtalk serve`'s flags, which are also the config file's keys: the
//! flags (each with its `MESHTALK_*` environment variable) as clap reads
//! them, the file as serde reads it, and the one laid over the other.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `meshtalk serve` flags. In the TOML file the same names are keys
/// (`data-dir = "..."`, `operator = ["alice"]`).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// A TOML file with any of these settings; flags and environment win over it.
    #[arg(long, env = "MESHTALK_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Check the settings (and the files they name), say what would run,
    /// and exit without serving.
    #[arg(long)]
    #[serde(skip)]
    pub check_config: bool,
    /// Where the SQLite database lives.
    #[arg(long, env = "MESHTALK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The host every listener binds to, unless its own address is given.
    #[arg(long, env = "MESHTALK_BIND")]
    pub bind: Option<String>,
    /// gRPC listen address [default: BIND:50051].
    #[arg(long, env = "MESHTALK_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// Line protocol (talker) listen address [default: BIND:8889].
    #[arg(long, env = "MESHTALK_TALK_ADDR")]
    pub talk_addr: Option<String>,
    /// Binary protocol listen address [default: BIND:8890].
    #[arg(long, env = "MESHTALK_WIRE_ADDR")]
    pub wire_addr: Option<String>,
    /// HTTP listen address: /metrics (Prometheus), /healthz, /readyz [default: BIND:8080].
    #[arg(long, env = "MESHTALK_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Concurrent connections each of the line and binary listeners accepts [default: 65536].
    #[arg(long, env = "MESHTALK_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Mesh (peer link) listen address, HOST:PORT or HOST (port 9999); no
    /// peer can link in until this or an operator's /peer-listen.
    #[arg(long, env = "MESHTALK_MESH_ADDR")]
    pub mesh_addr: Option<String>,
    /// A peer to link to at start, HOST:PORT (repeatable); retried until it answers.
    #[arg(long = "peer", env = "MESHTALK_PEER", value_delimiter = ',')]
    #[serde(default)]
    pub peer: Vec<String>,
    /// A file holding the secret every node of the mesh shares; needed to link.
    #[arg(long, env = "MESHTALK_MESH_SECRET_FILE")]
    pub mesh_secret_file: Option<PathBuf>,
    /// This node's name [default: the host name].
    #[arg(long, env = "MESHTALK_NODE_NAME")]
    pub node_name: Option<String>,
    /// Store URL [default: sqlite://DATA_DIR/meshtalk.db].
    #[arg(long, env = "MESHTALK_STORE")]
    pub store: Option<String>,
    /// An account allowed to run operator commands (repeatable).
    #[arg(long = "operator", env = "MESHTALK_OPERATOR", value_delimiter = ',')]
    #[serde(default)]
    pub operator: Vec<String>,
    /// Log as text or JSON lines [default: text].
    #[arg(long, env = "MESHTALK_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Largest message body in bytes [default: 4096].
    #[arg(long, env = "MESHTALK_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Rooms this node may hold [default: 100000].
    #[arg(long, env = "MESHTALK_MAX_ROOMS")]
    pub max_rooms: Option<usize>,
    /// Deliveries a session may fall behind before it is disconnected [default: 4096].
    #[arg(long, env = "MESHTALK_QUEUE_DEPTH")]
    pub queue_depth: Option<usize>,
    /// PEM certificate chain; with --tls-key every client door speaks only TLS.
    #[arg(long, env = "MESHTALK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "MESHTALK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve without TLS on a non-loopback address (behind a TLS-terminating proxy).
    #[arg(long, env = "MESHTALK_ALLOW_PLAINTEXT")]
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Seconds a line or binary connection has to log in [default: 30].
    #[arg(long, env = "MESHTALK_LOGIN_TIMEOUT")]
    pub login_timeout: Option<u64>,
    /// Seconds a client has to finish a line, frame or HTTP request it started [default: 10].
    #[arg(long, env = "MESHTALK_READ_TIMEOUT")]
    pub read_timeout: Option<u64>,
    /// Concurrent connections from one IP address (IPv6: its /64), all doors together [default: 256].
    #[arg(long, env = "MESHTALK_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Messages one session may send per second once its burst is spent; 0 turns the limit off [default: 20].
    #[arg(long, env = "MESHTALK_SEND_RATE")]
    pub send_rate: Option<f64>,
    /// Messages one session may send at once before the rate applies [default: 60].
    #[arg(long, env = "MESHTALK_SEND_BURST")]
    pub send_burst: Option<u32>,
    /// Accounts one IP address may register before each further one waits longer; 0 turns the limit off [default: 32].
    #[arg(long, env = "MESHTALK_REGISTRATIONS_PER_IP")]
    pub registrations_per_ip: Option<u32>,
    /// Free space the data dir keeps; below it new messages are refused (bytes, or with K, M, G) [default: 64M].
    #[arg(long, env = "MESHTALK_MIN_FREE_DISK", value_parser = parse_size)]
    #[serde(default, deserialize_with = "deserialize_size")]
    pub min_free_disk: Option<u64>,
    /// Delete messages older than this (e.g. 30d, 12h; s, m, h, d), except
    /// direct messages not yet delivered [default: keep everything].
    #[arg(long, env = "MESHTALK_HISTORY_RETENTION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub history_retention: Option<u64>,
    /// Keep at most this many messages per room, the newest [default: no cap].
    #[arg(long, env = "MESHTALK_ROOM_HISTORY_MAX")]
    pub room_history_max: Option<u32>,
}

impl ServeArgs {
    /// A server for tests, examples and benchmarks: data in `dir`, every
    /// listener on a free loopback port.
    pub fn ephemeral(dir: &Path) -> ServeArgs {
        let any_port = || Some("127.0.0.1:0".to_owned());
        ServeArgs {
            data_dir: Some(dir.to_owned()),
            grpc_addr: any_port(),
            talk_addr: any_port(),
            wire_addr: any_port(),
            http_addr: any_port(),
            ..Default::default()
        }
    }

    /// These settings over `file`'s: a value given here wins, the lists add
    /// up (these first). Every field is named, so a new flag does not build
    /// until it is merged here too.
    pub(super) fn over(self, file: ServeArgs) -> ServeArgs {
        let mut peer = self.peer;
        peer.extend(file.peer);
        let mut operator = self.operator;
        operator.extend(file.operator);
        ServeArgs {
            config: self.config,
            check_config: self.check_config,
            data_dir: self.data_dir.or(file.data_dir),
            bind: self.bind.or(file.bind),
            grpc_addr: self.grpc_addr.or(file.grpc_addr),
            talk_addr: self.talk_addr.or(file.talk_addr),
            wire_addr: self.wire_addr.or(file.wire_addr),
            http_addr: self.http_addr.or(file.http_addr),
            max_connections: self.max_connections.or(file.max_connections),
            mesh_addr: self.mesh_addr.or(file.mesh_addr),
            peer,
            mesh_secret_file: self.mesh_secret_file.or(file.mesh_secret_file),
            node_name: self.node_name.or(file.node_name),
            store: self.store.or(file.store),
            operator,
            log_format: self.log_format.or(file.log_format),
            max_body: self.max_body.or(file.max_body),
            max_rooms: self.max_rooms.or(file.max_rooms),
            queue_depth: self.queue_depth.or(file.queue_depth),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            allow_plaintext: self.allow_plaintext || file.allow_plaintext,
            login_timeout: self.login_timeout.or(file.login_timeout),
            read_timeout: self.read_timeout.or(file.read_timeout),
            max_connections_per_ip: self.max_connections_per_ip.or(file.max_connections_per_ip),
            send_rate: self.send_rate.or(file.send_rate),
            send_burst: self.send_burst.or(file.send_burst),
            registrations_per_ip: self.registrations_per_ip.or(file.registrations_per_ip),
            min_free_disk: self.min_free_disk.or(file.min_free_disk),
            history_retention: self.history_retention.or(file.history_retention),
            room_history_max: self.room_history_max.or(file.room_history_max),
        }
    }
}

/// A byte count: plain, or with a K, M or G suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size: use bytes, or a number with K, M or G"))
}

/// A duration in seconds: plain, or a number with s, m, h or d.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 'h')) => (&text[..i], 3_600),
        Some((i, 'd')) => (&text[..i], 86_400),
        _ => (text, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| {
            format!("{text:?} is not a duration: use a number with s, m, h or d, e.g. 30d")
        })
}

fn deserialize_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number_or_text(d, parse_duration)
}

fn deserialize_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number_or_text(d, parse_size)
}

/// A config value given as a plain number, or as text that `parse` reads
/// (`"64M"`, `"30d"`), as on the command line.
fn number_or_text<'de, D: serde::Deserializer<'de>>(
    d: D,
    parse: fn(&str) -> Result<u64, String>,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u64),
        Text(String),
    }
    match Given::deserialize(d)? {
        Given::Number(n) => Ok(Some(n)),
        Given::Text(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
    }
}

pub(super) fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}
