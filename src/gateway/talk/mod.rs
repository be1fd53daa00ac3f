//! The line protocol (talker): CRLF text lines, `/`-commands, markers on
//! every server line. `nc localhost 8889` is a client. See
//! `docs/line-protocol.md`.
//!
//! One task per connection reads lines and writes replies and deliveries, so
//! a reply is never split by a delivery. A connection is one session: it logs
//! in, gets its own live stream from the core, and logs out when it closes.

mod connection;
mod replies;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};

use super::listener::{
    self, Accepted, Deadlines, PUSH_BATCH, Refusal, Shutdown, Stream, expires, next_delivery,
    take_ready,
};
use super::seat::Seat;
use crate::codec::line::{Command, ErrCode, HELP, LineError, ParseError, ServerLine};
use crate::core::pace::Pace;
use crate::core::{Core, CoreError, Delivery, ErrorKind, Identity, Inbox, Sent, Target};
use connection::Connection;
pub use replies::message_line;
use replies::{closed_line, core_error, err, notice, ok};

/// Speech lines one connection may have waiting for their commit.
const PIPELINE: usize = 64;

/// One logged-in (or not yet) line-protocol session.
struct Session {
    core: Core,
    conn: Connection,
    seat: Seat,
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
        seat: Seat::new(&core, deadlines.login),
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
    err(ErrCode::Core(ErrorKind::ResourceExhausted), why.text()).encode(&mut out);
    listener::say_and_close(stream, &out).await;
}

impl Session {
    async fn run(&mut self, shutdown: &mut Shutdown) -> std::io::Result<()> {
        loop {
            self.conn.flush().await?;
            let flow = tokio::select! {
                line = self.conn.read_line() => self.on_line(line).await?,
                Some(said) = self.speech.next(), if !self.speech.is_empty() => {
                    if let Err(e) = said {
                        self.conn.push(core_error(e));
                    }
                    Flow::Continue
                }
                delivery = next_delivery(&mut self.seat.inbox) => match delivery {
                    Ok(message) => {
                        self.deliver(message).await?;
                        Flow::Continue
                    }
                    Err(why) => {
                        self.conn.push(closed_line(why));
                        Flow::Quit
                    }
                },
                _ = expires(self.seat.login_by) => {
                    self.conn.push(err(ErrCode::Timeout, format!(
                        "not logged in within {} s; closing",
                        self.conn.deadlines.login.as_secs()
                    )));
                    Flow::Quit
                }
                _ = shutdown.wait() => {
                    self.conn.push(err(
                        ErrCode::Core(ErrorKind::Unavailable),
                        "the server is shutting down",
                    ));
                    Flow::Quit
                }
            };
            if let Flow::Quit = flow {
                return self.conn.flush().await;
            }
        }
    }

    /// Handles what reading a line gave; an error ends the connection.
    async fn on_line(
        &mut self,
        line: std::io::Result<Option<Result<String, LineError>>>,
    ) -> std::io::Result<Flow> {
        Ok(match line {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.conn.push(err(
                    ErrCode::Timeout,
                    format!(
                        "a line must end within {} s of its start; closing",
                        self.conn.deadlines.read.as_secs()
                    ),
                ));
                Flow::Quit
            }
            Err(e) => return Err(e),
            Ok(None) => Flow::Quit,
            // Boxed: a command's state (a login's password check, a history
            // read) is held only while it runs, not by every idle
            // connection's task.
            Ok(Some(Ok(line))) => Box::pin(self.handle(&line)).await,
            Ok(Some(Err(LineError::TooLong))) => {
                let max = crate::codec::line::MAX_LINE;
                self.conn
                    .push(err(ErrCode::TooLong, format!("line is over {max} bytes")));
                Flow::Continue
            }
            Ok(Some(Err(LineError::InvalidUtf8))) => {
                self.conn
                    .push(err(ErrCode::Utf8, "line is not valid UTF-8"));
                Flow::Continue
            }
        })
    }

    /// Writes a delivery and whatever else is ready, then acknowledges them:
    /// a line written to the socket counts as shown.
    async fn deliver(&mut self, first: Delivery) -> std::io::Result<()> {
        let ready = self.seat.inbox.as_ref().map_or(0, Inbox::ready);
        let mut shown = Vec::with_capacity(1 + ready.min(PUSH_BATCH - 1));
        let conn = &mut self.conn;
        take_ready(&mut self.seat.inbox, first, |message, following| {
            conn.push_delivery(&message, following);
            shown.push(message);
        });
        self.conn.flush().await?;
        if let Some(who) = &self.seat.who {
            self.core.ack_shown(who, &shown);
        }
        Ok(())
    }

    /// Logs the connection's session out.
    async fn end(&mut self) {
        self.seat.close().await;
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
                self.conn.push(err(ErrCode::Unknown, e.to_string()));
                return Flow::Continue;
            }
            Err(e @ ParseError::Usage(_)) => {
                self.conn.push(err(ErrCode::Usage, e.to_string()));
                return Flow::Continue;
            }
        };
        // A reply must not overtake the outcome of earlier speech.
        if !matches!(command, Command::Say(_)) {
            self.settle_speech(0).await;
        }
        let Some(who) = self.seat.who.clone() else {
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
            _ => self.conn.push(err(
                ErrCode::Core(ErrorKind::Unauthenticated),
                "log in first: /login NAME PASSWORD",
            )),
        }
        Flow::Continue
    }

    async fn login(&mut self, name: &str, password: &str) -> Result<String, CoreError> {
        self.seat.log_in(name, password, self.conn.peer).await
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
        match self.seat.pace() {
            Pace::Go => Flow::Continue,
            Pace::Wait(wait) => {
                tokio::time::sleep(wait).await;
                Flow::Continue
            }
            Pace::Flood { retry_after } => {
                self.settle_speech(0).await;
                self.conn.push(err(
                    ErrCode::Flood,
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
        match command {
            Command::Say(text) => return Ok(self.say(who, text).await),
            Command::Tell { to, text } => return self.tell(who, to, text).await,
            Command::Quit => {
                self.conn.push(ok("bye"));
                return Ok(Flow::Quit);
            }
            Command::Logout => {
                self.seat.vacate();
                core.logout(who).await?;
                self.conn.push(ok("logged out"));
            }
            Command::DeleteAccount { password } => {
                core.delete_account(who, &password).await?;
                self.seat.vacate();
                self.conn.push(ok("account deleted"));
            }
            Command::Help => self.help(),
            Command::Register { .. } | Command::Login { .. } => self.conn.push(err(
                ErrCode::State,
                format!("already logged in as {}: /logout first", who.name),
            )),
            Command::Join(room) => self.conn.push(replies::join(&core, who, &room).await?),
            Command::Leave(room) => self.conn.push(replies::leave(&core, who, &room).await?),
            Command::Users(pattern) => self.reply(replies::users(&core, &pattern)?),
            Command::Who => self.reply(replies::who(&core).await),
            Command::Rooms => self.reply(replies::rooms(&core, who)),
            Command::History(n) => self.reply(replies::history(&core, who, n).await?),
            Command::Stats { mesh } => self.reply(replies::stats(&core, mesh).await?),
            Command::Peers => self.reply(replies::peers(&core, who)?),
            Command::Topology => self.reply(replies::topology(&core, who)?),
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
            Command::Moderate {
                action,
                name,
                reason,
            } => {
                let done = core.moderate(who, action, &name, &reason).await?;
                self.conn.push(ok(done.summary(action)));
            }
        }
        Ok(Flow::Continue)
    }

    /// Speech succeeds silently (the speaker gets no echo), and the
    /// connection reads on while it commits.
    async fn say(&mut self, who: &Identity, text: String) -> Flow {
        if let Flow::Quit = self.take_turn().await {
            return Flow::Quit;
        }
        self.settle_speech(PIPELINE - 1).await;
        let room = Target::Room(self.core.current_room(who));
        let said = self.core.send(who, &room, &text, None);
        self.speech.push_back(said.boxed());
        Flow::Continue
    }

    async fn tell(&mut self, who: &Identity, to: String, text: String) -> Result<Flow, CoreError> {
        if let Flow::Quit = self.take_turn().await {
            return Ok(Flow::Quit);
        }
        let sent = self
            .core
            .send(who, &Target::User(to.clone()), &text, None)
            .await?;
        self.conn.push(ok(format!("sent to {to} ({})", sent.id)));
        Ok(Flow::Continue)
    }

    fn reply(&mut self, lines: Vec<ServerLine>) {
        for line in lines {
            self.conn.push(line);
        }
    }
}
