//! A real PostgreSQL for the tests: `initdb` into a temp dir and `postgres`
//! on a free loopback port, started once per test binary, with a database
//! of its own for each data dir a test uses (so a server restarted on the
//! same data dir finds its data again).
//!
//! initdb refuses to run as root, so as root the cluster runs as the
//! `postgres` user. The postmaster is told to quit when the thread that
//! started it ends, and that thread lives as long as the test binary.

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const SUPERUSER: &str = "meshtalk";

pub struct Cluster {
    port: u16,
    /// Databases made so far.
    made: Mutex<HashSet<String>>,
}

/// The URL of the database for `data_dir`, made on first use.
pub fn url_for(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    cluster().database(&format!("t_{:016x}", hasher.finish()))
}

/// A new, empty database's URL.
pub fn fresh_database() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    cluster().database(&format!("fresh_{}_{n}", std::process::id()))
}

pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

impl Cluster {
    fn start() -> Cluster {
        remove_stale_clusters();
        let bin = bindir();
        let owner = unprivileged_owner();
        let root = std::env::temp_dir().join(format!("meshtalk-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("cluster dir");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown cluster dir");
        }
        let data = root.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_owner(&mut initdb, owner);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let (started, spawned) = std::sync::mpsc::channel();
        let postgres = bin.join("postgres");
        // The postmaster's parent is this thread, which never ends: the
        // postmaster quits with the test binary, not with one test.
        std::thread::spawn(move || {
            let mut command = Command::new(postgres);
            command
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&root)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=300",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            as_owner(&mut command, owner);
            // SAFETY: prctl only sets this child's parent-death signal,
            // between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
            let mut child = command.spawn().expect("start postgres");
            let mut stderr = child.stderr.take().expect("stderr");
            let _ = started.send(());
            // Keep reading its log so it never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink);
            let _ = child.wait();
            loop {
                std::thread::park();
            }
        });
        spawned.recv().expect("postgres spawned");
        let cluster = Cluster {
            port,
            made: Mutex::new(HashSet::new()),
        };
        cluster.wait_ready();
        cluster
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.url("postgres");
        loop {
            let url = url.clone();
            match block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await.map(drop)
            }) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("postgres never came up: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The URL of database `name`, made if it is not there yet.
    fn database(&self, name: &str) -> String {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if made.insert(name.to_owned()) {
            let (url, sql) = (self.url("postgres"), format!("CREATE DATABASE {name}"));
            block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await
            })
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        }
        self.url(name)
    }
}

/// Runs a future to its end on a runtime of its own, on a thread of its
/// own: callers may be inside a runtime already.
fn block_on<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    })
    .join()
    .expect("database set-up")
}

/// Where the PostgreSQL server binaries are: `pg_config --bindir`, else
/// beside `initdb` on PATH, else Debian's newest under /usr/lib/postgresql.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return dir;
        }
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
    {
        return dir;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| Some(d.ok()?.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|d| d.join("initdb").exists())
        .expect("PostgreSQL's initdb and postgres: install Debian's postgresql package")
}

/// As root, the `postgres` user's uid and gid; otherwise none is needed.
fn unprivileged_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("name");
    // SAFETY: getpwnam returns a pointer into static storage or null; it is
    // read at once, before any other call could reuse that storage.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root, and there is no postgres user to run the test cluster as"
    );
    // SAFETY: checked non-null above.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).current_dir("/");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Clusters left by test binaries that are gone.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("meshtalk-pg-"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
