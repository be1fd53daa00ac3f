//! What a user types into `meshtalk chat`: the line protocol's commands.

/// One line of input, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Plain text: said in the current room. `//text` says `/text`.
    Say(String),
    Tell {
        to: String,
        text: String,
    },
    Join(String),
    Leave(String),
    Rooms,
    Users(String),
    History(u32),
    Who,
    Stats,
    Help,
    Quit,
}

/// Lines of `/history` when no count is given.
pub const DEFAULT_HISTORY: u32 = 20;

pub const HELP: &[&str] = &[
    "text             say text in the current room (//text says /text)",
    "/tell NAME TEXT  send a direct message",
    "/join ROOM       join a room and make it current",
    "/leave ROOM      leave a room",
    "/rooms           list rooms",
    "/users [PATTERN] list users matching a glob such as ev*",
    "/history [N]     the current room's last N lines",
    "/who             who is online",
    "/stats           server counters",
    "/help            this list",
    "/quit            leave",
];

/// Parses one input line. An empty line is `None`.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    if let Some(text) = line.strip_prefix("//") {
        return Ok(Some(Command::Say(format!("/{text}"))));
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Some(Command::Say(line.to_owned())));
    };
    let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let args = args.trim();
    let one = |what: &str| -> Result<String, String> {
        match args.split_whitespace().collect::<Vec<_>>()[..] {
            [arg] => Ok(arg.to_owned()),
            _ => Err(format!("usage: /{verb} {what}")),
        }
    };
    let command = match verb.to_ascii_lowercase().as_str() {
        "tell" | "msg" => match args.split_once(' ') {
            Some((to, text)) if !text.trim().is_empty() => Command::Tell {
                to: to.to_owned(),
                text: text.trim_start().to_owned(),
            },
            _ => return Err("usage: /tell NAME TEXT".into()),
        },
        "join" => Command::Join(one("ROOM")?),
        "leave" => Command::Leave(one("ROOM")?),
        "rooms" => Command::Rooms,
        "users" => Command::Users(if args.is_empty() {
            "*".into()
        } else {
            one("[PATTERN]")?
        }),
        "history" => Command::History(if args.is_empty() {
            DEFAULT_HISTORY
        } else {
            args.parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or("usage: /history [N], N from 1 to 1000")?
        }),
        "who" => Command::Who,
        "stats" => Command::Stats,
        "help" => Command::Help,
        "quit" | "exit" => Command::Quit,
        other => return Err(format!("unknown command /{other}: try /help")),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_commands() {
        assert_eq!(parse("hi all"), Ok(Some(Command::Say("hi all".into()))));
        assert_eq!(parse("//me"), Ok(Some(Command::Say("/me".into()))));
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(
            parse("/tell bob lunch? now"),
            Ok(Some(Command::Tell {
                to: "bob".into(),
                text: "lunch? now".into()
            }))
        );
        assert!(parse("/tell bob").is_err());
        assert_eq!(
            parse("/join #rust"),
            Ok(Some(Command::Join("#rust".into())))
        );
        assert!(parse("/join").is_err());
        assert_eq!(parse("/users"), Ok(Some(Command::Users("*".into()))));
        assert_eq!(parse("/users ev*"), Ok(Some(Command::Users("ev*".into()))));
        assert_eq!(
            parse("/history"),
            Ok(Some(Command::History(DEFAULT_HISTORY)))
        );
        assert_eq!(parse("/history 5"), Ok(Some(Command::History(5))));
        assert!(parse("/history 0").is_err());
        assert!(parse("/history lots").is_err());
        assert_eq!(parse("/QUIT"), Ok(Some(Command::Quit)));
        assert!(parse("/frobnicate").unwrap_err().contains("/frobnicate"));
    }
}
