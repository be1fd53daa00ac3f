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

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Settings;
use crate::core::{Core, CoreConfig, CoreError};
use crate::gateway::grpc::GrpcGateway;
use crate::gateway::listener::{
    Deadlines, Door, Gate, GrpcConnection, Shutdown, accept_loop, say_and_close,
};
use crate::gateway::{talk, wire};
use crate::mesh::{Mesh, MeshConfig, MeshError, QUERY_TIMEOUT};
use crate::proto::{
    accounts_server::AccountsServer, admin_server::AdminServer, chat_server::ChatServer,
};
use crate::store::{DataDirLock, SqliteStore, Store, StoreError};

/// Largest gRPC request the server decodes.
pub const MAX_GRPC_REQUEST: usize = 64 * 1024;
/// Concurrent calls one HTTP/2 connection may have open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
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
    health: HealthReporter,
    stop_grpc: Option<oneshot::Sender<()>>,
    grpc: JoinHandle<()>,
    /// Tells line and binary connections to say goodbye.
    stop_sockets: watch::Sender<bool>,
    /// Ends (yields `None`) once every socket connection task is gone.
    sockets_drained: mpsc::Receiver<()>,
    /// Held until the server is dropped: one server per data dir.
    _lock: DataDirLock,
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), ServerError> {
    let bind_error = |source| ServerError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

const SERVICES: [&str; 3] = [
    "meshtalk.v1.Accounts",
    "meshtalk.v1.Chat",
    "meshtalk.v1.Admin",
];

impl Server {
    pub async fn start(settings: Settings) -> Result<Server, ServerError> {
        let lock = DataDirLock::acquire(&settings.sqlite_path)?;
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&settings.sqlite_path)?
                .keep_free(&settings.sqlite_path, settings.min_free_disk),
        );
        let core = Core::open(
            store,
            CoreConfig {
                node: settings.node.clone(),
                operators: settings.operators.clone(),
                limits: settings.limits.clone(),
            },
        )
        .await?;
        let mesh = Mesh::start(
            core.clone(),
            MeshConfig {
                node: settings.node.clone(),
                instance: crate::mesh::next_instance(
                    &settings.sqlite_path.with_file_name("mesh-instance"),
                ),
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
        let (listener, grpc_addr) = bind(&settings.grpc_addr).await?;
        let (talk_listener, talk_addr) = bind(&settings.talk_addr).await?;
        let (wire_listener, wire_addr) = bind(&settings.wire_addr).await?;
        if settings.tls.is_none() && !settings.allow_plaintext {
            for (door, addr) in [
                ("gRPC", grpc_addr),
                ("line", talk_addr),
                ("binary", wire_addr),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(ServerError::Plaintext { door, addr });
                }
            }
        }
        let gate = Gate::new(&settings.bounds);
        let door = |alpn: &[&[u8]]| -> Result<Door, ServerError> {
            let tls = match &settings.tls {
                Some(files) => Some(TlsAcceptor::from(crate::tls::server_config(
                    &files.cert,
                    &files.key,
                    alpn,
                )?)),
                None => None,
            };
            Ok(Door {
                gate: gate.clone(),
                tls,
                handshake_timeout: settings.bounds.read_timeout,
            })
        };
        let (grpc_door, talk_door, wire_door) =
            (door(&[crate::tls::ALPN_H2])?, door(&[])?, door(&[])?);
        let deadlines = Deadlines::new(&settings.bounds);
        let read_timeout = settings.bounds.read_timeout;

        let (health, health_service) = tonic_health::server::health_reporter();
        for service in SERVICES {
            health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let gateway = GrpcGateway::new(core.clone());

        let (stop_grpc, stopped) = oneshot::channel::<()>();
        let (stop_sockets, shutdown) = Shutdown::new();
        let (draining, sockets_drained) = mpsc::channel(1);
        // gRPC connections come through the same gate as the others; tonic
        // serves what the accept loop admitted.
        let (admitted, incoming) = mpsc::channel::<GrpcConnection>(64);
        tokio::spawn(accept_loop(
            listener,
            grpc_door,
            shutdown.clone(),
            draining.clone(),
            move |accepted, _| {
                let admitted = admitted.clone();
                async move {
                    // Refused only once tonic has stopped: the connection
                    // then closes as it is dropped.
                    let _ = admitted
                        .send(GrpcConnection::new(accepted, read_timeout))
                        .await;
                }
            },
            // An HTTP/2 client cannot read a sentence: it is only closed.
            |stream, _| say_and_close(stream, b""),
        ));
        let incoming = ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>);
        let router = tonic::transport::Server::builder()
            // Without HTTP/2 pings a half-open client would hold its streams for hours.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                AccountsServer::new(gateway.clone()).max_decoding_message_size(MAX_GRPC_REQUEST),
            )
            .add_service(
                ChatServer::new(gateway.clone()).max_decoding_message_size(MAX_GRPC_REQUEST),
            )
            .add_service(AdminServer::new(gateway).max_decoding_message_size(MAX_GRPC_REQUEST));
        let grpc = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
                tracing::error!(error = %e, "the gRPC server failed");
            }
        });
        let talk_core = core.clone();
        tokio::spawn(accept_loop(
            talk_listener,
            talk_door,
            shutdown.clone(),
            draining.clone(),
            move |accepted, shutdown| {
                talk::serve_connection(talk_core.clone(), accepted, deadlines, shutdown)
            },
            talk::refuse,
        ));
        let wire_core = core.clone();
        tokio::spawn(accept_loop(
            wire_listener,
            wire_door,
            shutdown,
            draining,
            move |accepted, shutdown| {
                wire::serve_connection(wire_core.clone(), accepted, deadlines, shutdown)
            },
            wire::refuse,
        ));

        tracing::info!(
            node = %settings.node,
            grpc = %grpc_addr,
            talk = %talk_addr,
            wire = %wire_addr,
            mesh = %mesh_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            store = %settings.sqlite_path.display(),
            tls = settings.tls.is_some(),
            "meshtalk is serving"
        );
        Ok(Server {
            core,
            mesh,
            mesh_addr,
            grpc_addr,
            talk_addr,
            wire_addr,
            health,
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
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for service in SERVICES {
            self.health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
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
        self.core.close_store().await;
        tracing::info!("stopped");
    }
}

/// Grants NAME operator rights in the database at `db_path`, whose server
/// must be stopped (its lock says so otherwise); returns the name as
/// registered. A running server reads grants when it starts.
pub async fn grant_operator_offline(db_path: &Path, name: &str) -> Result<String, CoreError> {
    let key = crate::core::names::account_key(name)?;
    let _lock = DataDirLock::acquire(db_path)?;
    let store = SqliteStore::open(db_path)?;
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
