//! What the line protocol answers: the server lines of each reply, made from
//! what the core returns. A multi-line reply is `*` lines ended by `+OK`.

use crate::codec::line::{ErrCode, ServerLine};
use crate::core::{Closed, Core, CoreError, ErrorKind, Gathered, Identity, Message, Target};

pub(super) fn ok(text: impl Into<String>) -> ServerLine {
    ServerLine::Ok(text.into())
}

pub(super) fn err(code: ErrCode, text: impl Into<String>) -> ServerLine {
    ServerLine::error(code, text)
}

/// `1 user`, `2 users`.
fn counted(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub(super) fn notice(text: impl Into<String>) -> ServerLine {
    ServerLine::Notice(text.into())
}

/// A core error as an `-ERR` line; an internal one is logged, not shown.
pub(super) fn core_error(e: CoreError) -> ServerLine {
    if e.kind() == ErrorKind::Internal {
        tracing::error!(error = %e, "internal error");
        return err(
            ErrCode::Core(ErrorKind::Internal),
            "internal error; the server log has details",
        );
    }
    err(ErrCode::Core(e.kind()), e.to_string())
}

/// Why the server ended the connection's live stream.
pub(super) fn closed_line(why: Closed) -> ServerLine {
    err(ErrCode::Core(why.kind()), why.to_string())
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

/// `* LINE` for each line, then `+OK SUMMARY`.
fn listing(lines: impl IntoIterator<Item = String>, summary: String) -> Vec<ServerLine> {
    let mut reply: Vec<ServerLine> = lines.into_iter().map(notice).collect();
    reply.push(ok(summary));
    reply
}

/// The nodes that did not answer a mesh-wide question, if any.
fn silent<T>(gathered: &Gathered<T>) -> Option<String> {
    silent_nodes(&gathered.missing)
}

fn silent_nodes(missing: &[String]) -> Option<String> {
    (!missing.is_empty()).then(|| format!("no answer from {}", missing.join(", ")))
}

pub(super) fn users(core: &Core, pattern: &str) -> Result<Vec<ServerLine>, CoreError> {
    let users = core.list_users(pattern)?;
    let count = users.len();
    let lines = users.into_iter().map(|u| {
        let state = if u.online { "online" } else { "offline" };
        format!("{} {state} {}", u.name, u.node)
    });
    Ok(listing(lines, counted(count, "user")))
}

pub(super) async fn who(core: &Core) -> Vec<ServerLine> {
    let who = core.who().await;
    let lines = who.answers.iter().map(|u| format!("{} {}", u.name, u.node));
    let lines: Vec<String> = lines.chain(silent(&who)).collect();
    listing(lines, format!("{} online", who.answers.len()))
}

pub(super) fn rooms(core: &Core, who: &Identity) -> Vec<ServerLine> {
    let rooms = core.list_rooms(who);
    let lines = rooms.iter().map(|r| {
        let mark = if r.joined { " (joined)" } else { "" };
        format!("#{} {} members{mark}", r.name, r.members)
    });
    listing(lines.collect::<Vec<_>>(), counted(rooms.len(), "room"))
}

pub(super) async fn join(core: &Core, who: &Identity, room: &str) -> Result<ServerLine, CoreError> {
    let (room, _) = core.join_room(who, room).await?;
    Ok(ok(format!("joined #{room}")))
}

pub(super) async fn leave(
    core: &Core,
    who: &Identity,
    room: &str,
) -> Result<ServerLine, CoreError> {
    let left = core.leave_room(who, room).await?;
    let bare = room.trim_start_matches('#');
    Ok(ok(if left {
        format!("left #{bare}; you are in #{}", core.current_room(who))
    } else {
        format!("you were not in #{bare}")
    }))
}

/// The newest `n` lines of the room the session speaks in.
pub(super) async fn history(
    core: &Core,
    who: &Identity,
    n: u32,
) -> Result<Vec<ServerLine>, CoreError> {
    let room = Target::Room(core.current_room(who));
    let messages = core.history_reply(who, &room, 0, n, true).await?;
    let mut reply: Vec<ServerLine> = messages.iter().map(message_line).collect();
    reply.push(ok(counted(messages.len(), "line")));
    Ok(reply)
}

pub(super) async fn stats(core: &Core, mesh: bool) -> Result<Vec<ServerLine>, CoreError> {
    let (s, missing) = if mesh {
        core.mesh_stats().await?
    } else {
        (core.stats().await?, Vec::new())
    };
    let lines = [
        format!("node {}", s.node),
        format!("messages {}", s.messages),
        format!("accounts {}", s.accounts),
        format!("sessions {}", s.sessions_online),
        format!("rooms {}", s.rooms),
        format!("uptime {}s", s.uptime_secs),
    ];
    let lines: Vec<String> = lines.into_iter().chain(silent_nodes(&missing)).collect();
    Ok(listing(lines, "stats".into()))
}

pub(super) fn peers(core: &Core, who: &Identity) -> Result<Vec<ServerLine>, CoreError> {
    let peers = core.peers(who)?;
    let lines = peers.iter().map(|p| {
        let way = if p.outbound { "outbound" } else { "inbound" };
        format!("{} {} {way}", p.node, p.address)
    });
    Ok(listing(
        lines.collect::<Vec<_>>(),
        counted(peers.len(), "peer"),
    ))
}

pub(super) fn topology(core: &Core, who: &Identity) -> Result<Vec<ServerLine>, CoreError> {
    let topology = core.topology(who)?;
    let nodes = topology.nodes.iter().map(|node| format!("node {node}"));
    let links = topology.links.iter().map(|(a, b)| format!("link {a} {b}"));
    let summary = format!(
        "{}, {}",
        counted(topology.nodes.len(), "node"),
        counted(topology.links.len(), "link")
    );
    Ok(listing(nodes.chain(links).collect::<Vec<_>>(), summary))
}
