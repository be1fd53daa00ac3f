//! The gRPC door's server: the tonic router with the three `meshtalk.v1`
//! services, health and reflection, and the task serving the connections
//! the door's accept loop admitted.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::ServerError;
use crate::core::Core;
use crate::gateway::grpc::GrpcGateway;
use crate::gateway::listener::GrpcConnection;
use crate::proto::{
    accounts_server::AccountsServer, admin_server::AdminServer, chat_server::ChatServer,
};

/// Largest gRPC request the server decodes.
pub const MAX_GRPC_REQUEST: usize = 64 * 1024;
/// Concurrent calls one HTTP/2 connection may have open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

const SERVICES: [&str; 3] = [
    "meshtalk.v1.Accounts",
    "meshtalk.v1.Chat",
    "meshtalk.v1.Admin",
];

/// The three `meshtalk.v1` services over one gateway, each with the same
/// bound on requests: the gRPC door serves them, and the HTTP door serves
/// the very same ones to browsers through gRPC-Web, so both doors share one
/// authentication and one sending allowance per session.
#[derive(Clone)]
pub(super) struct Services {
    pub accounts: AccountsServer<GrpcGateway>,
    pub chat: ChatServer<GrpcGateway>,
    pub admin: AdminServer<GrpcGateway>,
}

impl Services {
    pub fn new(core: &Core) -> Services {
        let gateway = GrpcGateway::new(core.clone());
        Services {
            accounts: AccountsServer::new(gateway.clone())
                .max_decoding_message_size(MAX_GRPC_REQUEST),
            chat: ChatServer::new(gateway.clone()).max_decoding_message_size(MAX_GRPC_REQUEST),
            admin: AdminServer::new(gateway).max_decoding_message_size(MAX_GRPC_REQUEST),
        }
    }
}

/// The router of every gRPC service, and the reporter that sets their
/// health (each service SERVING from the start).
pub(super) async fn router(services: Services) -> Result<(HealthReporter, Router), ServerError> {
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
    let router = with_keepalive(tonic::transport::Server::builder())
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.accounts)
        .add_service(services.chat)
        .add_service(services.admin);
    Ok((health, router))
}

/// HTTP/2 pings on every connection: without them a half-open client
/// would hold its streams for hours.
pub(super) fn with_keepalive(server: tonic::transport::Server) -> tonic::transport::Server {
    server
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// Serves the connections the gRPC door admits until `stopped` fires (or
/// its sender is dropped).
pub(super) fn serve(
    router: Router,
    admitted: mpsc::Receiver<GrpcConnection>,
    stopped: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    let incoming = ReceiverStream::new(admitted).map(Ok::<_, std::io::Error>);
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
            tracing::error!(error = %e, "the gRPC server failed");
        }
    })
}

/// Turns health NOT_SERVING for the server (`""`) and every service.
pub(super) async fn stop_serving(health: &HealthReporter) {
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for service in SERVICES {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
}
