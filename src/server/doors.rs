//! The client doors (gRPC, line, binary) and the HTTP door: binding their listeners,
//! refusing a public one without TLS, giving each the shared gate and its
//! TLS acceptor, and the accept loops that serve them.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::ServerError;
use crate::config::{ConnectionBounds, Settings};
use crate::core::Core;
use crate::gateway::listener::{
    Accepted, Deadlines, Door, Draining, Gate, GrpcConnection, Shutdown, accept_loop, say_and_close,
};
use crate::gateway::{talk, wire};
use crate::metrics::Door as Kind;

/// Where each door listens, once bound.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addrs {
    pub grpc: SocketAddr,
    pub talk: SocketAddr,
    pub wire: SocketAddr,
    pub http: SocketAddr,
}

/// The doors' listeners, bound and not yet accepting.
pub(super) struct Listeners {
    grpc: TcpListener,
    talk: TcpListener,
    wire: TcpListener,
    http: TcpListener,
    pub addrs: Addrs,
}

impl Listeners {
    /// Binds every door, then refuses a door on a non-loopback address
    /// without TLS unless plaintext is allowed: only the bound address says
    /// where a host name or port 0 really landed.
    pub async fn bind(settings: &Settings) -> Result<Listeners, ServerError> {
        let (grpc, grpc_addr) = bind(&settings.grpc_addr).await?;
        let (talk, talk_addr) = bind(&settings.talk_addr).await?;
        let (wire, wire_addr) = bind(&settings.wire_addr).await?;
        let (http, http_addr) = bind(&settings.http_addr).await?;
        if settings.tls.is_none() && !settings.allow_plaintext {
            for (door, addr) in [
                ("gRPC", grpc_addr),
                ("line", talk_addr),
                ("binary", wire_addr),
                ("HTTP", http_addr),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(ServerError::Plaintext { door, addr });
                }
            }
        }
        Ok(Listeners {
            grpc,
            talk,
            wire,
            http,
            addrs: Addrs {
                grpc: grpc_addr,
                talk: talk_addr,
                wire: wire_addr,
                http: http_addr,
            },
        })
    }
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

/// Every door's way in: one gate for all, and a TLS acceptor each when the
/// server speaks TLS (gRPC's offers HTTP/2 by ALPN).
pub(super) struct Doors {
    grpc: Door,
    talk: Door,
    wire: Door,
    http: Door,
}

impl Doors {
    pub fn new(settings: &Settings) -> Result<Doors, ServerError> {
        let gate = Gate::new(&settings.bounds);
        let door = |kind, alpn: &[&[u8]]| -> Result<Door, ServerError> {
            let tls = match &settings.tls {
                Some(files) => Some(TlsAcceptor::from(crate::tls::server_config(
                    &files.cert,
                    &files.key,
                    alpn,
                )?)),
                None => None,
            };
            Ok(Door {
                kind,
                gate: gate.clone(),
                tls,
                handshake_timeout: settings.bounds.read_timeout,
            })
        };
        Ok(Doors {
            grpc: door(Kind::Grpc, &[crate::tls::ALPN_H2])?,
            talk: door(Kind::Line, &[])?,
            wire: door(Kind::Binary, &[])?,
            http: door(Kind::Http, &[crate::tls::ALPN_H2, crate::tls::ALPN_HTTP1])?,
        })
    }
}

/// The connections admitted for tonic to serve: the gRPC door's and the
/// HTTP door's.
pub(super) struct Admitted {
    pub grpc: mpsc::Receiver<GrpcConnection>,
    pub http: mpsc::Receiver<GrpcConnection>,
}

/// Starts accepting on every door until `shutdown`: line and binary
/// connections are served here, each holding `draining` while it lives;
/// admitted gRPC and HTTP connections are returned for tonic to serve.
pub(super) fn serve(
    listeners: Listeners,
    doors: Doors,
    core: &Core,
    bounds: &ConnectionBounds,
    shutdown: Shutdown,
    draining: Draining,
) -> Admitted {
    let read_timeout = bounds.read_timeout;
    let admitted = Admitted {
        grpc: admit_to_tonic(
            listeners.grpc,
            doors.grpc,
            shutdown.clone(),
            draining.clone(),
            move |accepted| GrpcConnection::new(accepted, read_timeout),
        ),
        http: admit_to_tonic(
            listeners.http,
            doors.http,
            shutdown.clone(),
            draining.clone(),
            move |accepted| GrpcConnection::http(accepted, read_timeout),
        ),
    };
    let deadlines = Deadlines::new(bounds);
    let talk_core = core.clone();
    tokio::spawn(accept_loop(
        listeners.talk,
        doors.talk,
        shutdown.clone(),
        draining.clone(),
        move |accepted, shutdown| {
            talk::serve_connection(talk_core.clone(), accepted, deadlines, shutdown)
        },
        talk::refuse,
    ));
    let wire_core = core.clone();
    tokio::spawn(accept_loop(
        listeners.wire,
        doors.wire,
        shutdown,
        draining,
        move |accepted, shutdown| {
            wire::serve_connection(wire_core.clone(), accepted, deadlines, shutdown)
        },
        wire::refuse,
    ));
    admitted
}

/// The accept loop of a door tonic serves (gRPC, HTTP): its connections come
/// through the same gate as the others, and tonic serves what it admitted.
fn admit_to_tonic(
    listener: TcpListener,
    door: Door,
    shutdown: Shutdown,
    draining: Draining,
    wrap: impl Fn(Accepted) -> GrpcConnection + Send + Sync + Copy + 'static,
) -> mpsc::Receiver<GrpcConnection> {
    let (admitted, incoming) = mpsc::channel::<GrpcConnection>(64);
    tokio::spawn(accept_loop(
        listener,
        door,
        shutdown,
        draining,
        move |accepted, _| {
            let admitted = admitted.clone();
            async move {
                // Refused only once tonic has stopped: the connection
                // then closes as it is dropped.
                let _ = admitted.send(wrap(accepted)).await;
            }
        },
        // An HTTP/2 client cannot read a sentence: it is only closed.
        |stream, _| say_and_close(stream, b""),
    ));
    incoming
}
