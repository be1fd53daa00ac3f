//! gRPC-Web on the HTTP door: the gRPC door's own services (`Services`:
//! the same gateway, authentication and bounds), each behind tonic-web's
//! translation, which browsers need because `fetch` cannot read HTTP/2
//! trailers. It carries unary and server-streaming calls: `Subscribe` and
//! the unary `Send` and `Ack` are what a browser uses to chat.
//!
//! CORS: the web client is served from the same origin and needs none. A
//! page elsewhere may call in too: every call but `Register` and `Login`
//! needs a bearer token the page must already hold (no cookies are read,
//! so a foreign page gains nothing a direct connection would not give),
//! and those two are throttled per address like on every door.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Method, header};
use tonic::server::NamedService;
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::grpc::Services;

/// How long a browser may reuse a CORS preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// `POST /meshtalk.v1.SERVICE/METHOD` for the three services, in gRPC-Web.
pub(super) fn routes(services: Services) -> Router {
    Router::new()
        .route_service(&path(&services.accounts), services.accounts)
        .route_service(&path(&services.chat), services.chat)
        .route_service(&path(&services.admin), services.admin)
        // On these routes only: a request for any other path must not be
        // taken for a malformed gRPC-Web call (tonic-web answers those 400).
        .route_layer(GrpcWebLayer::new())
        .route_layer(cors())
}

/// Every method of a service, as tonic routes them.
fn path<S: NamedService>(_: &S) -> String {
    format!("/{}/{{*method}}", S::NAME)
}

/// What a page on another origin may send and read: the gRPC-Web request
/// headers, the bearer token, and the status a call ends with.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(PREFLIGHT_MAX_AGE)
}
