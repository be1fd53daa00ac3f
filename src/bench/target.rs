//! Where a benchmark sends its load: a running server's addresses, or a
//! fresh server spawned in a temporary directory for the run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};

use clap::Args;

use super::BenchError;
use crate::client::Client;
use crate::client::transport::ClientTls;

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Start a fresh server (this binary) in a temporary directory for the run.
    #[arg(long)]
    pub spawn: bool,
    /// The server's gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub grpc: String,
    /// The server's line-protocol address.
    #[arg(long, default_value = "127.0.0.1:8889")]
    pub talk: String,
    /// The server's binary-protocol address.
    #[arg(long, default_value = "127.0.0.1:8890")]
    pub wire: String,
    /// The server's process id, for memory figures (known with --spawn).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Speak TLS on every protocol (with --spawn, the server gets a fresh
    /// certificate); the gRPC URL then starts with https://.
    #[arg(long)]
    pub tls: bool,
    /// The CA certificate (PEM) to check the server's against with --tls
    /// [default: the system's roots].
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// With --spawn: the store URL the server runs on (a `postgres://`
    /// database it shares with nothing else during the run) [default: a
    /// SQLite file in the temporary directory].
    #[arg(long, requires = "spawn")]
    pub store: Option<String>,
    /// With --spawn and a PostgreSQL --store: start this many nodes on the
    /// database, linked as a mesh; the run's connections are spread over
    /// them in turn.
    #[arg(long, default_value_t = 1, requires = "store")]
    pub nodes: usize,
}

/// A server under load.
pub struct Target {
    pub grpc: String,
    pub talk: String,
    pub wire: String,
    pub pid: Option<u32>,
    /// With --tls: the CA to trust, if not the system's roots.
    tls: Option<Option<PathBuf>>,
    /// A spawned node's mesh address, when it has one.
    mesh: Option<String>,
    spawned: Option<(Child, tempfile::TempDir)>,
    /// The further nodes spawned on the same store, linked to this one.
    siblings: Vec<Target>,
}

impl Target {
    pub async fn open(args: &TargetArgs) -> Result<Target, BenchError> {
        if !args.spawn {
            return Ok(Target {
                grpc: args.grpc.clone(),
                talk: args.talk.clone(),
                wire: args.wire.clone(),
                pid: args.pid,
                mesh: None,
                tls: args.tls.then(|| args.ca_cert.clone()),
                spawned: None,
                siblings: Vec::new(),
            });
        }
        if args.nodes <= 1 {
            return Self::spawn(args.tls, args.store.as_deref(), None).await;
        }
        // Nodes serve one set of accounts only when they share one store.
        if !args
            .store
            .as_deref()
            .is_some_and(|s| s.starts_with("postgres"))
        {
            return Err(BenchError::Spawn(
                "--nodes above 1 needs a PostgreSQL --store for the nodes to share".into(),
            ));
        }
        let store = args.store.as_deref();
        let secret = tempfile::NamedTempFile::new().map_err(spawn_error)?;
        std::fs::write(secret.path(), run_secret()).map_err(spawn_error)?;
        let mesh = Mesh {
            secret: secret.path(),
            node: 1,
            peer: None,
        };
        let mut first = Self::spawn(args.tls, store, Some(mesh)).await?;
        let peer = first.mesh.clone();
        for node in 2..=args.nodes {
            let mesh = Mesh {
                secret: secret.path(),
                node,
                peer: peer.as_deref(),
            };
            first
                .siblings
                .push(Self::spawn(args.tls, store, Some(mesh)).await?);
        }
        Ok(first)
    }

    /// The `i`th node, counting round: where the `i`th connection of a run
    /// goes.
    pub fn node(&self, i: usize) -> &Target {
        match i % (self.siblings.len() + 1) {
            0 => self,
            k => &self.siblings[k - 1],
        }
    }

    /// How many nodes the run spreads its connections over.
    pub fn nodes(&self) -> usize {
        self.siblings.len() + 1
    }

    /// Starts this binary as a server in a fresh temporary directory, on
    /// ports of its choosing, and reads them from its log; as a node of a
    /// mesh with `mesh`, once it has linked to its peer.
    async fn spawn(
        tls: bool,
        store: Option<&str>,
        mesh: Option<Mesh<'_>>,
    ) -> Result<Target, BenchError> {
        let dir = tempfile::tempdir().map_err(spawn_error)?;
        let (mut command, tls) = server_command(dir.path(), tls)?;
        if let Some(store) = store {
            command.args(["--store", store]);
        }
        let linking = mesh.as_ref().is_some_and(|m| m.peer.is_some());
        match mesh {
            Some(mesh) => mesh.args(&mut command),
            None => drop(command.args(["--node-name", "bench"])),
        }
        let mut child = command.spawn().map_err(spawn_error)?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| BenchError::Spawn("no log".into()))?;
        let reading = tokio::task::spawn_blocking(move || addresses(stderr, linking));
        let fields = match tokio::time::timeout(START_TIMEOUT, reading).await {
            Ok(Ok(Some(fields))) => fields,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Spawn(match outcome {
                    Err(_) => format!(
                        "the server did not start (and link, in a mesh) within {} s",
                        START_TIMEOUT.as_secs()
                    ),
                    _ => "the server did not start".into(),
                }));
            }
        };
        let field = |name: &str| fields[name].as_str().unwrap_or_default().to_owned();
        let pid = child.id();
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(Target {
            grpc: format!("{scheme}://{}", field("grpc")),
            talk: field("talk"),
            wire: field("wire"),
            pid: Some(pid),
            tls,
            mesh: fields["mesh"]
                .as_str()
                .filter(|m| *m != "off")
                .map(str::to_owned),
            spawned: Some((child, dir)),
            siblings: Vec::new(),
        })
    }

    /// A gRPC client, for setting up accounts and rooms and for gRPC load.
    pub async fn admin(&self) -> Result<Client, BenchError> {
        Client::connect_with(&self.grpc, self.ca())
            .await
            .map_err(BenchError::setup)
    }

    fn ca(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().and_then(|ca| ca.as_deref())
    }

    /// A gRPC endpoint to the server, with TLS when the run speaks it.
    pub fn grpc_endpoint(&self) -> Result<tonic::transport::Endpoint, BenchError> {
        crate::client::endpoint(&self.grpc, self.ca()).map_err(BenchError::setup)
    }

    /// TLS settings for a line or binary connection to `addr`, when the
    /// run speaks TLS.
    pub fn tls_for(&self, addr: &str) -> Result<Option<ClientTls>, BenchError> {
        match &self.tls {
            None => Ok(None),
            Some(ca) => ClientTls::new(addr, ca.as_deref())
                .map(Some)
                .map_err(BenchError::setup),
        }
    }

    /// The server's resident memory in KiB, if its pid is known.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self.spawned {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }
}

fn spawn_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Spawn(e.to_string())
}

/// The command that starts a server in `dir` (with a fresh certificate
/// if `tls`), and the CA to trust when it speaks TLS.
fn server_command(dir: &Path, tls: bool) -> Result<(Command, Option<Option<PathBuf>>), BenchError> {
    let exe = std::env::current_exe().map_err(spawn_error)?;
    let mut command = Command::new(exe);
    command.args(["serve", "--log-format", "json"]);
    let tls = match tls {
        false => None,
        true => {
            let made = crate::tls::make_certificates(&dir.join("tls"), &[]).map_err(spawn_error)?;
            command
                .arg("--tls-cert")
                .arg(&made.cert)
                .arg("--tls-key")
                .arg(&made.key);
            Some(Some(made.ca))
        }
    };
    command
        .args(["--grpc-addr", "127.0.0.1:0", "--talk-addr", "127.0.0.1:0"])
        .args(["--wire-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        // The load comes from one address, as fast as it can: no per-client limits.
        .args(["--send-rate", "0", "--max-connections-per-ip", "1000000"])
        .args(["--registrations-per-ip", "0"])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn,meshtalk::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok((command, tls))
}

/// How a spawned node joins the run's mesh.
struct Mesh<'a> {
    secret: &'a Path,
    /// Its number, for its name.
    node: usize,
    /// The first node's mesh address, for every node after it.
    peer: Option<&'a str>,
}

impl Mesh<'_> {
    fn args(&self, command: &mut Command) {
        command
            .arg("--node-name")
            .arg(format!("bench{}", self.node))
            .args(["--mesh-addr", "127.0.0.1:0", "--mesh-secret-file"])
            .arg(self.secret);
        if let Some(peer) = self.peer {
            command.args(["--peer", peer]);
        }
    }
}

/// How long a spawned server may take to start serving (and link).
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A mesh secret for one run: its nodes are the only ones that know it.
fn run_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Reads the server's JSON log up to the line naming its addresses (and,
/// if `linking`, on to the line saying it linked to its peer), and returns
/// the addresses line's fields (`None` if the log ends first). Blocks.
fn addresses(stderr: ChildStderr, linking: bool) -> Option<serde_json::Value> {
    let mut lines = BufReader::new(stderr).lines();
    let mut fields = None;
    // The link may come up before the addresses line is logged.
    let mut linked = !linking;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if json["fields"]["grpc"].is_string() {
            fields = Some(json["fields"].clone());
        }
        linked |= json["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("linked to"));
        if fields.is_some() && linked {
            break;
        }
    }
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    fields
}
