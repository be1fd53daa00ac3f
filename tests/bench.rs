//! A short run of every `meshtalk bench` scenario over every protocol, so the
//! load generator cannot rot. Figures are not asserted: only completeness.

mod common;

use common::TestServer;
use meshtalk::bench::{Proto, Target, TargetArgs, conns, dm, fanout, mesh};

fn target_args(t: &TestServer) -> TargetArgs {
    TargetArgs {
        spawn: false,
        grpc: t.url.clone(),
        talk: t.server.talk_addr().to_string(),
        wire: t.server.wire_addr().to_string(),
        pid: Some(std::process::id()),
        tls: false,
        ca_cert: None,
        store: None,
        nodes: 1,
    }
}

const PROTOS: [Proto; 3] = [Proto::Line, Proto::Wire, Proto::Grpc];

#[tokio::test]
async fn fanout_delivers_everything_once_on_every_protocol() {
    let t = TestServer::start().await;
    let target = Target::open(&target_args(&t)).await.unwrap();
    for proto in PROTOS {
        let args = fanout::FanoutArgs {
            target: target_args(&t),
            proto,
            subscribers: 3,
            publishers: 2,
            messages: 50,
            bytes: 64,
            rate: None,
            pipeline: 4,
            idle_timeout: 5,
        };
        let report = fanout::run(&target, &args).await.unwrap();
        assert_eq!(report.expected, 300, "{proto:?}");
        assert_eq!(report.received, 300, "{proto:?}: {report:?}");
        assert_eq!((report.duplicates, report.missing), (0, 0), "{proto:?}");
        assert!(report.errors.is_empty(), "{proto:?}: {:?}", report.errors);
        assert!(report.latency.p50_us > 0 && report.delivered_per_sec > 0.0);
    }
    // Paced: the rate holds the publishers back.
    let args = fanout::FanoutArgs {
        target: target_args(&t),
        proto: Proto::Grpc,
        subscribers: 1,
        publishers: 1,
        messages: 20,
        bytes: 64,
        rate: Some(100.0),
        pipeline: 1,
        idle_timeout: 5,
    };
    let report = fanout::run(&target, &args).await.unwrap();
    assert_eq!(report.received, 20);
    assert!(report.sent_per_sec < 150.0, "{}", report.sent_per_sec);
}

#[tokio::test]
async fn dm_acks_and_delivers_everything_on_every_protocol() {
    let t = TestServer::start().await;
    let target = Target::open(&target_args(&t)).await.unwrap();
    for (proto, pipeline) in PROTOS.into_iter().flat_map(|p| [(p, 1), (p, 4)]) {
        let args = dm::DmArgs {
            target: target_args(&t),
            proto,
            clients: 3,
            messages: 20,
            bytes: 64,
            pipeline,
            idle_timeout: 5,
        };
        let report = dm::run(&target, &args).await.unwrap();
        assert_eq!(
            (report.acked, report.received),
            (60, 60),
            "{proto:?} x{pipeline}: {report:?}"
        );
        assert_eq!(
            (report.duplicates, report.missing),
            (0, 0),
            "{proto:?} x{pipeline}"
        );
        assert!(report.ack_latency.p99_us > 0);
    }
}

#[tokio::test]
async fn conns_holds_every_connection_alive_on_every_protocol() {
    let t = TestServer::start().await;
    let target = Target::open(&target_args(&t)).await.unwrap();
    for proto in PROTOS {
        let args = conns::ConnsArgs {
            target: target_args(&t),
            proto,
            connections: 12,
            concurrency: 4,
        };
        let report = conns::run(&target, &args).await.unwrap();
        assert_eq!(
            (report.connected, report.alive),
            (12, 12),
            "{proto:?}: {report:?}"
        );
        assert!(report.rss_after_kib.is_some());
    }
}

#[tokio::test]
async fn mesh_delivers_to_every_hop_once_in_a_line_and_a_ring() {
    for shape in [mesh::Shape::Line, mesh::Shape::Ring] {
        let args = mesh::MeshArgs {
            nodes: 4,
            shape,
            messages: 50,
            rate: 500,
        };
        let report = mesh::run(&args).await.unwrap();
        assert_eq!((report.duplicates, report.missing), (0, 0), "{report:?}");
        let hops: Vec<usize> = report.by_hops.iter().map(|h| h.hops).collect();
        match shape {
            mesh::Shape::Line => assert_eq!(hops, [1, 2, 3]),
            mesh::Shape::Ring => assert_eq!(hops, [1, 2]),
        }
        assert!(report.by_hops.iter().all(|h| h.received >= 50));
    }
}

#[tokio::test]
async fn dm_and_fanout_run_over_tls_on_every_protocol() {
    let certs = tempfile::tempdir().unwrap();
    let made = meshtalk::tls::make_certificates(certs.path(), &[]).unwrap();
    let t = TestServer::start_with(meshtalk::config::ServeArgs {
        tls_cert: Some(made.cert.clone()),
        tls_key: Some(made.key.clone()),
        ..Default::default()
    })
    .await;
    let tls_args = || TargetArgs {
        grpc: format!("https://127.0.0.1:{}", t.server.grpc_addr().port()),
        tls: true,
        ca_cert: Some(made.ca.clone()),
        ..target_args(&t)
    };
    let target = Target::open(&tls_args()).await.unwrap();
    for proto in PROTOS {
        let args = dm::DmArgs {
            target: tls_args(),
            proto,
            clients: 2,
            messages: 10,
            bytes: 64,
            pipeline: 4,
            idle_timeout: 5,
        };
        let report = dm::run(&target, &args).await.unwrap();
        assert_eq!((report.acked, report.received), (20, 20), "{proto:?}");
        let args = fanout::FanoutArgs {
            target: tls_args(),
            proto,
            subscribers: 3,
            publishers: 2,
            messages: 5,
            bytes: 64,
            rate: None,
            pipeline: 4,
            idle_timeout: 5,
        };
        let report = fanout::run(&target, &args).await.unwrap();
        assert_eq!(report.received, 30, "{proto:?}");
    }
}
