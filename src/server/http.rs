//! The HTTP door: what operators' tools and browsers ask over HTTP.
//! `/metrics` in the Prometheus text format, `/healthz` (the process
//! answers) and `/readyz` (it takes work: not shutting down, and its store
//! answers); the web client at `/` (`web.rs`) and the gRPC services it
//! calls, in gRPC-Web (`grpc_web.rs`).
//!
//! Served by tonic from an axum router, the HTTP stack the gRPC door
//! already carries, with HTTP/1.1 accepted: scrapers, load balancers'
//! health checks and browsers on plaintext speak it (a browser speaks
//! HTTP/2 only over TLS, where ALPN offers both).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::grpc::{MAX_STREAMS_PER_CONNECTION, Services, with_keepalive};
use super::{grpc_web, web};
use crate::core::Core;
use crate::gateway::listener::GrpcConnection;
use crate::mesh::Mesh;

/// What the handlers read.
#[derive(Clone)]
struct HttpState {
    core: Core,
    mesh: Mesh,
}

fn router(core: Core, mesh: Mesh, services: Services) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { core, mesh })
        .merge(web::routes())
        .merge(grpc_web::routes(services))
}

async fn metrics(State(door): State<HttpState>) -> impl IntoResponse {
    let state = crate::metrics::State {
        sessions: door.core.session_count() as u64,
        acks_pending: door.core.acks_pending() as u64,
        mesh_links: door.mesh.peers().len() as u64,
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::encode(state),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(door): State<HttpState>) -> (StatusCode, String) {
    match door.core.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// Serves the connections the HTTP door admits until `stopped` fires.
pub(super) fn serve(
    core: Core,
    mesh: Mesh,
    services: Services,
    admitted: mpsc::Receiver<GrpcConnection>,
    stopped: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    let incoming = ReceiverStream::new(admitted).map(Ok::<_, std::io::Error>);
    let routes = tonic::service::Routes::from(router(core, mesh, services));
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        // A browser's `Subscribe` is a long-lived stream like any gRPC
        // client's: over HTTP/2 (TLS) the same pings and stream cap apply.
        let served = with_keepalive(tonic::transport::Server::builder())
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stopped)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP server failed");
        }
    })
}
