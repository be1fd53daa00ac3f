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
    /// Make an existing account an operator; its server must be stopped.
    Operator {
        /// The account's name.
        name: String,
        /// The server's data dir [default: meshtalk-data].
        #[arg(long, env = "MESHTALK_DATA_DIR")]
        data_dir: Option<std::path::PathBuf>,
        /// The server's store URL [default: sqlite://DATA_DIR/meshtalk.db].
        #[arg(long, env = "MESHTALK_STORE")]
        store: Option<String>,
    },
    /// Write a local CA and a server certificate it signs, for trying TLS.
    Cert(CertArgs),
    /// Copy a SQLite store to FILE, consistently, while its server runs.
    Backup {
        /// The new file to write.
        file: std::path::PathBuf,
        /// The server's data dir [default: meshtalk-data].
        #[arg(long, env = "MESHTALK_DATA_DIR")]
        data_dir: Option<std::path::PathBuf>,
        /// The server's store URL [default: sqlite://DATA_DIR/meshtalk.db].
        #[arg(long, env = "MESHTALK_STORE")]
        store: Option<String>,
    },
}

#[derive(clap::Args)]
struct CertArgs {
    /// Where to write ca.pem, server.pem and server-key.pem.
    #[arg(long, default_value = "meshtalk-tls")]
    dir: std::path::PathBuf,
    /// A further DNS name or IP address the certificate is for (repeatable);
    /// localhost, 127.0.0.1 and ::1 are always included.
    #[arg(long = "name")]
    names: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let command = Cli::parse().command;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            say_error(&format!("cannot start: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(command));
    // A read of stdin may still be blocked in its thread (a chat client
    // ended by the server while its user was typing): exit without it.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            say_error(&report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Says why the command failed, on stderr; a stderr that is gone (a pipe
/// whose reader quit) is no reason to panic.
fn say_error(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "meshtalk: {why}");
}

/// An error as a person reads it: each cause once, in plain words, never a
/// backtrace. A cause whose text the message already carries (errors that
/// name their source in their own message) is not said again.
fn report(e: &anyhow::Error) -> String {
    let mut said = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
    }
    said
}

async fn run(command: Command) -> anyhow::Result<()> {
    if matches!(command, Command::Serve(_) | Command::Bench(_)) {
        raise_open_file_limit();
    }
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Chat(args) => {
            init_logging(LogFormat::Text, "warn");
            chat::run(args).await
        }
        Command::Bench(args) => {
            init_logging(LogFormat::Text, "warn");
            meshtalk::bench::run(args).await
        }
        Command::Cert(args) => cert(args),
        Command::Backup {
            file,
            data_dir,
            store,
        } => backup(&file, data_dir, store).await,
        Command::Operator {
            name,
            data_dir,
            store,
        } => {
            let settings = meshtalk::config::ServeArgs {
                data_dir,
                store,
                ..Default::default()
            }
            .resolve()?;
            let name = meshtalk::server::grant_operator_offline(
                &settings.store,
                &settings.data_dir,
                &name,
            )
            .await?;
            println!("{name} is now an operator of {}", settings.store.shown());
            Ok(())
        }
    }
}

async fn backup(
    file: &std::path::Path,
    data_dir: Option<std::path::PathBuf>,
    store: Option<String>,
) -> anyhow::Result<()> {
    let settings = ServeArgs {
        data_dir,
        store,
        ..Default::default()
    }
    .resolve()?;
    let db = match &settings.store {
        meshtalk::config::StoreLocation::Sqlite(path) => path.clone(),
        meshtalk::config::StoreLocation::Postgres(_) => anyhow::bail!(
            "a PostgreSQL store is backed up with pg_dump (docs/postgres.md, \"Backups\")"
        ),
    };
    let to = file.to_owned();
    let from = db.clone();
    let copied =
        tokio::task::spawn_blocking(move || meshtalk::store::backup_sqlite(&from, &to)).await??;
    println!(
        "copied {} ({} pages, {:.1} MiB) to {}",
        db.display(),
        copied.pages,
        copied.bytes as f64 / (1 << 20) as f64,
        file.display()
    );
    Ok(())
}

fn cert(args: CertArgs) -> anyhow::Result<()> {
    let made = meshtalk::tls::make_certificates(&args.dir, &args.names)?;
    println!(
        "wrote {ca} (the CA clients trust), {cert} and {key}\n\
         serve:  meshtalk serve --tls-cert {cert} --tls-key {key}\n\
         chat:   meshtalk chat --server https://localhost:50051 --ca-cert {ca} NAME\n\
         line:   openssl s_client -quiet -CAfile {ca} -connect 127.0.0.1:8889",
        ca = made.ca.display(),
        cert = made.cert.display(),
        key = made.key.display(),
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let check_only = args.check_config;
    let settings = args.resolve()?;
    if check_only {
        println!("{}", check_config(&settings)?);
        return Ok(());
    }
    init_logging(settings.log_format, "info");
    // Watched before the server starts, so a Ctrl-C at any moment after
    // it is serving shuts it down in order instead of killing it.
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let server = Server::start(settings).await?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}

/// What `serve --check-config` says: the settings a server would run with,
/// once the files they name have been read. Nothing is bound or opened.
fn check_config(settings: &meshtalk::config::Settings) -> anyhow::Result<String> {
    if let Some(tls) = &settings.tls {
        meshtalk::tls::server_config(&tls.cert, &tls.key, &[])
            .with_context(|| format!("TLS: {}", tls.cert.display()))?;
    }
    let data_dir = &settings.data_dir;
    if data_dir.exists() && !data_dir.is_dir() {
        anyhow::bail!("the data dir {} is a file", data_dir.display());
    }
    let mesh = match &settings.mesh_addr {
        Some(addr) => format!("mesh on {addr}"),
        None => "no mesh listener".to_owned(),
    };
    Ok(format!(
        "config OK: node {node}, store {store}, data dir {dir}\n\
         doors: gRPC {grpc}, line {talk}, binary {wire}, HTTP {http}, TLS {tls}\n\
         {mesh}, {peers} peers to link, mesh secret {secret}",
        node = settings.node,
        store = settings.store.shown(),
        dir = data_dir.display(),
        grpc = settings.grpc_addr,
        talk = settings.talk_addr,
        wire = settings.wire_addr,
        http = settings.http_addr,
        tls = if settings.tls.is_some() { "on" } else { "off" },
        peers = settings.peers.len(),
        secret = if settings.mesh_secret.is_some() {
            "set"
        } else {
            "not set"
        },
    ))
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours are for people at a terminal, not for files and pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Lifts the soft limit on open files to the hard limit. A server holding
/// tens of thousands of connections (and the load generator opening them)
/// needs more than the usual soft limit of 1,024, and raising it is what
/// the hard limit allows any process to do.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
