//! Durable DM throughput: C concurrent clients, each on its own connection,
//! send DMs one after another and wait for each acknowledgement (which the
//! server gives only after the commit is on disk).
//!
//! ```text
//! cargo run --release --example dm_throughput -- CLIENTS SECONDS
//! ```
//! With no arguments it runs 1 and 50 clients for 5 s each against a fresh
//! server in a temporary directory.

use std::time::{Duration, Instant};

use meshtalk::client::{Client, To};
use meshtalk::config::ServeArgs;
use meshtalk::server::Server;

const PASSWORD: &str = "throughput-password";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let runs: Vec<(usize, u64)> = match args[..] {
        [clients, seconds] => vec![(clients, seconds as u64)],
        _ => vec![(1, 5), (50, 5)],
    };
    let dir = tempfile::tempdir()?;
    let server = Server::start(ServeArgs::ephemeral(dir.path()).resolve()?).await?;
    let url = format!("http://{}", server.grpc_addr());
    let setup = Client::connect(&url).await?;
    setup.register("sink", PASSWORD).await?;
    setup.register("source", PASSWORD).await?;

    for (clients, seconds) in runs {
        let mut senders = Vec::new();
        for _ in 0..clients {
            senders.push(
                Client::connect(&url)
                    .await?
                    .login("source", PASSWORD)
                    .await?
                    .0,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for client in senders {
            tasks.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    client
                        .send(&To::User("sink".into()), "durable hello", None)
                        .await?;
                    sent += 1;
                }
                anyhow::Ok(sent)
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{clients:>3} clients: {total} acked sends in {elapsed:.1} s = {:.0} acked sends/s",
            total as f64 / elapsed
        );
    }
    server.shutdown().await;
    Ok(())
}
