//! The HTTP door, through a real HTTP client: Prometheus metrics that move
//! as users do things, liveness, and readiness that ends with shutdown.

mod common;

use common::TestServer;

async fn get(t: &TestServer, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{}{path}", t.server.http_addr()))
        .await
        .expect("the HTTP door answers")
}

/// The metrics page, and the value of each sample on it.
async fn scrape(t: &TestServer) -> (String, impl Fn(&str) -> f64) {
    let response = get(t, "/metrics").await;
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let text = response.text().await.unwrap();
    let page = text.clone();
    let value = move |sample: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {sample} in {page}"))
            .parse::<f64>()
            .unwrap()
    };
    (text, value)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_as_users_log_in_send_and_receive() {
    let t = TestServer::start().await;
    let mut alice = t.line_user("alice").await;
    let mut bob = t.line_user("bob").await;
    let (_, before) = scrape(&t).await;

    for n in 0..5 {
        let reply = alice
            .request(&format!("/tell bob hello {n}"))
            .await
            .unwrap();
        assert!(reply.is_ok(), "{reply:?}");
    }
    for _ in 0..5 {
        bob.next_delivery().await.unwrap();
    }
    let mut stranger = meshtalk::client::line::LineClient::connect(t.server.talk_addr())
        .await
        .unwrap();
    let refused = stranger
        .request("/login alice not-the-password")
        .await
        .unwrap();
    assert!(!refused.is_ok());

    let (text, after) = scrape(&t).await;
    let moved = |sample: &str| after(sample) - before(sample);
    assert!(moved("meshtalk_messages_stored_total") >= 5.0, "{text}");
    assert!(moved("meshtalk_deliveries_total") >= 5.0, "{text}");
    assert!(moved("meshtalk_login_failures_total") >= 1.0, "{text}");
    assert!(
        moved("meshtalk_store_commit_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(
        after("meshtalk_connections{protocol=\"line\"}") >= 3.0,
        "alice, bob and the stranger are connected: {text}"
    );
    assert!(after("meshtalk_sessions") >= 2.0, "{text}");
    for name in [
        "# TYPE meshtalk_slow_consumers counter",
        "# TYPE meshtalk_rate_limited counter",
        "# TYPE meshtalk_acks_pending gauge",
        "# TYPE meshtalk_mesh_links gauge",
        "# TYPE meshtalk_store_batch_mutations histogram",
        "# HELP meshtalk_connections_refused",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_up_while_the_process_is_and_readiness_ends_with_shutdown() {
    let t = TestServer::start().await;
    let _alice = t.user("alice").await;
    let live = get(&t, "/healthz").await;
    assert_eq!(live.status(), 200);
    assert_eq!(live.text().await.unwrap(), "ok\n");
    let ready = get(&t, "/readyz").await;
    assert_eq!(ready.status(), 200);

    t.server.core().begin_shutdown();
    let draining = get(&t, "/readyz").await;
    assert_eq!(draining.status(), 503);
    let why = draining.text().await.unwrap();
    assert!(why.contains("shutting down"), "{why}");
    assert_eq!(get(&t, "/healthz").await.status(), 200);
    assert_eq!(get(&t, "/nothing-here").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_door_counts_against_the_per_address_cap() {
    let t = TestServer::start_with(meshtalk::config::ServeArgs {
        max_connections_per_ip: Some(2),
        ..Default::default()
    })
    .await;
    let addr = t.server.http_addr();
    let held = [
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    // Both places are taken: the next connection is closed unanswered.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let refused = client.get(format!("http://{addr}/healthz")).send().await;
    assert!(refused.is_err(), "{refused:?}");
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (text, after) = scrape(&t).await;
    assert!(after("meshtalk_connections_refused_total") >= 1.0, "{text}");
}
