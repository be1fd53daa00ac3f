//! TLS on every client door: the line, binary and gRPC doors speak only TLS
//! when given a certificate, real TLS clients get through, plaintext does
//! not, and a door on a public address refuses to start without TLS.

mod common;

use std::time::Duration;

use common::{PASSWORD, TestServer};
use meshtalk::client::chat::ChatSession;
use meshtalk::client::line::LineClient;
use meshtalk::client::transport::ClientTls;
use meshtalk::client::wire::WireClient;
use meshtalk::client::{Client, To};
use meshtalk::codec::line::ServerLine;
use meshtalk::config::ServeArgs;
use meshtalk::server::Server;
use meshtalk::tls::{MadeCertificates, make_certificates};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tls_server() -> (TestServer, MadeCertificates, tempfile::TempDir) {
    let certs_dir = tempfile::tempdir().unwrap();
    let made = make_certificates(certs_dir.path(), &[]).unwrap();
    let t = TestServer::start_with(ServeArgs {
        tls_cert: Some(made.cert.clone()),
        tls_key: Some(made.key.clone()),
        ..Default::default()
    })
    .await;
    (t, made, certs_dir)
}

#[tokio::test]
async fn every_door_speaks_tls_to_tls_clients() {
    let (t, made, _dir) = tls_server().await;
    let talk = t.server.talk_addr().to_string();
    let wire = t.server.wire_addr().to_string();

    let mut line = LineClient::connect_tls(&talk, &ClientTls::new(&talk, Some(&made.ca)).unwrap())
        .await
        .expect("a TLS line client gets the greeting");
    assert!(line.welcome.starts_with("* welcome"), "{}", line.welcome);
    for command in [
        format!("/register lena {PASSWORD}"),
        format!("/login lena {PASSWORD}"),
    ] {
        let reply = line.request(&command).await.unwrap();
        assert!(reply.is_ok(), "{command}: {reply:?}");
    }

    let binary = WireClient::connect_tls(&wire, &ClientTls::new(&wire, Some(&made.ca)).unwrap())
        .await
        .unwrap();
    binary.register("bina", PASSWORD).await.unwrap();
    binary.login("bina", PASSWORD).await.unwrap();

    let url = format!("https://localhost:{}", t.server.grpc_addr().port());
    let grpc = Client::connect_with(&url, Some(&made.ca)).await.unwrap();
    grpc.register("gina", PASSWORD).await.unwrap();
    let (gina, _) = grpc.login("gina", PASSWORD).await.unwrap();

    // A DM from gRPC reaches the line user; one from the line user reaches
    // the binary user: all three doors are one service, over TLS.
    gina.send(&To::User("lena".into()), "over https", None)
        .await
        .unwrap();
    assert_eq!(
        line.next_delivery().await.unwrap(),
        ServerLine::Direct {
            from: "gina".into(),
            text: "over https".into()
        }
    );
    let reply = line.request("/tell bina over tls").await.unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let m = tokio::time::timeout(Duration::from_secs(5), binary.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.from.as_str(), m.body.as_str()), ("lena", "over tls"));

    // The interactive client's session speaks over the same TLS channel.
    let mut chat = ChatSession::start_with(
        Client::connect_with(&url, Some(&made.ca)).await.unwrap(),
        "charlie",
        PASSWORD,
        true,
    )
    .await
    .unwrap();
    chat.handle("/tell lena from the chat client").await;
    assert_eq!(
        line.next_delivery().await.unwrap(),
        ServerLine::Direct {
            from: "charlie".into(),
            text: "from the chat client".into()
        }
    );
}

#[tokio::test]
async fn plaintext_gets_nothing_from_a_tls_door() {
    let (t, made, _dir) = tls_server().await;

    // A netcat-style client on the TLS line port: its command is not read as
    // one, and it is sent nothing it could read as a reply.
    let mut raw = tokio::net::TcpStream::connect(t.server.talk_addr())
        .await
        .unwrap();
    raw.write_all(format!("/register eve {PASSWORD}\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("welcome") && !text.contains("+OK"),
        "plaintext was answered: {text:?}"
    );
    // The attempt registered nobody.
    let url = format!("https://localhost:{}", t.server.grpc_addr().port());
    let grpc = Client::connect_with(&url, Some(&made.ca)).await.unwrap();
    grpc.register("gina", PASSWORD).await.unwrap();
    let (gina, _) = grpc.login("gina", PASSWORD).await.unwrap();
    assert!(gina.users("eve").await.unwrap().is_empty());

    // A plaintext gRPC client cannot call the TLS gRPC door.
    let plain = format!("http://{}", t.server.grpc_addr());
    let refused = match Client::connect(&plain).await {
        Ok(client) => client.register("mallory", PASSWORD).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "plaintext gRPC was served on a TLS door");

    // A TLS client that does not trust the certificate is refused too.
    let talk = t.server.talk_addr().to_string();
    let untrusting = tempfile::tempdir().unwrap();
    let other = make_certificates(untrusting.path(), &[]).unwrap();
    assert!(
        LineClient::connect_tls(&talk, &ClientTls::new(&talk, Some(&other.ca)).unwrap())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_public_door_without_tls_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::ephemeral(dir.path());
    args.talk_addr = Some("0.0.0.0:0".into());
    let err = match Server::start(args.clone().resolve().unwrap()).await {
        Ok(_) => panic!("a plaintext door on 0.0.0.0 started"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("line door")
            && err.contains("--tls-cert")
            && err.contains("--allow-plaintext"),
        "{err}"
    );

    // Behind a TLS-terminating proxy, the operator says so.
    args.allow_plaintext = true;
    let server = Server::start(args.resolve().unwrap()).await.unwrap();
    server.shutdown().await;
}

#[test]
fn the_cert_command_writes_a_pair_the_server_starts_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshtalk"))
        .args(["cert", "--dir"])
        .arg(dir.path())
        .args(["--name", "chat.example"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("--tls-cert"), "{said}");
    for file in ["ca.pem", "server.pem", "server-key.pem"] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    meshtalk::tls::server_config(
        &dir.path().join("server.pem"),
        &dir.path().join("server-key.pem"),
        &[],
    )
    .unwrap();
}
