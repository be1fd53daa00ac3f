//! What the chat client shows for each answer: the lines, made from the
//! server's replies.

use crate::proto;

pub(super) fn left(asked: &str, left: bool) -> String {
    let bare = asked.trim_start_matches('#');
    if left {
        format!("* left #{bare}")
    } else {
        format!("* you were not in #{bare}")
    }
}

pub(super) fn rooms(rooms: &[proto::Room]) -> Vec<String> {
    let line = |r: &proto::Room| {
        let mark = if r.joined { " (joined)" } else { "" };
        format!("* #{} {} members{mark}", r.name, r.members)
    };
    rooms.iter().map(line).collect()
}

pub(super) fn users(pattern: &str, users: &[proto::User]) -> Vec<String> {
    if users.is_empty() {
        return vec![format!("* nobody matches {pattern}")];
    }
    let line = |u: &proto::User| {
        let state = if u.online { "online" } else { "offline" };
        format!("* {} {state} on {}", u.name, u.node)
    };
    users.iter().map(line).collect()
}

/// `* no answer from …` when some nodes did not answer.
fn silent(missing: &[String]) -> Option<String> {
    (!missing.is_empty()).then(|| format!("* no answer from {}", missing.join(", ")))
}

pub(super) fn who(who: &proto::WhoResponse) -> Vec<String> {
    let online = who
        .users
        .iter()
        .map(|u| format!("* {} on {}", u.name, u.node));
    online.chain(silent(&who.missing_nodes)).collect()
}

pub(super) fn stats(mesh: bool, s: &proto::Stats) -> Vec<String> {
    let scope = if mesh {
        s.node.clone()
    } else {
        format!("node {}", s.node)
    };
    let figures = format!(
        "* {scope}: {} messages, {} accounts, {} sessions online, {} rooms, up {}s",
        s.messages, s.accounts, s.sessions_online, s.rooms, s.uptime_secs
    );
    std::iter::once(figures)
        .chain(silent(&s.missing_nodes))
        .collect()
}

pub(super) fn peers(peers: &[proto::Peer]) -> Vec<String> {
    let links = peers.iter().map(|p| format!("* {} {}", p.node, p.address));
    links
        .chain(std::iter::once("* end of peers".to_owned()))
        .collect()
}

pub(super) fn topology(t: &proto::TopologyResponse) -> Vec<String> {
    let nodes = t.nodes.iter().map(|n| format!("* node {n}"));
    let links = t
        .links
        .iter()
        .map(|l| format!("* link {} {}", l.lesser, l.greater));
    nodes.chain(links).collect()
}
