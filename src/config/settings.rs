//! The settings a server runs with: flags over the config file over
//! defaults, each group resolved and checked in its own step.

use std::path::PathBuf;
use std::time::Duration;

use super::args::read_file;
use super::{
    ConfigError, DEFAULT_BIND, DEFAULT_DATA_DIR, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT,
    DEFAULT_LOGIN_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MESH_PORT, DEFAULT_MIN_FREE_DISK, DEFAULT_READ_TIMEOUT_SECS, DEFAULT_SEND_BURST,
    DEFAULT_SEND_RATE, DEFAULT_TALK_PORT, DEFAULT_WIRE_PORT, LogFormat, ServeArgs,
};
use crate::core::{Limits, SendRate};

/// Open files kept back from the connection cap for the store, the mesh and
/// the listeners themselves.
const RESERVED_FILES: usize = 64;

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

/// Where the durable state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded SQLite file, one node's own.
    Sqlite(PathBuf),
    /// A PostgreSQL database several nodes may share, by its URL.
    Postgres(String),
}

impl StoreLocation {
    /// Parses a store URL: `sqlite://PATH` or `postgres://…`
    /// (`postgresql://…`).
    pub fn parse(url: &str) -> Result<StoreLocation, ConfigError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if !path.is_empty() {
                return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(url.to_owned()));
        }
        Err(ConfigError::StoreUrl(url.to_owned()))
    }

    /// The store as logs may show it: a PostgreSQL URL without its password.
    pub fn shown(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
            StoreLocation::Postgres(url) => hide_password(url),
        }
    }
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Settings resolved from flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreLocation,
    /// The node's own files: its lock, and its mesh instance counter (beside
    /// the database, with SQLite).
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub talk_addr: String,
    pub wire_addr: String,
    pub http_addr: String,
    pub bounds: ConnectionBounds,
    pub tls: Option<TlsFiles>,
    pub allow_plaintext: bool,
    /// Free bytes the data dir keeps; below it new messages are refused.
    pub min_free_disk: u64,
    /// What history keeps; nothing is pruned when both are unset.
    pub history_retention: Option<Duration>,
    pub room_history_max: Option<u32>,
    pub node: String,
    pub mesh_addr: Option<String>,
    pub peers: Vec<String>,
    pub mesh_secret: Option<Vec<u8>>,
    pub operators: Vec<String>,
    pub log_format: LogFormat,
    pub limits: Limits,
}

impl ServeArgs {
    /// Resolves flags (and environment) over the `--config` file over
    /// defaults. The steps run in a fixed order, so of several bad values
    /// the same one is always reported.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let args = self.over(file);
        let (store, data_dir) = args.store()?;
        let limits = args.limits()?;
        let node = args.node()?;
        let mesh_secret = args.mesh_secret()?;
        let tls = args.tls()?;
        let bounds = args.bounds()?;
        let peers = args.peers()?;
        Ok(Settings {
            grpc_addr: args.door_addr(&args.grpc_addr, DEFAULT_GRPC_PORT),
            talk_addr: args.door_addr(&args.talk_addr, DEFAULT_TALK_PORT),
            wire_addr: args.door_addr(&args.wire_addr, DEFAULT_WIRE_PORT),
            http_addr: args.door_addr(&args.http_addr, DEFAULT_HTTP_PORT),
            store,
            data_dir,
            bounds,
            tls,
            allow_plaintext: args.allow_plaintext,
            min_free_disk: args.min_free_disk.unwrap_or(DEFAULT_MIN_FREE_DISK),
            history_retention: args.history_retention.map(Duration::from_secs),
            room_history_max: args.room_history_max,
            node,
            mesh_addr: args.mesh_addr.map(with_mesh_port),
            peers,
            mesh_secret,
            operators: args.operator,
            log_format: args.log_format.unwrap_or(LogFormat::Text),
            limits,
        })
    }

    /// A door's own address, else the bind host with the door's port.
    /// The peers to link to, each `HOST:PORT`: a peer without a port would
    /// be dialled, and fail, for ever.
    fn peers(&self) -> Result<Vec<String>, ConfigError> {
        for peer in &self.peer {
            let port = peer
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "--peer {peer}: give the peer's mesh address as HOST:PORT, e.g. {peer}:9999"
                )));
            }
        }
        Ok(self.peer.clone())
    }

    fn door_addr(&self, own: &Option<String>, port: u16) -> String {
        own.clone()
            .unwrap_or_else(|| join_host_port(self.bind.as_deref().unwrap_or(DEFAULT_BIND), port))
    }

    /// The store, from its URL, else `meshtalk.db` in the data dir; and the
    /// directory for the node's own files: the SQLite file's, or the data
    /// dir.
    fn store(&self) -> Result<(StoreLocation, PathBuf), ConfigError> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let store = match &self.store {
            None => StoreLocation::Sqlite(data_dir.join("meshtalk.db")),
            Some(url) => StoreLocation::parse(url)?,
        };
        let own = match &store {
            StoreLocation::Sqlite(path) => match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            },
            StoreLocation::Postgres(_) => data_dir,
        };
        Ok((store, own))
    }

    /// The core's limits. `max-connections` is checked with them, as the
    /// one message about sizes names it too.
    fn limits(&self) -> Result<Limits, ConfigError> {
        let defaults = Limits::default();
        let limits = Limits {
            max_body: self.max_body.unwrap_or(defaults.max_body),
            queue_depth: self.queue_depth.unwrap_or(defaults.queue_depth),
            max_rooms: self.max_rooms.unwrap_or(defaults.max_rooms),
            send_rate: self.send_allowance()?,
            registrations_per_ip: match self.registrations_per_ip {
                Some(0) => None,
                Some(n) => Some(n),
                None => defaults.registrations_per_ip,
            },
            ..defaults
        };
        if limits.max_body == 0 || limits.queue_depth == 0 || self.max_connections == Some(0) {
            return Err(ConfigError::Invalid(
                "max-body, queue-depth and max-connections must be at least 1".into(),
            ));
        }
        Ok(limits)
    }

    /// A session's send allowance; none when the rate is 0.
    fn send_allowance(&self) -> Result<Option<SendRate>, ConfigError> {
        let per_second = self.send_rate.unwrap_or(DEFAULT_SEND_RATE);
        let burst = self.send_burst.unwrap_or(DEFAULT_SEND_BURST);
        if !per_second.is_finite() || per_second < 0.0 || burst == 0 {
            return Err(ConfigError::Invalid(
                "send-rate must be 0 (off) or more, and send-burst at least 1".into(),
            ));
        }
        Ok((per_second > 0.0).then_some(SendRate { per_second, burst }))
    }

    fn node(&self) -> Result<String, ConfigError> {
        let node = self.node_name.clone().unwrap_or_else(host_name);
        if !crate::mesh::valid_node_name(&node) {
            return Err(ConfigError::Invalid(format!(
                "invalid node name {node:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"
            )));
        }
        Ok(node)
    }

    /// The secret the mesh shares, read from its file.
    fn mesh_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.mesh_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
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
        Ok(Some(secret))
    }

    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err(ConfigError::Invalid(
                "tls-cert and tls-key go together: give both or neither".into(),
            )),
        }
    }

    fn bounds(&self) -> Result<ConnectionBounds, ConfigError> {
        let seconds = |given: Option<u64>, default| Duration::from_secs(given.unwrap_or(default));
        let bounds = ConnectionBounds {
            max_connections: connection_cap(
                self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            ),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
            login_timeout: seconds(self.login_timeout, DEFAULT_LOGIN_TIMEOUT_SECS),
            read_timeout: seconds(self.read_timeout, DEFAULT_READ_TIMEOUT_SECS),
        };
        if bounds.max_connections_per_ip == 0
            || bounds.login_timeout.is_zero()
            || bounds.read_timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "max-connections-per-ip, login-timeout and read-timeout must be at least 1".into(),
            ));
        }
        Ok(bounds)
    }
}

/// A mesh address given as a bare host gets the default mesh port.
fn with_mesh_port(addr: String) -> String {
    let has_port = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.ends_with(':') && port.parse::<u16>().is_ok());
    if has_port {
        addr
    } else {
        join_host_port(&addr, DEFAULT_MESH_PORT)
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
