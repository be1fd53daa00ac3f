//! The three client doors (gRPC, line, binary): binding their listeners,
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
    Deadlines, Door, Draining, Gate, GrpcConnection, Shutdown, accept_loop, say_and_close,
};
use crate::gateway::{talk, wire};

/// Where each door listens, once bound.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addrs {
    pub grpc: SocketAddr,
    pub talk: SocketAddr,
    pub wire: SocketAddr,
}

/// The doors' listeners, bound and not yet accepting.
pub(super) struct Listeners {
    grpc: TcpListener,
    talk: TcpListener,
    wire: TcpListener,
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
        Ok(Listeners {
            grpc,
            talk,
            wire,
            addrs: Addrs {
                grpc: grpc_addr,
                talk: talk_addr,
                wire: wire_addr,
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
}

impl Doors {
    pub fn new(settings: &Settings) -> Result<Doors, ServerError> {
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
        Ok(Doors {
            grpc: door(&[crate::tls::ALPN_H2])?,
            talk: door(&[])?,
            wire: door(&[])?,
        })
    }
}

/// Starts accepting on every door until `shutdown`: line and binary
/// connections are served here, each holding `draining` while it lives;
/// admitted gRPC connections are returned for tonic to serve.
pub(super) fn serve(
    listeners: Listeners,
    doors: Doors,
    core: &Core,
    bounds: &ConnectionBounds,
    shutdown: Shutdown,
    draining: Draining,
) -> mpsc::Receiver<GrpcConnection> {
    let admitted = admit_grpc(
        listeners.grpc,
        doors.grpc,
        shutdown.clone(),
        draining.clone(),
        bounds,
    );
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

/// The gRPC door's accept loop: gRPC connections come through the same
/// gate as the others, and tonic serves what it admitted.
fn admit_grpc(
    listener: TcpListener,
    door: Door,
    shutdown: Shutdown,
    draining: Draining,
    bounds: &ConnectionBounds,
) -> mpsc::Receiver<GrpcConnection> {
    let read_timeout = bounds.read_timeout;
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
                let _ = admitted
                    .send(GrpcConnection::new(accepted, read_timeout))
                    .await;
            }
        },
        // An HTTP/2 client cannot read a sentence: it is only closed.
        |stream, _| say_and_close(stream, b""),
    ));
    incoming
}
