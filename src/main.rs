//! The `meshtalk` command: parses flags and hands off to the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshtalk::client::chat::{self, ChatArgs};
use meshtalk::config::{LogFormat, ServeArgs};
use meshtalk::server::Server;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "meshtalk", version, about = "A chat server and client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server.
    Serve(Box<ServeArgs>),
    /// Chat interactively with a server.
    Chat(ChatArgs),
    /// Drive a server with load and report throughput and latency.
    Bench(meshtalk::bench::BenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Chat(args) => {
            init_logging(LogFormat::Text, "warn");
            chat::run(args).await
        }
        Command::Bench(args) => {
            init_logging(LogFormat::Text, "warn");
            meshtalk::bench::run(args).await
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.resolve()?;
    init_logging(settings.log_format, "info");
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let server = Server::start(settings).await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
