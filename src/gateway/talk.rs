//! The line protocol (talker): CRLF text lines, `/`-commands, markers on
//! every server line. `nc localhost 8889` is a client. See
//! `docs/line-protocol.md`.
//!
//! One task per connection reads lines and writes replies and deliveries, so
//! a reply is never split by a delivery. A connection is one session: it logs
//! in, gets its own live stream from the core, and logs out when it closes.

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::listener::{
    self, Accepted, Deadlines, PUSH_BATCH, Pass, ReadHalf, Refusal, Shutdown, Stream, WriteHalf,
    expires, next_delivery, read_more, write_out,
};
use crate::codec::line::{Command, HELP, LineDecoder, LineError, ParseError, ServerLine};
use crate::core::pace::{Pace, Pacer};
use crate::core::{
    Closed, Core, CoreError, Delivery, Encoding, ErrorKind, Identity, Inbox, Message, Sent, Target,
};

/// Speech lines one connection may have waiting for their commit.
const PIPELINE: usize = 64;

/// A connection: reads lines, writes server lines.
struct Connection {
    reader: ReadHalf,
    /// Unbuffered: `out` already gathers a batch into one write.
    writer: WriteHalf,
    buffer: BytesMut,
    decoder: LineDecoder,
    out: Vec<u8>,
    /// The client's address, which password checks are counted by.
    peer: std::net::IpAddr,
    /// The connection's place at the gate, held for its life.
    _pass: Pass,
    /// When the unfinished line in `buffer` began to arrive.
    started: Option<std::time::Instant>,
    deadlines: Deadlines,
}

impl Connection {
    fn new(accepted: Accepted, deadlines: Deadlines) -> Connection {
        let (reader, writer) = accepted.stream.split();
        Connection {
            peer: accepted.peer.ip(),
            _pass: accepted.pass,
            reader,
            writer,
            buffer: BytesMut::new(),
            decoder: LineDecoder::new(),
            out: Vec::new(),
            started: None,
            deadlines,
        }
    }

    /// The next line; `None` at end of input. A line begun but not finished
    /// within the read deadline fails the read with `TimedOut`.
    async fn read_line(&mut self) -> std::io::Result<Option<Result<String, LineError>>> {
        loop {
            if let Some(line) = self.decoder.decode(&mut self.buffer) {
                self.started = None;
                return Ok(Some(line));
            }
            let read = read_more(
                &mut self.reader,
                &mut self.buffer,
                &mut self.started,
                self.deadlines.read,
            );
            if read.await? == 0 {
                return Ok(self.decoder.decode_eof(&mut self.buffer));
            }
        }
    }

    fn push(&mut self, line: ServerLine) {
        line.encode(&mut self.out);
    }

    /// Queues a delivery, encoded once for every line connection it goes to.
    fn push_delivery(&mut self, delivery: &Delivery, following: usize) {
        listener::push_delivery(
            &mut self.out,
            delivery,
            following,
            Encoding::Line,
            |m, out| message_line(m).encode(out),
        );
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        write_out(&mut self.writer, &mut self.out).await
    }
}

fn ok(text: impl Into<String>) -> ServerLine {
    ServerLine::Ok(text.into())
}

fn err(code: &str, text: impl Into<String>) -> ServerLine {
    ServerLine::Err {
        code: code.into(),
        text: text.into(),
    }
}

fn notice(text: impl Into<String>) -> ServerLine {
    ServerLine::Notice(text.into())
}

/// The one-word code of a core error.
fn core_error(e: CoreError) -> ServerLine {
    if e.kind() == ErrorKind::Internal {
        tracing::error!(error = %e, "internal error");
        return err("internal", "internal error; the server log has details");
    }
    err(e.kind().code(), e.to_string())
}

fn closed_line(why: Closed) -> ServerLine {
    err(why.kind().code(), why.to_string())
}

/// A delivered message as a line.
pub fn message_line(m: &Message) -> ServerLine {
    match &m.to {
        Target::Room(room) => ServerLine::Room {
            room: room.clone(),
            from: m.from.clone(),
            text: m.body.clone(),
        },
        Target::User(_) => ServerLine::Direct {
            from: m.from.clone(),
            text: m.body.clone(),
        },
    }
}

/// One logged-in (or not yet) line-protocol session.
struct Session {
    core: Core,
    conn: Connection,
    who: Option<Identity>,
    /// When a connection that is not logged in is closed.
    login_by: Option<Instant>,
    /// The connection's sending allowance, if sends are limited.
    pacer: Option<Pacer>,
    inbox: Option<Inbox>,
    /// Speech queued for the store, oldest first. Speech has no reply, so
    /// the connection reads on while it commits; only failures are reported.
    speech: FuturesOrdered<BoxFuture<'static, Result<Sent, CoreError>>>,
}

enum Flow {
    Continue,
    Quit,
}

/// Serves one connection until it quits, drops, or the server stops.
pub async fn serve_connection(
    core: Core,
    accepted: Accepted,
    deadlines: Deadlines,
    mut shutdown: Shutdown,
) {
    let mut session = Session {
        conn: Connection::new(accepted, deadlines),
        who: None,
        login_by: Some(Instant::now() + deadlines.login),
        // The connection's, not the login's: logging in again earns no new burst.
        pacer: core.limits().send_rate.map(Pacer::new),
        inbox: None,
        speech: FuturesOrdered::new(),
        core,
    };
    session.conn.push(notice(format!(
        "welcome to meshtalk on {}: /register NAME PASSWORD, /login NAME PASSWORD, /help",
        session.core.node()
    )));
    if let Err(e) = session.run(&mut shutdown).await {
        tracing::debug!(error = %e, "line connection ended");
    }
    session.end().await;
}

/// Tells a connection the gate turned away why it is being closed.
pub async fn refuse(stream: Stream, why: Refusal) {
    let mut out = Vec::new();
    err("limit", why.text()).encode(&mut out);
    listener::say_and_close(stream, &out).await;
}

impl Session {
    async fn run(&mut self, shutdown: &mut Shutdown) -> std::io::Result<()> {
        loop {
            self.conn.flush().await?;
            tokio::select! {
                line = self.conn.read_line() => {
                    let line = match line {
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                            self.conn.push(err("timeout", format!(
                                "a line must end within {} s of its start; closing",
                                self.conn.deadlines.read.as_secs()
                            )));
                            return self.conn.flush().await;
                        }
                        line => line?,
                    };
                    let flow = match line {
                        None => return Ok(()),
                        // Boxed: a command's state (a login's password check,
                        // a history read) is held only while it runs, not by
                        // every idle connection's task.
                        Some(Ok(line)) => Box::pin(self.handle(&line)).await,
                        Some(Err(LineError::TooLong)) => {
                            self.conn.push(err("too-long", format!(
                                "line is over {} bytes", crate::codec::line::MAX_LINE
                            )));
                            Flow::Continue
                        }
                        Some(Err(LineError::InvalidUtf8)) => {
                            self.conn.push(err("utf8", "line is not valid UTF-8"));
                            Flow::Continue
                        }
                    };
                    if let Flow::Quit = flow {
                        return self.conn.flush().await;
                    }
                }
                Some(said) = self.speech.next(), if !self.speech.is_empty() => {
                    if let Err(e) = said {
                        self.conn.push(core_error(e));
                    }
                }
                delivery = next_delivery(&mut self.inbox) => {
                    match delivery {
                        Ok(message) => self.deliver(message).await?,
                        Err(why) => {
                            self.conn.push(closed_line(why));
                            return self.conn.flush().await;
                        }
                    }
                }
                _ = expires(self.login_by) => {
                    self.conn.push(err("timeout", format!(
                        "not logged in within {} s; closing",
                        self.conn.deadlines.login.as_secs()
                    )));
                    return self.conn.flush().await;
                }
                _ = shutdown.wait() => {
                    self.conn.push(err("unavailable", "the server is shutting down"));
                    return self.conn.flush().await;
                }
            }
        }
    }

    /// Writes a delivery and whatever else is ready, then acknowledges them:
    /// a line written to the socket counts as shown.
    async fn deliver(&mut self, first: Delivery) -> std::io::Result<()> {
        let following = self
            .inbox
            .as_ref()
            .map_or(0, Inbox::ready)
            .min(PUSH_BATCH - 1);
        self.conn.push_delivery(&first, following);
        let mut shown = Vec::with_capacity(1 + following);
        shown.push(first);
        if let Some(inbox) = &mut self.inbox {
            while shown.len() < PUSH_BATCH {
                match inbox.next().now_or_never() {
                    Some(Ok(message)) => {
                        let following = inbox.ready().min(PUSH_BATCH - 1 - shown.len());
                        self.conn.push_delivery(&message, following);
                        shown.push(message);
                    }
                    // A closed stream is reported on the next turn of the loop.
                    _ => break,
                }
            }
        }
        self.conn.flush().await?;
        if let Some(who) = &self.who {
            self.core.ack_shown(who, &shown);
        }
        Ok(())
    }

    /// Logs the connection's session out.
    async fn end(&mut self) {
        self.inbox = None;
        if let Some(who) = self.who.take() {
            let _ = self.core.logout(&who).await;
        }
    }

    /// Waits for speech in flight, reporting failures, until at most
    /// `keep` remain.
    async fn settle_speech(&mut self, keep: usize) {
        while self.speech.len() > keep {
            if let Some(Err(e)) = self.speech.next().await {
                self.conn.push(core_error(e));
            }
        }
    }

    async fn handle(&mut self, line: &str) -> Flow {
        let command = match Command::parse(line) {
            Ok(Some(command)) => command,
            Ok(None) => return Flow::Continue,
            Err(e @ ParseError::Unknown(_)) => {
                self.conn.push(err("unknown", e.to_string()));
                return Flow::Continue;
            }
            Err(e @ ParseError::Usage(_)) => {
                self.conn.push(err("usage", e.to_string()));
                return Flow::Continue;
            }
        };
        // A reply must not overtake the outcome of earlier speech.
        if !matches!(command, Command::Say(_)) {
            self.settle_speech(0).await;
        }
        let Some(who) = self.who.clone() else {
            return self.handle_anonymous(command).await;
        };
        match self.handle_logged_in(&who, command).await {
            Ok(flow) => flow,
            Err(e) => {
                self.conn.push(core_error(e));
                Flow::Continue
            }
        }
    }

    async fn handle_anonymous(&mut self, command: Command) -> Flow {
        match command {
            Command::Help => self.help(),
            Command::Quit => {
                self.conn.push(ok("bye"));
                return Flow::Quit;
            }
            Command::Register { name, password } => {
                let from = Some(self.conn.peer);
                match self.core.register(&name, &password, from).await {
                    Ok(name) => self
                        .conn
                        .push(ok(format!("registered {name}: now /login {name} PASSWORD"))),
                    Err(e) => self.conn.push(core_error(e)),
                }
            }
            Command::Login { name, password } => match self.login(&name, &password).await {
                Ok(name) => self
                    .conn
                    .push(ok(format!("logged in as {name}; you are in #lobby"))),
                Err(e) => self.conn.push(core_error(e)),
            },
            _ => self
                .conn
                .push(err("auth", "log in first: /login NAME PASSWORD")),
        }
        Flow::Continue
    }

    async fn login(&mut self, name: &str, password: &str) -> Result<String, CoreError> {
        let from = Some(self.conn.peer);
        let (login, inbox) = self.core.login_attached(name, password, from).await?;
        self.inbox = Some(inbox);
        self.login_by = None;
        let name = login.identity.name.clone();
        self.who = Some(login.identity);
        Ok(name)
    }

    fn help(&mut self) {
        for line in HELP {
            self.conn.push(notice(*line));
        }
        self.conn.push(ok("help"));
    }

    /// Waits for the session's turn to send. Input is not read meanwhile:
    /// that is the backpressure a fast sender feels. A session that floods
    /// is told why and closed.
    async fn take_turn(&mut self) -> Flow {
        let Some(pacer) = &mut self.pacer else {
            return Flow::Continue;
        };
        match pacer.admit(std::time::Instant::now()) {
            Pace::Go => Flow::Continue,
            Pace::Wait(wait) => {
                tokio::time::sleep(wait).await;
                Flow::Continue
            }
            Pace::Flood { retry_after } => {
                self.settle_speech(0).await;
                self.conn.push(err(
                    "flood",
                    format!(
                        "sending far faster than allowed; closing. Reconnect in {} s",
                        retry_after.as_secs().max(1)
                    ),
                ));
                Flow::Quit
            }
        }
    }

    async fn handle_logged_in(
        &mut self,
        who: &Identity,
        command: Command,
    ) -> Result<Flow, CoreError> {
        let core = self.core.clone();
        if matches!(command, Command::Say(_) | Command::Tell { .. })
            && let Flow::Quit = self.take_turn().await
        {
            return Ok(Flow::Quit);
        }
        match command {
            Command::Say(text) => {
                // Speech succeeds silently: the speaker gets no echo.
                self.settle_speech(PIPELINE - 1).await;
                let room = Target::Room(core.current_room(who));
                let said = core.send(who, &room, &text, None);
                self.speech.push_back(said.boxed());
            }
            Command::Help => self.help(),
            Command::Register { .. } | Command::Login { .. } => {
                self.conn.push(err(
                    "state",
                    format!("already logged in as {}: /logout first", who.name),
                ));
            }
            Command::Logout => {
                self.inbox = None;
                self.who = None;
                self.login_by = Some(Instant::now() + self.conn.deadlines.login);
                core.logout(who).await?;
                self.conn.push(ok("logged out"));
            }
            Command::DeleteAccount { password } => {
                core.delete_account(who, &password).await?;
                self.inbox = None;
                self.who = None;
                self.login_by = Some(Instant::now() + self.conn.deadlines.login);
                self.conn.push(ok("account deleted"));
            }
            Command::Users(pattern) => {
                let users = core.list_users(&pattern)?;
                for u in &users {
                    let state = if u.online { "online" } else { "offline" };
                    self.conn
                        .push(notice(format!("{} {state} {}", u.name, u.node)));
                }
                self.conn.push(ok(format!("{} users", users.len())));
            }
            Command::Who => {
                let who = core.who().await;
                for u in &who.answers {
                    self.conn.push(notice(format!("{} {}", u.name, u.node)));
                }
                if !who.missing.is_empty() {
                    self.conn
                        .push(notice(format!("no answer from {}", who.missing.join(", "))));
                }
                self.conn.push(ok(format!("{} online", who.answers.len())));
            }
            Command::Tell { to, text } => {
                let sent = core
                    .send(who, &Target::User(to.clone()), &text, None)
                    .await?;
                self.conn.push(ok(format!("sent to {to} ({})", sent.id)));
            }
            Command::Join(room) => {
                let (room, _) = core.join_room(who, &room).await?;
                self.conn.push(ok(format!("joined #{room}")));
            }
            Command::Leave(room) => {
                let left = core.leave_room(who, &room).await?;
                let bare = room.trim_start_matches('#');
                self.conn.push(ok(if left {
                    format!("left #{bare}; you are in #{}", core.current_room(who))
                } else {
                    format!("you were not in #{bare}")
                }));
            }
            Command::Rooms => {
                let rooms = core.list_rooms(who);
                for r in &rooms {
                    let mark = if r.joined { " (joined)" } else { "" };
                    self.conn
                        .push(notice(format!("#{} {} members{mark}", r.name, r.members)));
                }
                self.conn.push(ok(format!("{} rooms", rooms.len())));
            }
            Command::History(n) => {
                let messages = core
                    .history_reply(who, &Target::Room(core.current_room(who)), 0, n, true)
                    .await?;
                for m in &messages {
                    self.conn.push(message_line(m));
                }
                self.conn.push(ok(format!("{} lines", messages.len())));
            }
            Command::Stats { mesh } => {
                let (s, missing) = if mesh {
                    core.mesh_stats().await?
                } else {
                    (core.stats().await?, Vec::new())
                };
                for line in [
                    format!("node {}", s.node),
                    format!("messages {}", s.messages),
                    format!("accounts {}", s.accounts),
                    format!("sessions {}", s.sessions_online),
                    format!("rooms {}", s.rooms),
                    format!("uptime {}s", s.uptime_secs),
                ] {
                    self.conn.push(notice(line));
                }
                if !missing.is_empty() {
                    self.conn
                        .push(notice(format!("no answer from {}", missing.join(", "))));
                }
                self.conn.push(ok("stats"));
            }
            Command::Quit => {
                self.conn.push(ok("bye"));
                return Ok(Flow::Quit);
            }
            Command::Peers => {
                let peers = core.peers(who)?;
                for p in &peers {
                    let way = if p.outbound { "outbound" } else { "inbound" };
                    self.conn
                        .push(notice(format!("{} {} {way}", p.node, p.address)));
                }
                self.conn.push(ok(format!("{} peers", peers.len())));
            }
            Command::Topology => {
                let topology = core.topology(who)?;
                for node in &topology.nodes {
                    self.conn.push(notice(format!("node {node}")));
                }
                for (a, b) in &topology.links {
                    self.conn.push(notice(format!("link {a} {b}")));
                }
                self.conn.push(ok(format!(
                    "{} nodes, {} links",
                    topology.nodes.len(),
                    topology.links.len()
                )));
            }
            Command::PeerListen { host, port } => {
                let address = core.peer_listen(who, &host, port).await?;
                self.conn
                    .push(ok(format!("listening for peers on {address}")));
            }
            Command::PeerConnect { host, port } => {
                let node = core.peer_connect(who, &host, port).await?;
                self.conn.push(ok(format!("linked to {node}")));
            }
            Command::PeerKill(node) => {
                core.peer_kill(who, &node)?;
                self.conn.push(ok(format!("dropped {node}")));
            }
        }
        Ok(Flow::Continue)
    }
}
