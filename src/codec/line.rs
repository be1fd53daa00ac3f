//! The line protocol (talker): UTF-8 lines ending CRLF (bare LF accepted).
//!
//! [`LineDecoder`] splits a byte stream into lines and keeps going after a bad
//! one: an over-long line is skipped up to its newline and reported once as
//! [`LineError::TooLong`], invalid UTF-8 as [`LineError::InvalidUtf8`], so the
//! connection stays usable. [`Command`] is what a client says, [`ServerLine`]
//! what a server answers.

use std::fmt;

use bytes::BytesMut;

use crate::model::{ErrorKind, Moderation};

/// Longest line, in bytes, not counting the CRLF.
pub const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    TooLong,
    InvalidUtf8,
}

/// Splits bytes into lines, resynchronising at the next newline after a line
/// that is too long.
#[derive(Debug, Default)]
pub struct LineDecoder {
    /// Bytes already searched for a newline.
    scanned: usize,
    /// Inside a line that is too long: drop bytes up to its newline.
    discarding: bool,
}

impl LineDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next complete line in `buf`, consuming it; `None` if more bytes
    /// are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<String, LineError>> {
        match buf[self.scanned..].iter().position(|b| *b == b'\n') {
            Some(at) => {
                let end = self.scanned + at;
                let line = buf.split_to(end + 1);
                self.scanned = 0;
                if std::mem::take(&mut self.discarding) {
                    return Some(Err(LineError::TooLong));
                }
                Some(Self::finish(&line[..end]))
            }
            None => {
                // A full line plus its CR fits in MAX_LINE + 1 bytes.
                if buf.len() > MAX_LINE + 1 {
                    self.discarding = true;
                    buf.clear();
                }
                self.scanned = buf.len();
                None
            }
        }
    }

    /// At end of input: a last line without a newline still counts.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Option<Result<String, LineError>> {
        if let Some(line) = self.decode(buf) {
            return Some(line);
        }
        self.scanned = 0;
        if std::mem::take(&mut self.discarding) {
            buf.clear();
            return Some(Err(LineError::TooLong));
        }
        if buf.is_empty() {
            return None;
        }
        let line = buf.split_to(buf.len());
        Some(Self::finish(&line))
    }

    fn finish(line: &[u8]) -> Result<String, LineError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            return Err(LineError::TooLong);
        }
        std::str::from_utf8(line)
            .map(str::to_owned)
            .map_err(|_| LineError::InvalidUtf8)
    }
}

/// One command line from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Text said in the current room. `//text` says `/text`.
    Say(String),
    Help,
    Register {
        name: String,
        password: String,
    },
    Login {
        name: String,
        password: String,
    },
    Logout,
    DeleteAccount {
        password: String,
    },
    Users(String),
    Who,
    Tell {
        to: String,
        text: String,
    },
    Join(String),
    Leave(String),
    Rooms,
    History(u32),
    /// This node's figures, or with `mesh` the totals over every node.
    Stats {
        mesh: bool,
    },
    Quit,
    PeerListen {
        host: String,
        port: u16,
    },
    PeerConnect {
        host: String,
        port: u16,
    },
    PeerKill(String),
    Peers,
    Topology,
    /// `/kick NAME [REASON]`, `/suspend NAME [REASON]`, `/restore NAME`.
    Moderate {
        action: Moderation,
        name: String,
        reason: String,
    },
}

/// Lines of `/history` when no count is given.
pub const DEFAULT_HISTORY: u32 = 20;
/// Most lines `/history` returns.
pub const MAX_HISTORY_LINES: u32 = 1000;

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No such command.
    Unknown(String),
    /// The command's arguments are wrong; says how to use it.
    Usage(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Unknown(verb) => write!(f, "no such command /{verb}: try /help"),
            ParseError::Usage(usage) => write!(f, "usage: {usage}"),
        }
    }
}

pub const HELP: &[&str] = &[
    "TEXT                    say TEXT in the current room (//TEXT says /TEXT)",
    "/register NAME PASSWORD create an account",
    "/login NAME PASSWORD    log in",
    "/logout                 log out",
    "/delete-account PASSWORD delete your account",
    "/tell NAME TEXT         send a direct message (NAME@NODE for one node's NAME)",
    "/join ROOM              join a room and make it current",
    "/leave ROOM             leave a room",
    "/rooms                  list rooms",
    "/users [PATTERN]        list users matching a glob such as ev*",
    "/history [N]            the current room's last N lines",
    "/who                    who is online, on every node",
    "/stats [mesh]           this node's counters, or totals over the mesh",
    "/quit                   leave",
    "operators: /peer-listen HOST PORT, /peer-connect HOST PORT, /peer-kill NODE, /peers, /topology",
    "operators: /kick NAME [REASON], /suspend NAME [REASON], /restore NAME",
];

impl Command {
    /// Parses one line (without its line ending). An empty line is `None`.
    pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        if let Some(text) = line.strip_prefix("//") {
            return Ok(Some(Command::Say(format!("/{text}"))));
        }
        let Some(rest) = line.strip_prefix('/') else {
            return Ok(Some(Command::Say(line.to_owned())));
        };
        let (verb, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        slash_command(&verb.to_ascii_lowercase(), tail).map(Some)
    }

    /// The line that says this command (without the line ending).
    pub fn to_line(&self) -> String {
        use Command as C;
        match self {
            C::Say(text) if text.starts_with('/') => format!("/{text}"),
            C::Say(text) => text.clone(),
            C::Help => "/help".into(),
            C::Register { name, password } => format!("/register {name} {password}"),
            C::Login { name, password } => format!("/login {name} {password}"),
            C::Logout => "/logout".into(),
            C::DeleteAccount { password } => format!("/delete-account {password}"),
            C::Users(pattern) => format!("/users {pattern}"),
            C::Who => "/who".into(),
            C::Tell { to, text } => format!("/tell {to} {text}"),
            C::Join(room) => format!("/join {room}"),
            C::Leave(room) => format!("/leave {room}"),
            C::Rooms => "/rooms".into(),
            C::History(n) => format!("/history {n}"),
            C::Stats { mesh: false } => "/stats".into(),
            C::Stats { mesh: true } => "/stats mesh".into(),
            C::Quit => "/quit".into(),
            C::PeerListen { host, port } => format!("/peer-listen {host} {port}"),
            C::PeerConnect { host, port } => format!("/peer-connect {host} {port}"),
            C::PeerKill(node) => format!("/peer-kill {node}"),
            C::Peers => "/peers".into(),
            C::Topology => "/topology".into(),
            C::Moderate {
                action,
                name,
                reason,
            } if reason.is_empty() => {
                format!("/{} {name}", action.name())
            }
            C::Moderate {
                action,
                name,
                reason,
            } => format!("/{} {name} {reason}", action.name()),
        }
    }
}

/// The one-word codes of `-ERR` lines: the protocol's one table of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    /// What the core refused, spelled as [`ErrorKind::code`] spells it.
    Core(ErrorKind),
    /// A line over [`MAX_LINE`] bytes.
    TooLong,
    /// A line that is not UTF-8.
    Utf8,
    /// A command nobody knows.
    Unknown,
    /// A known command with the wrong arguments.
    Usage,
    /// A command that does not fit the connection's state (log in twice).
    State,
    /// A line or a log-in that did not come in time.
    Timeout,
    /// Sending far faster than allowed.
    Flood,
}

impl ErrCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrCode::Core(kind) => kind.code(),
            ErrCode::TooLong => "too-long",
            ErrCode::Utf8 => "utf8",
            ErrCode::Unknown => "unknown",
            ErrCode::Usage => "usage",
            ErrCode::State => "state",
            ErrCode::Timeout => "timeout",
            ErrCode::Flood => "flood",
        }
    }
}

/// One line from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLine {
    /// `+OK TEXT`: success; ends any multi-line reply.
    Ok(String),
    /// `-ERR CODE TEXT`: failure; CODE is one word.
    Err { code: String, text: String },
    /// `#ROOM FROM: TEXT`: room speech.
    Room {
        room: String,
        from: String,
        text: String,
    },
    /// `@FROM: TEXT`: a direct message.
    Direct { from: String, text: String },
    /// `* TEXT`: a notice, or one line of a multi-line reply.
    Notice(String),
}

impl fmt::Display for ServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerLine::Ok(text) if text.is_empty() => f.write_str("+OK"),
            ServerLine::Ok(text) => write!(f, "+OK {text}"),
            ServerLine::Err { code, text } => write!(f, "-ERR {code} {text}"),
            ServerLine::Room { room, from, text } => write!(f, "#{room} {from}: {text}"),
            ServerLine::Direct { from, text } => write!(f, "@{from}: {text}"),
            ServerLine::Notice(text) => write!(f, "* {text}"),
        }
    }
}

impl ServerLine {
    /// `-ERR CODE TEXT`. A text that starts with its code's word (`invalid
    /// room: …`, `usage: …`) does not say it twice.
    pub fn error(code: ErrCode, text: impl Into<String>) -> ServerLine {
        let code = code.as_str();
        let text = text.into();
        let text = match text
            .strip_prefix(code)
            .and_then(|rest| rest.strip_prefix(": ").or_else(|| rest.strip_prefix(' ')))
        {
            Some(rest) if !rest.is_empty() => rest.to_owned(),
            _ => text,
        };
        ServerLine::Err {
            code: code.to_owned(),
            text,
        }
    }

    /// Reads a server line (without its line ending); `None` if it has no
    /// known marker.
    pub fn parse(line: &str) -> Option<ServerLine> {
        if line == "+OK" {
            return Some(ServerLine::Ok(String::new()));
        }
        if let Some(text) = line.strip_prefix("+OK ") {
            return Some(ServerLine::Ok(text.into()));
        }
        if let Some(rest) = line.strip_prefix("-ERR ") {
            let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
            return Some(ServerLine::Err {
                code: code.into(),
                text: text.into(),
            });
        }
        if let Some(text) = line.strip_prefix("* ") {
            return Some(ServerLine::Notice(text.into()));
        }
        if let Some(rest) = line.strip_prefix('#') {
            let (room, rest) = rest.split_once(' ')?;
            let (from, text) = rest.split_once(": ")?;
            return Some(ServerLine::Room {
                room: room.into(),
                from: from.into(),
                text: text.into(),
            });
        }
        if let Some(rest) = line.strip_prefix('@') {
            let (from, text) = rest.split_once(": ")?;
            return Some(ServerLine::Direct {
                from: from.into(),
                text: text.into(),
            });
        }
        None
    }

    /// The line with its CRLF, as sent.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "{self}\r\n");
    }
}

/// The command a `/VERB` line names. One table of every command and its
/// usage, read top to bottom: split, it would no longer show at a glance
/// which verbs exist and what each takes.
fn slash_command(verb: &str, tail: &str) -> Result<Command, ParseError> {
    let words: Vec<&str> = tail.split_whitespace().collect();
    use Command as C;
    use ParseError::Usage;
    let command = match (verb, &words[..]) {
        ("help", []) => C::Help,
        ("register", [name, password]) => C::Register {
            name: (*name).into(),
            password: (*password).into(),
        },
        ("register", _) => return Err(Usage("/register NAME PASSWORD")),
        ("login", [name, password]) => C::Login {
            name: (*name).into(),
            password: (*password).into(),
        },
        ("login", _) => return Err(Usage("/login NAME PASSWORD")),
        ("logout", []) => C::Logout,
        ("delete-account", [password]) => C::DeleteAccount {
            password: (*password).into(),
        },
        ("delete-account", _) => return Err(Usage("/delete-account PASSWORD")),
        ("users", []) => C::Users("*".into()),
        ("users", [pattern]) => C::Users((*pattern).into()),
        ("users", _) => return Err(Usage("/users [PATTERN]")),
        ("who", []) => C::Who,
        ("tell" | "msg", [to, _, ..]) => C::Tell {
            to: (*to).into(),
            text: tail.trim_start()[to.len()..].trim_start().into(),
        },
        ("tell" | "msg", _) => return Err(Usage("/tell NAME TEXT")),
        ("join", [room]) => C::Join((*room).into()),
        ("join", _) => return Err(Usage("/join ROOM")),
        ("leave", [room]) => C::Leave((*room).into()),
        ("leave", _) => return Err(Usage("/leave ROOM")),
        ("rooms", []) => C::Rooms,
        ("history", []) => C::History(DEFAULT_HISTORY),
        ("history", [n]) => C::History(
            n.parse()
                .ok()
                .filter(|n| (1..=MAX_HISTORY_LINES).contains(n))
                .ok_or(Usage("/history [N], N from 1 to 1000"))?,
        ),
        ("history", _) => return Err(Usage("/history [N]")),
        ("stats", []) => C::Stats { mesh: false },
        ("stats", [scope]) if scope.eq_ignore_ascii_case("mesh") => C::Stats { mesh: true },
        ("stats", _) => return Err(Usage("/stats [mesh]")),
        ("quit", []) => C::Quit,
        ("peer-listen", [host, port]) => C::PeerListen {
            host: (*host).into(),
            port: port.parse().map_err(|_| Usage("/peer-listen HOST PORT"))?,
        },
        ("peer-listen", _) => return Err(Usage("/peer-listen HOST PORT")),
        ("peer-connect", [host, port]) => C::PeerConnect {
            host: (*host).into(),
            port: port.parse().map_err(|_| Usage("/peer-connect HOST PORT"))?,
        },
        ("peer-connect", _) => return Err(Usage("/peer-connect HOST PORT")),
        ("peer-kill", [node]) => C::PeerKill((*node).into()),
        ("peer-kill", _) => return Err(Usage("/peer-kill NODE")),
        ("peers", []) => C::Peers,
        ("topology", []) => C::Topology,
        ("kick" | "suspend", [name, ..]) => C::Moderate {
            action: Moderation::from_name(verb).ok_or(ParseError::Unknown(verb.to_owned()))?,
            name: (*name).into(),
            reason: tail.trim_start()[name.len()..].trim().into(),
        },
        ("kick", _) => return Err(Usage("/kick NAME [REASON]")),
        ("suspend", _) => return Err(Usage("/suspend NAME [REASON]")),
        ("restore", [name]) => C::Moderate {
            action: Moderation::Restore,
            name: (*name).into(),
            reason: String::new(),
        },
        ("restore", _) => return Err(Usage("/restore NAME")),
        ("help" | "logout" | "who" | "rooms" | "quit" | "peers" | "topology", _) => {
            return Err(Usage("this command takes no arguments"));
        }
        (other, _) => return Err(ParseError::Unknown(other.to_owned())),
    };
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Result<String, LineError>> {
        let mut decoder = LineDecoder::new();
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        while let Some(line) = decoder.decode(&mut buf) {
            out.push(line);
        }
        out.extend(decoder.decode_eof(&mut buf));
        out
    }

    #[test]
    fn crlf_lf_long_lines_and_bad_utf8() {
        assert_eq!(
            lines(b"one\r\ntwo\nthree"),
            [Ok("one".into()), Ok("two".into()), Ok("three".into())]
        );
        let mut long = vec![b'x'; MAX_LINE + 1];
        long.extend_from_slice(b"\r\nafter\r\n");
        assert_eq!(lines(&long), [Err(LineError::TooLong), Ok("after".into())]);
        let mut exact = vec![b'x'; MAX_LINE];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(lines(&exact), [Ok("x".repeat(MAX_LINE))]);
        assert_eq!(
            lines(b"\xff\xfe\r\nok\r\n"),
            [Err(LineError::InvalidUtf8), Ok("ok".into())]
        );
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            Command::parse("hi all"),
            Ok(Some(Command::Say("hi all".into())))
        );
        assert_eq!(Command::parse("//me"), Ok(Some(Command::Say("/me".into()))));
        assert_eq!(Command::parse("   "), Ok(None));
        assert_eq!(
            Command::parse("/tell bob  lunch? now"),
            Ok(Some(Command::Tell {
                to: "bob".into(),
                text: "lunch? now".into()
            }))
        );
        assert_eq!(
            Command::parse("/tell bob"),
            Err(ParseError::Usage("/tell NAME TEXT"))
        );
        assert_eq!(
            Command::parse("/users"),
            Ok(Some(Command::Users("*".into())))
        );
        assert_eq!(Command::parse("/history 5"), Ok(Some(Command::History(5))));
        assert!(Command::parse("/history 0").is_err());
        assert_eq!(Command::parse("/QUIT"), Ok(Some(Command::Quit)));
        assert_eq!(
            Command::parse("/frob x"),
            Err(ParseError::Unknown("frob".into()))
        );
        assert_eq!(
            Command::parse("/peer-listen 127.0.0.1 9999"),
            Ok(Some(Command::PeerListen {
                host: "127.0.0.1".into(),
                port: 9999
            }))
        );
    }

    #[test]
    fn server_lines_parse() {
        for line in [
            "+OK",
            "+OK joined #rust",
            "-ERR auth log in first: /login NAME PASSWORD",
            "#lobby alice: hi all",
            "@bob: lunch?",
            "* bob joined #lobby",
        ] {
            assert_eq!(ServerLine::parse(line).unwrap().to_string(), line);
        }
        assert_eq!(ServerLine::parse("garbage"), None);
    }
}
