//! The HTTP door's web side, through a plain HTTP client: the embedded page
//! and its caching, and gRPC-Web calls that reach the gRPC door's services
//! with its authentication. (tests/browser.rs has the page in a browser.)

mod common;

use common::{PASSWORD, TestServer};
use meshtalk::proto;
use prost::Message;
use reqwest::header::{self, HeaderMap};

fn url(t: &TestServer, path: &str) -> String {
    format!("http://{}{path}", t.server.http_addr())
}

async fn get(t: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url(t, path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("the HTTP door answers")
}

/// What a gRPC-Web call ended with: its messages, and its status and
/// message (from the trailer frame, or the headers of a trailers-only answer).
struct Answer {
    messages: Vec<Vec<u8>>,
    status: Option<String>,
    message: Option<String>,
    headers: HeaderMap,
}

/// Calls `/SERVICE/METHOD` in gRPC-Web (binary), as a browser would.
async fn grpc_web(
    t: &TestServer,
    method: &str,
    request: impl Message,
    token: Option<&str>,
) -> Answer {
    let body = request.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    let mut call = reqwest::Client::new()
        .post(url(t, method))
        .header(header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header(header::ORIGIN, "http://elsewhere.example")
        .body(frame);
    if let Some(token) = token {
        call = call.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = call.send().await.expect("the HTTP door answers");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let mut answer = Answer {
        messages: Vec::new(),
        status: headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned()),
        message: headers
            .get("grpc-message")
            .map(|v| v.to_str().unwrap().to_owned()),
        headers,
    };
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let flags = rest[0];
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + len];
        if flags & 0x80 != 0 {
            for line in String::from_utf8_lossy(payload).split("\r\n") {
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim() {
                        "grpc-status" => answer.status = Some(value.trim().to_owned()),
                        "grpc-message" => answer.message = Some(value.trim().to_owned()),
                        _ => {}
                    }
                }
            }
        } else {
            answer.messages.push(payload.to_vec());
        }
        rest = &rest[5 + len..];
    }
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_served_with_its_types_gzip_and_caching() {
    let t = TestServer::start().await;
    let page = get(&t, "/", &[]).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["cache-control"], "no-cache");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    let etag = page.headers()["etag"].to_str().unwrap().to_owned();
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>meshtalk</title>"), "{html}");

    // The script the page names, by its versioned URL: kept for good, gzipped on request.
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page names its script");
    assert!(script.starts_with("/app.js?v="), "{script}");
    let js = get(&t, script, &[("accept-encoding", "gzip")]).await;
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(js.headers()["content-encoding"], "gzip");
    assert!(
        js.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let gzipped = js.bytes().await.unwrap();
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "a gzip stream");
    let plain = get(&t, "/app.js", &[]).await;
    assert!(plain.headers().get("content-encoding").is_none());
    assert!(plain.bytes().await.unwrap().len() > gzipped.len());
    let css = get(&t, "/app.css", &[]).await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    // A reload with the page's tag costs a 304 and no body.
    let again = get(&t, "/", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    assert_eq!(get(&t, "/nothing-here", &[]).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_web_reaches_the_same_services_with_the_same_tokens() {
    let t = TestServer::start().await;
    let registered = grpc_web(
        &t,
        "/meshtalk.v1.Accounts/Register",
        proto::RegisterRequest {
            name: "alice".into(),
            password: PASSWORD.into(),
        },
        None,
    )
    .await;
    assert_eq!(registered.status.as_deref(), Some("0"));
    // CORS: a page on another origin may read the answer and its status.
    assert_eq!(registered.headers["access-control-allow-origin"], "*");
    let exposed = registered.headers["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-message"),
        "{exposed}"
    );

    // Without a token: the gRPC door's refusal.
    let refused = grpc_web(&t, "/meshtalk.v1.Chat/Who", proto::WhoRequest {}, None).await;
    assert_eq!(refused.status.as_deref(), Some("16"));
    assert!(
        refused
            .message
            .unwrap_or_default()
            .contains("authorization"),
        "says what is missing"
    );

    // Logged in over gRPC-Web, a send reaches a subscriber on the gRPC door.
    let login = grpc_web(
        &t,
        "/meshtalk.v1.Accounts/Login",
        proto::LoginRequest {
            name: "alice".into(),
            password: PASSWORD.into(),
        },
        None,
    )
    .await;
    let token = proto::LoginResponse::decode(&login.messages[0][..])
        .unwrap()
        .token;
    let bob = t.user("bob").await;
    let sent = grpc_web(
        &t,
        "/meshtalk.v1.Chat/Send",
        proto::SendRequest {
            to: Some(proto::send_request::To::User("bob".into())),
            body: "from a browser".into(),
            client_msg_id: String::new(),
        },
        Some(&token),
    )
    .await;
    assert_eq!(sent.status.as_deref(), Some("0"), "{:?}", sent.message);
    let mut stream = bob.subscribe().await.unwrap();
    let got = common::next_message(&mut stream).await;
    assert_eq!(
        (got.sender.as_str(), got.body.as_str()),
        ("alice", "from a browser")
    );

    // A server-streaming call: history, as the page scrolls back.
    let history = grpc_web(
        &t,
        "/meshtalk.v1.Chat/GetMessages",
        proto::GetMessagesRequest {
            conversation: Some(proto::get_messages_request::Conversation::User(
                "bob".into(),
            )),
            after_id: 0,
            limit: 10,
            newest: true,
        },
        Some(&token),
    )
    .await;
    assert_eq!(history.status.as_deref(), Some("0"));
    assert_eq!(history.messages.len(), 1);
    let message = proto::Message::decode(&history.messages[0][..]).unwrap();
    assert_eq!(message.body, "from a browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cors_preflight_allows_the_grpc_web_headers() {
    let t = TestServer::start().await;
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, url(&t, "/meshtalk.v1.Chat/Send"))
        .header(header::ORIGIN, "http://elsewhere.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web,x-user-agent",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let allowed = response.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    for name in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
    ] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
}
