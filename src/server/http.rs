//! The HTTP door: what operators' tools ask over plain HTTP. `/metrics` in
//! the Prometheus text format, `/healthz` (the process answers) and
//! `/readyz` (it takes work: not shutting down, and its store answers).
//!
//! Served by tonic from an axum router, the HTTP stack the gRPC door
//! already carries, with HTTP/1.1 accepted: scrapers and load balancers'
//! health checks speak it.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::core::Core;
use crate::gateway::listener::GrpcConnection;
use crate::mesh::Mesh;

/// What the handlers read.
#[derive(Clone)]
struct HttpState {
    core: Core,
    mesh: Mesh,
}

fn router(core: Core, mesh: Mesh) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { core, mesh })
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
    admitted: mpsc::Receiver<GrpcConnection>,
    stopped: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    let incoming = ReceiverStream::new(admitted).map(Ok::<_, std::io::Error>);
    let routes = tonic::service::Routes::from(router(core, mesh));
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let served = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stopped)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP server failed");
        }
    })
}
