//! Server settings: command-line flags, each also a `MESHTALK_*` environment
//! variable, over an optional TOML file (`--config`), over defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::core::{Limits, SendRate};

pub const DEFAULT_GRPC_PORT: u16 = 50051;
pub const DEFAULT_TALK_PORT: u16 = 8889;
pub const DEFAULT_WIRE_PORT: u16 = 8890;
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
pub const DEFAULT_BIND: &str = "127.0.0.1";
/// The mesh port when `--mesh-addr` names only a host.
pub const DEFAULT_MESH_PORT: u16 = 9999;
pub const DEFAULT_DATA_DIR: &str = "meshtalk-data";
pub const DEFAULT_LOGIN_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
pub const DEFAULT_SEND_RATE: f64 = 20.0;
pub const DEFAULT_SEND_BURST: u32 = 60;
pub const DEFAULT_MIN_FREE_DISK: u64 = 64 << 20;
/// Open files kept back from the connection cap for the store, the mesh and
/// the listeners themselves.
const RESERVED_FILES: usize = 64;

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
    /// Seconds a client has to finish a line or frame it started [default: 10].
    #[arg(long, env = "MESHTALK_READ_TIMEOUT")]
    pub read_timeout: Option<u64>,
    /// Concurrent connections from one IP address, all doors together [default: 256].
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
}

/// Bounds on connections, shared by every client door.
#[derive(Debug, Clone)]
pub struct ConnectionBounds {
    /// Concurrent connections in all, every door together; never above what
    /// the process's open-file limit allows.
    pub max_connections: usize,
    /// Concurrent connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Time a line or binary connection has to log in.
    pub login_timeout: Duration,
    /// Time a client has to finish a line, frame or TLS handshake it started.
    pub read_timeout: Duration,
}

/// The certificate and key every client door serves TLS with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("unsupported store URL {0:?}: use sqlite://PATH")]
    StoreUrl(String),
    #[error("{0}")]
    Invalid(String),
}

/// Settings resolved from flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub sqlite_path: PathBuf,
    pub grpc_addr: String,
    pub talk_addr: String,
    pub wire_addr: String,
    pub bounds: ConnectionBounds,
    pub tls: Option<TlsFiles>,
    pub allow_plaintext: bool,
    /// Free bytes the data dir keeps; below it new messages are refused.
    pub min_free_disk: u64,
    pub node: String,
    pub mesh_addr: Option<String>,
    pub peers: Vec<String>,
    pub mesh_secret: Option<Vec<u8>>,
    pub operators: Vec<String>,
    pub log_format: LogFormat,
    pub limits: Limits,
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
            ..Default::default()
        }
    }

    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let bind = self
            .bind
            .or(file.bind)
            .unwrap_or_else(|| DEFAULT_BIND.to_owned());
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let sqlite_path = match self.store.or(file.store) {
            None => data_dir.join("meshtalk.db"),
            Some(url) => match url.strip_prefix("sqlite://") {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => return Err(ConfigError::StoreUrl(url)),
            },
        };
        let mut operators = self.operator;
        operators.extend(file.operator);
        let defaults = Limits::default();
        let limits = Limits {
            max_body: self.max_body.or(file.max_body).unwrap_or(defaults.max_body),
            queue_depth: self
                .queue_depth
                .or(file.queue_depth)
                .unwrap_or(defaults.queue_depth),
            max_rooms: self
                .max_rooms
                .or(file.max_rooms)
                .unwrap_or(defaults.max_rooms),
            send_rate: {
                let per_second = self
                    .send_rate
                    .or(file.send_rate)
                    .unwrap_or(DEFAULT_SEND_RATE);
                let burst = self
                    .send_burst
                    .or(file.send_burst)
                    .unwrap_or(DEFAULT_SEND_BURST);
                if !per_second.is_finite() || per_second < 0.0 || burst == 0 {
                    return Err(ConfigError::Invalid(
                        "send-rate must be 0 (off) or more, and send-burst at least 1".into(),
                    ));
                }
                (per_second > 0.0).then_some(SendRate { per_second, burst })
            },
            registrations_per_ip: match self.registrations_per_ip.or(file.registrations_per_ip) {
                Some(0) => None,
                Some(n) => Some(n),
                None => defaults.registrations_per_ip,
            },
            ..defaults
        };
        if limits.max_body == 0
            || limits.queue_depth == 0
            || self.max_connections.or(file.max_connections) == Some(0)
        {
            return Err(ConfigError::Invalid(
                "max-body, queue-depth and max-connections must be at least 1".into(),
            ));
        }
        let node = self.node_name.or(file.node_name).unwrap_or_else(host_name);
        if !crate::mesh::valid_node_name(&node) {
            return Err(ConfigError::Invalid(format!(
                "invalid node name {node:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"
            )));
        }
        let mesh_secret = match self.mesh_secret_file.or(file.mesh_secret_file) {
            None => None,
            Some(path) => {
                let text = std::fs::read(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                // A trailing newline from `echo secret > file` is not part of it.
                let secret = text.trim_ascii().to_vec();
                if secret.len() < 16 {
                    return Err(ConfigError::Invalid(format!(
                        "the mesh secret in {} is {} bytes: use at least 16",
                        path.display(),
                        secret.len()
                    )));
                }
                Some(secret)
            }
        };
        let mut peers = self.peer;
        peers.extend(file.peer);
        let tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "tls-cert and tls-key go together: give both or neither".into(),
                ));
            }
        };
        let bounds = ConnectionBounds {
            max_connections: connection_cap(
                self.max_connections
                    .or(file.max_connections)
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            ),
            max_connections_per_ip: self
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
            login_timeout: Duration::from_secs(
                self.login_timeout
                    .or(file.login_timeout)
                    .unwrap_or(DEFAULT_LOGIN_TIMEOUT_SECS),
            ),
            read_timeout: Duration::from_secs(
                self.read_timeout
                    .or(file.read_timeout)
                    .unwrap_or(DEFAULT_READ_TIMEOUT_SECS),
            ),
        };
        if bounds.max_connections_per_ip == 0
            || bounds.login_timeout.is_zero()
            || bounds.read_timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "max-connections-per-ip, login-timeout and read-timeout must be at least 1".into(),
            ));
        }
        Ok(Settings {
            bounds,
            tls,
            allow_plaintext: self.allow_plaintext || file.allow_plaintext,
            min_free_disk: self
                .min_free_disk
                .or(file.min_free_disk)
                .unwrap_or(DEFAULT_MIN_FREE_DISK),
            mesh_addr: self.mesh_addr.or(file.mesh_addr).map(|addr| {
                let has_port = addr.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.ends_with(':') && port.parse::<u16>().is_ok()
                });
                if has_port {
                    addr
                } else {
                    join_host_port(&addr, DEFAULT_MESH_PORT)
                }
            }),
            peers,
            mesh_secret,
            sqlite_path,
            grpc_addr: self
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| join_host_port(&bind, DEFAULT_GRPC_PORT)),
            talk_addr: self
                .talk_addr
                .or(file.talk_addr)
                .unwrap_or_else(|| join_host_port(&bind, DEFAULT_TALK_PORT)),
            wire_addr: self
                .wire_addr
                .or(file.wire_addr)
                .unwrap_or_else(|| join_host_port(&bind, DEFAULT_WIRE_PORT)),
            node,
            operators,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            limits,
        })
    }
}

impl Settings {
    /// The same server with every per-client bound lifted: for the load
    /// generator's own servers, whose clients are all on one address and
    /// send as fast as they can by design.
    pub fn without_client_limits(mut self) -> Settings {
        self.bounds.max_connections_per_ip = self.bounds.max_connections;
        self.limits.send_rate = None;
        self.limits.registrations_per_ip = None;
        self
    }
}

/// The connection cap: what was asked for, but never more than the open-file
/// limit leaves once the server's own files are counted; past that, accepts
/// would fail with EMFILE instead of a clear refusal.
fn connection_cap(asked: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    asked.min(files.saturating_sub(RESERVED_FILES).max(1))
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

fn deserialize_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(text) => parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "meshtalk".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meshtalk.toml");
        std::fs::write(
            &file,
            "bind = \"0.0.0.0\"\nnode-name = \"from-file\"\noperator = [\"root\"]\nmax-body = 100\n",
        )
        .unwrap();
        let settings = ServeArgs {
            config: Some(file),
            node_name: Some("from-flag".into()),
            operator: vec!["alice".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(settings.node, "from-flag");
        assert_eq!(settings.grpc_addr, "0.0.0.0:50051");
        assert_eq!(settings.talk_addr, "0.0.0.0:8889");
        assert_eq!(settings.wire_addr, "0.0.0.0:8890");
        assert_eq!(settings.operators, vec!["alice", "root"]);
        assert_eq!(settings.limits.max_body, 100);
        assert_eq!(
            settings.sqlite_path,
            PathBuf::from("meshtalk-data/meshtalk.db")
        );
    }

    #[test]
    fn unknown_keys_and_store_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "colour = \"blue\"\n").unwrap();
        let err = ServeArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = ServeArgs {
            store: Some("mysql://x".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(matches!(err, ConfigError::StoreUrl(_)));
    }
}
