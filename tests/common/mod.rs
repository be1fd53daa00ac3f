//! Test harness: the real server on port 0 against a real SQLite file, or
//! a real PostgreSQL database, and real tonic clients.
//!
//! One suite, two stores: a test file `NAME_pg.rs` includes `NAME.rs`
//! whole, and every server its tests start, in process or as a child, runs
//! on PostgreSQL (`postgres.rs` starts the cluster).
#![allow(dead_code)]

pub mod lines;
pub mod postgres;
pub mod screen;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshtalk::client::Client;
use meshtalk::client::chat::{ChatSession, Outcome};
use meshtalk::client::line::LineClient;
use meshtalk::client::wire::WireClient;
use meshtalk::config::ServeArgs;
use meshtalk::proto;
use meshtalk::server::Server;
use tempfile::TempDir;
use tonic::Streaming;

pub const PASSWORD: &str = "correct-horse-battery-staple";

/// A gRPC client of the server at `url`, logged in as NAME (registered
/// first if `register`), with the log-in's reply.
pub async fn log_in_at(url: &str, name: &str, register: bool) -> (Client, proto::LoginResponse) {
    let client = Client::connect(url).await.expect("connect");
    if register {
        client.register(name, PASSWORD).await.expect("register");
    }
    client.login(name, PASSWORD).await.expect("login")
}

/// Whether this test binary runs its servers on PostgreSQL.
pub fn on_postgres() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_pg")
}

/// The store URL for a server on `data_dir`: its own database on
/// PostgreSQL, the SQLite file in it otherwise.
pub fn store_url(data_dir: &Path) -> String {
    if on_postgres() {
        postgres::url_for(data_dir)
    } else {
        format!("sqlite://{}", data_dir.join("meshtalk.db").display())
    }
}

/// A line client connected from a chosen loopback address (`127.x.y.z`),
/// so a test can be several clients' addresses at once.
pub async fn line_from(server: std::net::SocketAddr, from: &str) -> LineClient {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    let from: std::net::IpAddr = from.parse().expect("address");
    socket
        .bind(std::net::SocketAddr::new(from, 0))
        .expect("bind");
    let stream = socket.connect(server).await.expect("connect");
    LineClient::over(stream).await.expect("greeting")
}

/// The harness's operator: registered through a helper below, it is granted
/// operator rights through the API, as `meshtalk operator root` would.
/// Rights belong to accounts, so naming it at start would grant nothing.
pub const OPERATOR: &str = "root";

pub struct TestServer {
    pub server: Server,
    pub url: String,
    pub dir: TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ServeArgs::default()).await
    }

    pub async fn start_with(args: ServeArgs) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let ephemeral = ServeArgs::ephemeral(dir.path());
        let mut args = ServeArgs {
            data_dir: ephemeral.data_dir,
            grpc_addr: ephemeral.grpc_addr,
            talk_addr: ephemeral.talk_addr,
            wire_addr: ephemeral.wire_addr,
            http_addr: ephemeral.http_addr,
            ..args
        };
        args.node_name.get_or_insert_with(|| "test-node".into());
        if on_postgres() && args.store.is_none() {
            let data_dir = args.data_dir.clone().expect("a data dir");
            args.store = Some(postgres::url_for(&data_dir));
        }
        // Tests send as fast as they can; the ones about the rate limit set it.
        args.send_rate.get_or_insert(0.0);
        args.registrations_per_ip.get_or_insert(0);
        let server = Server::start(args.resolve().expect("settings"))
            .await
            .expect("server starts");
        let url = format!("http://{}", server.grpc_addr());
        TestServer { server, url, dir }
    }

    /// Waits until this node sees `links` links in the mesh, each listed
    /// by both its ends.
    pub async fn linked(&self, links: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        while self.server.mesh().topology().links.len() < links {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw {links} links: {:?}",
                self.server.mesh().topology()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A line-protocol client, logged in as a newly registered NAME.
    pub async fn line_user(&self, name: &str) -> LineClient {
        let mut c = LineClient::connect(self.server.talk_addr())
            .await
            .expect("connect");
        let reply = c
            .request(&format!("/register {name} {PASSWORD}"))
            .await
            .unwrap();
        assert!(reply.is_ok(), "{reply:?}");
        self.registered(name).await;
        let reply = c
            .request(&format!("/login {name} {PASSWORD}"))
            .await
            .unwrap();
        assert!(reply.is_ok(), "{reply:?}");
        c
    }

    /// Grants the harness's operator its rights once it is registered.
    async fn registered(&self, name: &str) {
        if name.eq_ignore_ascii_case(OPERATOR) {
            self.server
                .core()
                .grant_operator(name)
                .await
                .expect("grant operator");
        }
    }

    /// A binary-protocol client, logged in as a newly registered NAME.
    pub async fn wire_user(&self, name: &str) -> WireClient {
        let c = WireClient::connect(self.server.wire_addr())
            .await
            .expect("connect");
        c.register(name, PASSWORD).await.expect("register");
        self.registered(name).await;
        c.login(name, PASSWORD).await.expect("login");
        c
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await.expect("connect")
    }

    /// Registers NAME and returns a logged-in client for it.
    pub async fn user(&self, name: &str) -> Client {
        let client = self.client().await;
        client.register(name, PASSWORD).await.expect("register");
        self.registered(name).await;
        client.login(name, PASSWORD).await.expect("login").0
    }

    /// Another session (a second login) of an existing account.
    pub async fn session(&self, name: &str) -> Client {
        self.client()
            .await
            .login(name, PASSWORD)
            .await
            .expect("login")
            .0
    }
}

/// The next message event on a stream, within a few seconds.
pub async fn next_message(stream: &mut Streaming<proto::Event>) -> proto::Message {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a delivery within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(proto::event::Kind::Message(m)) = event.kind {
            return m;
        }
    }
}

/// Asserts nothing arrives on the stream for a short while.
pub async fn assert_quiet(stream: &mut Streaming<proto::Event>) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("expected no delivery, got {item:?}");
    }
}

pub fn room_of(m: &proto::Message) -> Option<&str> {
    match &m.to {
        Some(proto::message::To::Room(r)) => Some(r),
        _ => None,
    }
}

/// The server binary as a child process, for tests where a crash or a signal
/// is the point.
pub struct ChildServer {
    pub child: Child,
    pub url: String,
    pub talk: std::net::SocketAddr,
    /// Its mesh listener, when it has one.
    pub mesh: Option<std::net::SocketAddr>,
    /// What it has logged since it started serving.
    pub log: Log,
}

impl ChildServer {
    pub fn start(data_dir: &Path) -> ChildServer {
        Self::start_with(data_dir, &[])
    }

    /// Starts the server with `extra` on its command line.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> ChildServer {
        Self::start_limited(data_dir, extra, None)
    }

    /// Starts the server with `extra` on its command line and, with
    /// `files`, that many open files allowed.
    pub fn start_limited(data_dir: &Path, extra: &[&str], files: Option<u64>) -> ChildServer {
        let extra: Vec<std::ffi::OsString> = extra.iter().map(Into::into).collect();
        let (child, serving, log) = spawn_server_with(data_dir, &extra, files);
        let addr = log_field(&serving, "grpc").expect("the gRPC address");
        let talk = log_field(&serving, "talk")
            .and_then(|a| a.parse().ok())
            .expect("the line protocol's address");
        ChildServer {
            child,
            url: format!("http://{addr}"),
            talk,
            mesh: log_field(&serving, "mesh").and_then(|a| a.parse().ok()),
            log,
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The server's resident memory, in bytes.
    pub fn resident(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn data_dir() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data");
    (dir, path)
}

/// Registers NAME in the database under `data_dir` (unless it is there
/// already) and grants it operator rights, as `meshtalk operator NAME` would
/// for an account made earlier: rights belong to accounts that exist.
/// The command line of mesh node `name` listening on `mesh_addr`, with
/// `op-NAME` made its operator in `data_dir` first.
pub fn mesh_node_args(
    name: &str,
    data_dir: &Path,
    secret: &Path,
    mesh_addr: &str,
) -> Vec<std::ffi::OsString> {
    make_operator(data_dir, &format!("op-{name}"));
    vec![
        "--mesh-addr".into(),
        mesh_addr.into(),
        "--node-name".into(),
        name.into(),
        "--operator".into(),
        format!("op-{name}").into(),
        "--mesh-secret-file".into(),
        secret.into(),
    ]
}

pub fn make_operator(data_dir: &Path, name: &str) {
    use meshtalk::core::{Core, CoreConfig, CoreError, Limits};
    use meshtalk::store::{PostgresStore, SqliteStore, Store};
    let (data_dir, name) = (data_dir.to_owned(), name.to_owned());
    // A thread of its own: callers may be inside a runtime already.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let store: std::sync::Arc<dyn Store> = if on_postgres() {
                let url = postgres::url_for(&data_dir);
                std::sync::Arc::new(PostgresStore::open(&url).await.expect("store"))
            } else {
                std::sync::Arc::new(
                    SqliteStore::open(&data_dir.join("meshtalk.db")).expect("store"),
                )
            };
            let config = CoreConfig {
                node: "setup".into(),
                operators: vec![],
                limits: Limits::default(),
            };
            let core = Core::open(store, config).await.expect("core");
            match core.register(&name, PASSWORD, None).await {
                Ok(_) | Err(CoreError::NameTaken(_)) => {}
                Err(e) => panic!("register {name}: {e}"),
            }
            core.grant_operator(&name).await.expect("grant operator");
            core.close_store().await;
        });
    })
    .join()
    .expect("operator set up");
}

/// One node of a test mesh: the server binary as a child process with its
/// mesh listener on a free loopback port, and `op-NAME` as its operator.
pub struct MeshNode {
    pub name: String,
    pub talk: std::net::SocketAddr,
    pub mesh: std::net::SocketAddr,
    pub data_dir: PathBuf,
    child: Child,
}

impl MeshNode {
    /// Starts node `name`; `extra` goes on its command line.
    pub fn start(
        name: &str,
        data_dir: &Path,
        secret: &Path,
        mesh_addr: &str,
        extra: &[String],
    ) -> MeshNode {
        let mut args = mesh_node_args(name, data_dir, secret, mesh_addr);
        args.extend(extra.iter().map(Into::into));
        let (child, serving) = spawn_server(data_dir, &args);
        let addr = |key| {
            log_field(&serving, key)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("node {name} logged no {key} address: {serving}"))
        };
        MeshNode {
            name: name.to_owned(),
            talk: addr("talk"),
            mesh: addr("mesh"),
            data_dir: data_dir.to_owned(),
            child,
        }
    }

    /// A line client logged in as NAME, registering it first if `register`.
    pub async fn login(&self, name: &str, register: bool) -> LineClient {
        let mut c = LineClient::connect(self.talk).await.expect("connect");
        if register {
            let reply = c
                .request(&format!("/register {name} {PASSWORD}"))
                .await
                .unwrap();
            assert!(reply.is_ok(), "register {name} on {}: {reply:?}", self.name);
        }
        let reply = c
            .request(&format!("/login {name} {PASSWORD}"))
            .await
            .unwrap();
        assert!(reply.is_ok(), "login {name} on {}: {reply:?}", self.name);
        c
    }

    /// This node's operator, registered on first use.
    pub async fn operator(&self) -> LineClient {
        let name = format!("op-{}", self.name);
        let mut c = LineClient::connect(self.talk).await.expect("connect");
        let _ = c
            .request(&format!("/register {name} {PASSWORD}"))
            .await
            .unwrap();
        let reply = c
            .request(&format!("/login {name} {PASSWORD}"))
            .await
            .unwrap();
        assert!(reply.is_ok(), "{reply:?}");
        c
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts the server binary on free loopback ports with `extra` flags; waits
/// for the line saying it is serving and returns it.
/// What a child server logs after it starts serving.
pub type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

fn spawn_server(data_dir: &Path, extra: &[std::ffi::OsString]) -> (Child, String) {
    let (child, serving, _) = spawn_server_with(data_dir, extra, None);
    (child, serving)
}

/// Starts the server binary; with `files`, its open-file limit (soft and
/// hard) is set to that many first.
pub fn spawn_server_with(
    data_dir: &Path,
    extra: &[std::ffi::OsString],
    files: Option<u64>,
) -> (Child, String, Log) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshtalk"));
    if let Some(files) = files {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches only this
        // child's limits, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: files,
                    rlim_max: files,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut store = Vec::new();
    if on_postgres() && !extra.iter().any(|a| a == "--store") {
        store = vec!["--store".to_owned(), postgres::url_for(data_dir)];
    }
    command
        .args(["serve", "--log-format", "json"])
        .args(["--grpc-addr", "127.0.0.1:0"])
        .args(["--talk-addr", "127.0.0.1:0"])
        .args(["--wire-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .args(store);
    let mut child = spawn_logging(&mut command);
    let (serving, lines) = serving_line(&mut child, "grpc");
    // Keep reading the log so the child never blocks on a full pipe.
    let log = Log::default();
    let keep = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(mut log) = keep.lock() {
                log.push(line);
            }
        }
    });
    (child, serving, log)
}

/// Starts a `meshtalk serve` command with its log (info and above) on a
/// pipe for [`serving_line`]. Tests send and register as fast as they can:
/// the per-client limits are off unless the command's own flags set them.
pub fn spawn_logging(command: &mut Command) -> Child {
    command
        .env("MESHTALK_SEND_RATE", "0")
        .env("MESHTALK_REGISTRATIONS_PER_IP", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshtalk")
}

/// A child server's log (JSON lines on stderr) read up to the line saying
/// where it serves, the one naming `door`'s address; returns that line and
/// the rest of the log, which the caller must go on reading so the child
/// never blocks on a full pipe.
pub fn serving_line(
    child: &mut Child,
    door: &str,
) -> (String, std::io::Lines<BufReader<std::process::ChildStderr>>) {
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("the server stopped before serving; its log: {seen:#?}");
        };
        if log_field(&line, door).is_some() {
            return (line, lines);
        }
        seen.push(line);
    }
}

/// The value of `"key":"value"` in a JSON log line.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(&format!("\"{key}\":\""))
        .nth(1)?
        .split('"')
        .next()
}

/// What the chat client shows for one line typed.
pub async fn shown(session: &mut ChatSession, line: &str) -> Vec<String> {
    match session.handle(line).await {
        Outcome::Show(lines) => lines,
        Outcome::Quit => panic!("{line:?} quit"),
    }
}
