//! What one direct message costs on the wire, per protocol: the send (request
//! and reply, on the sender's connection), the delivery and the
//! acknowledgement (on the recipient's connection). Every connection goes
//! through a byte-counting TCP proxy; each figure is measured in steady state
//! (after one warm-up message, so connection set-up and HTTP/2 header
//! compression tables are already in place).
//!
//! ```text
//! cargo run --release --example wire_bytes
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meshtalk::client::line::LineClient;
use meshtalk::client::wire::WireClient;
use meshtalk::client::{Client, To};
use meshtalk::config::ServeArgs;
use meshtalk::proto;
use meshtalk::server::Server;
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "wire-bytes-password";
const BODY: &str = "lunch at noon?";

/// Bytes that crossed a proxy, both ways.
#[derive(Default)]
struct Meter {
    bytes: AtomicU64,
}

impl Meter {
    fn read(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// A TCP proxy to `target` that counts every byte; returns its address.
async fn proxy(target: SocketAddr, meter: Arc<Meter>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let meter = meter.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = copy(&mut cr, &mut sw, meter.clone());
                let down = copy(&mut sr, &mut cw, meter);
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok(addr)
}

async fn copy(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    meter: Arc<Meter>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        meter.bytes.fetch_add(n as u64, Ordering::SeqCst);
        to.write_all(&buf[..n]).await?;
    }
}

/// Waits until the meters stop moving.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

struct Cost {
    send: u64,
    delivery: u64,
    ack: u64,
}

async fn grpc(server: &Server, sender: &str, recipient: &str) -> anyhow::Result<Cost> {
    let (sm, rm) = (Arc::new(Meter::default()), Arc::new(Meter::default()));
    let s_addr = proxy(server.grpc_addr(), sm.clone()).await?;
    let r_addr = proxy(server.grpc_addr(), rm.clone()).await?;
    let s = Client::connect(&format!("http://{s_addr}"))
        .await?
        .login(sender, PASSWORD)
        .await?
        .0;
    let r = Client::connect(&format!("http://{r_addr}"))
        .await?
        .login(recipient, PASSWORD)
        .await?
        .0;
    let mut events = r.subscribe().await?;
    let to = To::User(recipient.into());
    let mut cost = Cost {
        send: 0,
        delivery: 0,
        ack: 0,
    };
    for round in 0..2 {
        settle().await;
        let (s0, r0) = (sm.read(), rm.read());
        s.send(&to, BODY, None).await?;
        let event = events
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        settle().await;
        let (s1, r1) = (sm.read(), rm.read());
        let Some(proto::event::Kind::Message(m)) = event.kind else {
            anyhow::bail!("not a message");
        };
        r.ack(vec![m.id]).await?;
        settle().await;
        if round == 1 {
            cost = Cost {
                send: s1 - s0,
                delivery: r1 - r0,
                ack: rm.read() - r1,
            };
        }
    }
    Ok(cost)
}

async fn line(server: &Server, sender: &str, recipient: &str) -> anyhow::Result<Cost> {
    let (sm, rm) = (Arc::new(Meter::default()), Arc::new(Meter::default()));
    let mut s = LineClient::connect(proxy(server.talk_addr(), sm.clone()).await?).await?;
    let mut r = LineClient::connect(proxy(server.talk_addr(), rm.clone()).await?).await?;
    s.request(&format!("/login {sender} {PASSWORD}")).await?;
    r.request(&format!("/login {recipient} {PASSWORD}")).await?;
    let mut cost = Cost {
        send: 0,
        delivery: 0,
        ack: 0,
    };
    for round in 0..2 {
        settle().await;
        let (s0, r0) = (sm.read(), rm.read());
        s.request(&format!("/tell {recipient} {BODY}")).await?;
        r.next_delivery().await?;
        settle().await;
        if round == 1 {
            // Writing the line to the socket is the acknowledgement: no bytes.
            cost = Cost {
                send: sm.read() - s0,
                delivery: rm.read() - r0,
                ack: 0,
            };
        }
    }
    Ok(cost)
}

async fn wire(server: &Server, sender: &str, recipient: &str) -> anyhow::Result<Cost> {
    let (sm, rm) = (Arc::new(Meter::default()), Arc::new(Meter::default()));
    let s = WireClient::connect(proxy(server.wire_addr(), sm.clone()).await?).await?;
    let r = WireClient::connect(proxy(server.wire_addr(), rm.clone()).await?).await?;
    s.login(sender, PASSWORD).await?;
    r.login(recipient, PASSWORD).await?;
    let mut cost = Cost {
        send: 0,
        delivery: 0,
        ack: 0,
    };
    for round in 0..2 {
        settle().await;
        let (s0, r0) = (sm.read(), rm.read());
        s.send_dm(recipient, BODY, "").await?;
        let m = r.next_message().await?;
        settle().await;
        let (s1, r1) = (sm.read(), rm.read());
        r.ack(&[m.id]).await?;
        settle().await;
        if round == 1 {
            cost = Cost {
                send: s1 - s0,
                delivery: r1 - r0,
                ack: rm.read() - r1,
            };
        }
    }
    Ok(cost)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(ServeArgs::ephemeral(dir.path()).resolve()?).await?;
    let setup = Client::connect(&format!("http://{}", server.grpc_addr())).await?;
    for name in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        setup.register(name, PASSWORD).await?;
    }
    let rows = [
        (
            "gRPC (HTTP/2, protobuf)",
            grpc(&server, "alice", "bob").await?,
        ),
        ("line protocol", line(&server, "carol", "dave").await?),
        ("binary protocol", wire(&server, "erin", "frank").await?),
    ];
    println!(
        "One direct message of {} bytes (\"{BODY}\"), steady state, bytes in both directions:\n",
        BODY.len()
    );
    println!("| protocol | send + reply | delivery | ack | total |");
    println!("|---|---:|---:|---:|---:|");
    for (name, c) in rows {
        println!(
            "| {name} | {} | {} | {} | {} |",
            c.send,
            c.delivery,
            c.ack,
            c.send + c.delivery + c.ack
        );
    }
    server.shutdown().await;
    Ok(())
}
