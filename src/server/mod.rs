//! Wires the store, the core and the gateways together, and takes them down
//! in order.
//!
//! [`Server::start`] binds every listener before it returns, so a caller (a
//! test on port 0, or `main`) knows the real addresses at once.
//!
//! Shutdown: health goes NOT_SERVING, new work is refused, every live stream
//! and connection ends with a goodbye (gRPC UNAVAILABLE, `-ERR unavailable`,
//! a BYE frame), listeners close, and the store commits what is already
//! queued before the process exits.
//!
//! Split by concern, so this file reads as the order things start and stop
//! in: `doors.rs` binds the three client doors and gives each the gate and
//! TLS; `grpc.rs` is the tonic side of the gRPC door (its services, health,
//! reflection, keepalive); `http.rs` the HTTP door, with the web client's
//! files (`web.rs`) and those same services in gRPC-Web (`grpc_web.rs`);
//! here are the store, the core, the mesh and the
//! shutdown that ties them together.

mod doors;
mod grpc;
mod grpc_web;
mod http;
mod retention;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;

use crate::config::{Settings, StoreLocation};
use crate::core::{Core, CoreConfig, CoreError};
use crate::gateway::listener::Shutdown;
use crate::mesh::{Mesh, MeshConfig, MeshError, QUERY_TIMEOUT};
use crate::store::{DataDirLock, PostgresStore, SqliteStore, Store, StoreError};

pub use grpc::{MAX_GRPC_REQUEST, MAX_STREAMS_PER_CONNECTION};

/// How long shutdown waits for open calls before it cuts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the core: {0}")]
    Core(#[from] CoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the mesh: {0}")]
    Mesh(#[from] MeshError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "the {door} door would listen on {addr} without TLS, where anyone on the network \
         could read passwords and messages: give --tls-cert and --tls-key (try \
         `meshtalk cert`), bind it to 127.0.0.1, or pass --allow-plaintext if a \
         TLS-terminating proxy stands in front"
    )]
    Plaintext {
        door: &'static str,
        addr: SocketAddr,
    },
}

/// A running server.
pub struct Server {
    core: Core,
    mesh: Mesh,
    mesh_addr: Option<SocketAddr>,
    grpc_addr: SocketAddr,
    talk_addr: SocketAddr,
    wire_addr: SocketAddr,
    http_addr: SocketAddr,
    health: HealthReporter,
    stop_grpc: Option<oneshot::Sender<()>>,
    grpc: JoinHandle<()>,
    /// Stops the HTTP door, last, so it reports readiness to the end.
    stop_http: Option<oneshot::Sender<()>>,
    http: JoinHandle<()>,
    /// Tells line and binary connections to say goodbye.
    stop_sockets: watch::Sender<bool>,
    /// Ends (yields `None`) once every socket connection task is gone.
    sockets_drained: mpsc::Receiver<()>,
    /// Held until the server is dropped: one server per data dir (and so
    /// per SQLite file).
    _lock: DataDirLock,
}

impl Server {
    pub async fn start(settings: Settings) -> Result<Server, ServerError> {
        let (lock, store) = open_store(&settings).await?;
        let core = open_core(store.clone(), &settings).await?;
        let (mesh, mesh_addr) = start_mesh(&core, &settings).await?;
        let listeners = doors::Listeners::bind(&settings).await?;
        let doors = doors::Doors::new(&settings)?;
        let services = grpc::Services::new(&core);
        let (health, router) = grpc::router(services.clone()).await?;

        // What stops the serving tasks, and what tells shutdown they are done.
        let (stop_grpc, stopped) = oneshot::channel::<()>();
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let (stop_sockets, shutdown) = Shutdown::new();
        retention::start(
            store,
            settings.history_retention,
            settings.room_history_max,
            stop_sockets.subscribe(),
        );
        let (draining, sockets_drained) = mpsc::channel(1);
        let addrs = listeners.addrs;
        let admitted = doors::serve(
            listeners,
            doors,
            &core,
            &settings.bounds,
            shutdown,
            draining,
        );
        let grpc = grpc::serve(router, admitted.grpc, stopped);
        let http = http::serve(
            core.clone(),
            mesh.clone(),
            services,
            admitted.http,
            http_stopped,
        );

        log_serving(&settings, addrs, mesh_addr);
        Ok(Server {
            core,
            mesh,
            mesh_addr,
            grpc_addr: addrs.grpc,
            talk_addr: addrs.talk,
            wire_addr: addrs.wire,
            http_addr: addrs.http,
            health,
            stop_http: Some(stop_http),
            http,
            stop_grpc: Some(stop_grpc),
            grpc,
            stop_sockets,
            sockets_drained,
            _lock: lock,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn talk_addr(&self) -> SocketAddr {
        self.talk_addr
    }

    pub fn wire_addr(&self) -> SocketAddr {
        self.wire_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the mesh listener given at start is bound, if any.
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.mesh_addr
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Takes the server down in order; returns once the store is closed.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        grpc::stop_serving(&self.health).await;
        // Let health watchers see NOT_SERVING before the listener goes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.core.begin_shutdown();
        self.mesh.shutdown();
        let _ = self.stop_sockets.send(true);
        if let Some(stop) = self.stop_grpc.take() {
            let _ = stop.send(());
        }
        let drained = async {
            let _ = (&mut self.grpc).await;
            let _ = self.sockets_drained.recv().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
            tracing::warn!("open calls outlived the grace period; cutting them");
            self.grpc.abort();
        }
        // Up until here, so /readyz says "shutting down" while others drain.
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.http)
            .await
            .is_err()
        {
            self.http.abort();
        }
        self.core.close_store().await;
        tracing::info!("stopped");
    }
}

/// Takes the data dir's lock first, so a second server on the same data
/// dir stops before it touches the database; then opens the store. SQLite
/// refuses new messages once the disk is nearly full; PostgreSQL's disk is
/// the database server's.
async fn open_store(settings: &Settings) -> Result<(DataDirLock, Arc<dyn Store>), ServerError> {
    let lock = DataDirLock::acquire(&settings.data_dir)?;
    Ok((
        lock,
        connect_store(&settings.store, settings.min_free_disk).await?,
    ))
}

/// Opens the store at `location`.
async fn connect_store(
    location: &StoreLocation,
    min_free_disk: u64,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => {
            Arc::new(SqliteStore::open(path)?.keep_free(path, min_free_disk))
        }
        StoreLocation::Postgres(url) => Arc::new(PostgresStore::open(url).await?),
    })
}

async fn open_core(store: Arc<dyn Store>, settings: &Settings) -> Result<Core, ServerError> {
    let config = CoreConfig {
        node: settings.node.clone(),
        operators: settings.operators.clone(),
        limits: settings.limits.clone(),
    };
    Ok(Core::open(store, config).await?)
}

/// How often a node on a shared store checks its cached sessions against
/// the store, for logouts and deletions whose word from a sibling was lost.
const SESSION_AUDIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts the mesh and its listener, if one is given, and links to every
/// peer given, in the background.
async fn start_mesh(
    core: &Core,
    settings: &Settings,
) -> Result<(Mesh, Option<SocketAddr>), ServerError> {
    core.start_session_audit(SESSION_AUDIT);
    let mesh = Mesh::start(
        core.clone(),
        MeshConfig {
            node: settings.node.clone(),
            instance: crate::mesh::next_instance(&settings.data_dir.join("mesh-instance")),
            secret: settings.mesh_secret.clone(),
            query_timeout: QUERY_TIMEOUT,
        },
    );
    let mesh_addr = match &settings.mesh_addr {
        Some(addr) => Some(mesh.listen(addr).await?),
        None => None,
    };
    if !settings.peers.is_empty() && settings.mesh_secret.is_none() {
        return Err(MeshError::NoSecret.into());
    }
    for peer in &settings.peers {
        let (mesh, peer) = (mesh.clone(), peer.clone());
        tokio::spawn(async move {
            match mesh.connect(&peer, true).await {
                Ok(node) => tracing::info!(peer = %peer, "linked to {node} at {peer}"),
                Err(e) => tracing::warn!("{e}; retrying in the background"),
            }
        });
    }
    Ok((mesh, mesh_addr))
}

fn log_serving(settings: &Settings, addrs: doors::Addrs, mesh_addr: Option<SocketAddr>) {
    tracing::info!(
        node = %settings.node,
        grpc = %addrs.grpc,
        talk = %addrs.talk,
        wire = %addrs.wire,
        http = %addrs.http,
        mesh = %mesh_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        store = %settings.store.shown(),
        tls = settings.tls.is_some(),
        "meshtalk is serving"
    );
}

/// Grants NAME operator rights in the store at `location`; returns the
/// name as registered. A running server reads grants when it starts, so a
/// SQLite store's server must be stopped (its data dir lock, in
/// `data_dir`, says so otherwise); the nodes on a PostgreSQL store see the
/// grant once they restart.
pub async fn grant_operator_offline(
    location: &StoreLocation,
    data_dir: &std::path::Path,
    name: &str,
) -> Result<String, CoreError> {
    let key = crate::core::names::account_key(name)?;
    let _lock = match location {
        StoreLocation::Sqlite(_) => Some(DataDirLock::acquire(data_dir)?),
        StoreLocation::Postgres(_) => None,
    };
    let store = connect_store(location, 0).await?;
    let granted = async {
        let account = store
            .account_by_key(&key)
            .await?
            .ok_or_else(|| CoreError::NoSuchUser(name.to_owned()))?;
        store.grant_operator(account.id).await?;
        Ok(account.name)
    }
    .await;
    store.close().await;
    granted
}
