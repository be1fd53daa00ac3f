//! `meshtalk chat`: the interactive client.
//!
//! [`ChatSession`] holds what a user does (commands in, lines out) and knows
//! nothing about terminals, so tests drive it directly. [`run`] puts it
//! behind an async readline whose shared writer prints incoming messages above
//! the input line without garbling what the user is typing.

use std::io::{IsTerminal, Write};

use clap::Args;
use rustyline_async::{Readline, ReadlineEvent};

use super::{Client, ClientError, To};
use crate::codec::line::{Command, HELP};
use crate::core::names::{LOBBY, room_after_leaving};
use crate::proto;

mod failover;
mod receive;
mod views;

pub use failover::{Servers, is_unreachable};
pub use receive::{ShownIds, show_incoming};

#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// The account to log in as.
    pub name: String,
    /// The server's gRPC URL. Give several (repeated, or comma-separated)
    /// for nodes that share one store: when the one in use stops answering,
    /// the session goes on at the next.
    #[arg(
        long,
        env = "MESHTALK_SERVER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: Vec<String>,
    /// A PEM CA certificate to check an https:// server against [default: the system's roots].
    #[arg(long, env = "MESHTALK_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Create the account first.
    #[arg(long)]
    pub register: bool,
}

/// A logged-in user's side of a conversation.
pub struct ChatSession {
    client: Client,
    name: String,
    room: String,
    /// Where to go on when the server in use stops answering.
    servers: Option<Servers>,
    /// What happened on the way, shown before the command's own lines.
    notices: Vec<String>,
}

/// What handling one line led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Lines to show the user.
    Show(Vec<String>),
    Quit,
}

impl ChatSession {
    /// Connects, registers first if asked, and logs in.
    pub async fn start(
        url: &str,
        name: &str,
        password: &str,
        register: bool,
    ) -> Result<ChatSession, ClientError> {
        Self::start_with(Client::connect(url).await?, name, password, register).await
    }

    /// Registers first if asked, and logs in, over a connected client.
    pub async fn start_with(
        client: Client,
        name: &str,
        password: &str,
        register: bool,
    ) -> Result<ChatSession, ClientError> {
        if register {
            client.register(name, password).await?;
        }
        let (client, login) = client.login(name, password).await?;
        Ok(ChatSession {
            client,
            name: login.name,
            // Every session starts out speaking in the lobby.
            room: LOBBY.into(),
            servers: None,
            notices: Vec::new(),
        })
    }

    /// Logs in on the first of `servers` that answers (registering first
    /// if asked), ready to go on at the next when that one stops.
    pub async fn start_on(
        servers: Servers,
        name: &str,
        password: &str,
        register: bool,
    ) -> Result<ChatSession, ClientError> {
        let client = servers.connect().await?;
        let mut session = Self::start_with(client, name, password, register).await?;
        session.servers = Some(servers);
        Ok(session)
    }

    /// The server in use, as the user named it, or "the server".
    fn server_shown(&self) -> String {
        self.server().unwrap_or("the server").to_owned()
    }

    /// The URL of the server in use, when the session knows its servers.
    pub fn server(&self) -> Option<&str> {
        self.servers.as_ref().map(Servers::current)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn prompt(&self) -> String {
        format!("[#{}] {}> ", self.room, self.name)
    }

    /// Handles one line the user typed.
    pub async fn handle(&mut self, line: &str) -> Outcome {
        match self.outcome(line).await {
            Outcome::Show(lines) => {
                let mut shown = std::mem::take(&mut self.notices);
                shown.extend(lines);
                Outcome::Show(shown)
            }
            Outcome::Quit => Outcome::Quit,
        }
    }

    async fn outcome(&mut self, line: &str) -> Outcome {
        match Command::parse(line) {
            Ok(None) => Outcome::Show(vec![]),
            Ok(Some(Command::Quit)) => Outcome::Quit,
            Ok(Some(command @ (Command::Logout | Command::DeleteAccount { .. }))) => {
                match self.run_anywhere(command).await {
                    Ok(_) => Outcome::Quit,
                    Err(e) => Outcome::Show(vec![format!("! {e}")]),
                }
            }
            Ok(Some(command)) => {
                let sending = matches!(command, Command::Say(_) | Command::Tell { .. });
                Outcome::Show(match self.run_anywhere(command).await {
                    Ok(lines) => lines,
                    // Said plainly: the line is not queued, the user types
                    // it again once the connection is back.
                    Err(e) if is_unreachable(&e) && sending => vec![format!(
                        "! not sent: {} is not answering; send it again once reconnected",
                        self.server_shown()
                    )],
                    Err(e) if is_unreachable(&e) => vec![format!(
                        "! {} is not answering; try again once reconnected",
                        self.server_shown()
                    )],
                    Err(e) => vec![format!("! {e}")],
                })
            }
            Err(e) => Outcome::Show(vec![format!("! {e}")]),
        }
    }

    /// Runs a command; if the server is gone, moves the session to the
    /// next one that answers and runs it there. A send is safe to repeat:
    /// it carries a `client_msg_id`, so one the first server stored is not
    /// stored again.
    async fn run_anywhere(&mut self, command: Command) -> Result<Vec<String>, ClientError> {
        let send_id = format!("chat-{:016x}", rand::random::<u64>());
        let failed = match self.run(command.clone(), &send_id).await {
            Err(e) if is_unreachable(&e) && self.servers.is_some() => e,
            done => return done,
        };
        let Some(servers) = self.servers.clone() else {
            return Err(failed);
        };
        let gone = servers.current().to_owned();
        self.client = servers.fail_over(&self.client, &gone).await?;
        self.notices
            .push(format!("* {gone} is gone; now on {}", servers.current()));
        self.run(command, &send_id).await
    }

    async fn run(&mut self, command: Command, send_id: &str) -> Result<Vec<String>, ClientError> {
        let c = &self.client;
        Ok(match command {
            Command::Say(text) => {
                c.send(&To::Room(self.room.clone()), &text, Some(send_id))
                    .await?;
                vec![]
            }
            Command::Tell { to, text } => {
                c.send(&To::User(to.clone()), &text, Some(send_id)).await?;
                vec![format!("-> @{to}: {text}")]
            }
            Command::Join(room) => {
                self.room = c.join(&room).await?.room;
                vec![format!("* now in #{}", self.room)]
            }
            Command::Leave(room) => {
                let left = c.leave(&room).await?;
                self.room = room_after_leaving(&self.room, &room).to_owned();
                vec![views::left(&room, left)]
            }
            Command::Rooms => views::rooms(&c.rooms().await?),
            Command::Users(pattern) => views::users(&pattern, &c.users(&pattern).await?),
            Command::History(n) => {
                let room = To::Room(self.room.clone());
                c.recent(&room, n)
                    .await?
                    .iter()
                    .map(render_message)
                    .collect()
            }
            Command::Who => views::who(&c.who().await?),
            Command::Stats { mesh } => views::stats(mesh, &c.stats(mesh).await?),
            Command::Help => HELP.iter().map(|l| format!("* {l}")).collect(),
            Command::Register { .. } | Command::Login { .. } => {
                vec![format!(
                    "! already logged in as {}: /logout first",
                    self.name
                )]
            }
            Command::Logout => c.logout().await.map(|()| vec![])?,
            Command::DeleteAccount { password } => {
                c.delete_account(password).await.map(|()| vec![])?
            }
            Command::Peers => views::peers(&c.peers().await?),
            Command::Topology => views::topology(&c.topology().await?),
            Command::PeerListen { host, port } => {
                let address = c.peer_listen(host, port).await?;
                vec![format!("* listening for peers on {address}")]
            }
            Command::PeerConnect { host, port } => {
                vec![format!("* linked to {}", c.peer_connect(host, port).await?)]
            }
            Command::PeerKill(node) => {
                c.peer_kill(node.clone()).await?;
                vec![format!("* unlinked {node}")]
            }
            Command::Moderate {
                action,
                name,
                reason,
            } => {
                let done = c.moderate(action, name, reason).await?;
                vec![format!("* {}", done.summary(action))]
            }
            Command::Quit => vec![],
        })
    }
}

/// A delivered message as the line protocol shows it.
pub fn render_message(m: &proto::Message) -> String {
    match &m.to {
        Some(proto::message::To::Room(room)) => format!("#{room} {}: {}", m.sender, m.body),
        _ => format!("@{}: {}", m.sender, m.body),
    }
}

/// An event as a line, and the message id to acknowledge once it is shown.
pub fn render_event(event: &proto::Event) -> Option<(String, Option<u64>)> {
    match event.kind.as_ref()? {
        proto::event::Kind::Message(m) => Some((render_message(m), Some(m.id))),
        proto::event::Kind::Notice(n) => Some((format!("* {}", n.text), None)),
    }
}

/// The client: interactive on a terminal, else reading commands from
/// stdin line by line, for scripts.
pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let scripted = !std::io::stdin().is_terminal();
    let password = match std::env::var("MESHTALK_PASSWORD") {
        Ok(password) => password,
        Err(_) if scripted => anyhow::bail!(
            "stdin is not a terminal, so there is nowhere to ask for the password: \
             set MESHTALK_PASSWORD"
        ),
        Err(_) => rpassword::prompt_password(format!("password for {}: ", args.name))?,
    };
    let servers = Servers::new(args.server, args.ca_cert);
    let session = ChatSession::start_on(servers.clone(), &args.name, &password, args.register)
        .await
        .map_err(|e| match e {
            ClientError::Rpc(status)
                if status.code() == tonic::Code::Unauthenticated && !args.register =>
            {
                anyhow::anyhow!(
                    "{} (a new account? add --register to create it)",
                    status.message()
                )
            }
            e => e.into(),
        })?;
    if scripted {
        return run_script(session, servers).await;
    }
    run_terminal(session, servers).await
}

/// Runs each line of stdin as typed, printing what it shows and what
/// arrives meanwhile; ends at the end of stdin, every send answered.
async fn run_script(mut session: ChatSession, servers: Servers) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let incoming = tokio::spawn(receive::show_incoming(
        session.client().clone(),
        servers,
        std::io::stdout(),
    ));
    let mut incoming = incoming;
    let mut receiving = true;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            ended = &mut incoming, if receiving => {
                session_over(ended)?;
                receiving = false;
                continue;
            }
        };
        let Some(line) = line else { break };
        match session.handle(&line).await {
            Outcome::Quit => break,
            Outcome::Show(shown) => {
                let mut out = std::io::stdout().lock();
                for line in shown {
                    writeln!(out, "{line}")?;
                }
            }
        }
    }
    incoming.abort();
    Ok(())
}

/// The end of the session's deliveries while the client runs: an
/// operator's notice ends the client with it as the error; after a logout
/// the client reads on (its commands say they need a log-in).
fn session_over(ended: Result<Option<String>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match ended {
        Ok(Some(notice)) => anyhow::bail!("{notice}"),
        Ok(None) | Err(_) => Ok(()),
    }
}

async fn run_terminal(mut session: ChatSession, servers: Servers) -> anyhow::Result<()> {
    let (mut readline, mut out) = Readline::new(session.prompt())?;
    writeln!(
        out,
        "* logged in as {} on {}; /help lists commands",
        session.name,
        servers.current()
    )?;
    let incoming = tokio::spawn(receive::show_incoming(
        session.client().clone(),
        servers,
        out.clone(),
    ));
    let mut incoming = incoming;
    let mut receiving = true;
    loop {
        let event = tokio::select! {
            event = readline.readline() => event,
            ended = &mut incoming, if receiving => {
                if let Err(removed) = session_over(ended) {
                    readline.flush()?;
                    return Err(removed);
                }
                receiving = false;
                continue;
            }
        };
        match event {
            Ok(ReadlineEvent::Line(line)) => {
                readline.add_history_entry(line.clone());
                match session.handle(&line).await {
                    Outcome::Quit => break,
                    Outcome::Show(lines) => {
                        for line in lines {
                            writeln!(out, "{line}")?;
                        }
                    }
                }
                readline.update_prompt(&session.prompt())?;
            }
            Ok(ReadlineEvent::Eof | ReadlineEvent::Interrupted) => break,
            Err(e) => {
                writeln!(out, "! {e}")?;
                break;
            }
        }
    }
    incoming.abort();
    readline.flush()?;
    Ok(())
}
