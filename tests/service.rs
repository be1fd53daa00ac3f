//! What a stock gRPC tool sees: health checking and server reflection (v1
//! and v1alpha), through the standard services' own clients.

mod common;

use common::TestServer;
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

const MESHTALK: [&str; 3] = [
    "meshtalk.v1.Accounts",
    "meshtalk.v1.Chat",
    "meshtalk.v1.Admin",
];

#[tokio::test]
async fn health_is_serving_for_the_server_and_each_service() {
    let t = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(t.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in std::iter::once("").chain(MESHTALK) {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    let t = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(t.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let expected: Vec<&str> = MESHTALK
        .into_iter()
        .chain(["grpc.health.v1.Health"])
        .collect();

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in &expected {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }

    // A tool describing a service gets its file descriptor.
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "meshtalk.v1.Chat".into(),
            ),
        ),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    assert!(matches!(
        reply.message_response,
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f))
            if !f.file_descriptor_proto.is_empty()
    ));

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in &expected {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }
}
