//! Retention: old messages go, a batch at a time. Where the rule cuts is
//! found on a read connection; only the deletes, each batch a short
//! transaction of its own, run on the writer, so sends wait on a prune for
//! no longer than one batch's deletes. A direct message still waiting in its
//! recipient's inbox is never deleted.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::Retention;

/// Where the rule cuts, found on a read connection so the writer is not
/// held by the look-ups: the id below which old messages go, and each room
/// over its cap with the newest id that goes, up to `limit` rooms.
#[derive(Debug, Default)]
pub(super) struct Cuts {
    before_id: Option<i64>,
    rooms: Vec<(i64, i64)>,
}

pub(super) fn cuts(c: &Connection, rule: Retention, limit: u32) -> rusqlite::Result<Cuts> {
    let before_id = rule.before_ms.map(|ms| first_id_from(c, ms)).transpose()?;
    let mut rooms = Vec::new();
    if let Some(keep) = rule.keep_per_room {
        let ids: Vec<i64> = c
            .prepare_cached("SELECT id FROM rooms")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut edge = c.prepare_cached(
            "SELECT id FROM messages WHERE room_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
        )?;
        for room in ids {
            if rooms.len() >= limit as usize {
                break;
            }
            if let Some(id) = edge
                .query_row(params![room, keep], |r| r.get(0))
                .optional()?
            {
                rooms.push((room, id));
            }
        }
    }
    Ok(Cuts { before_id, rooms })
}

/// Deletes up to `limit` messages below the cuts, in the writer's
/// transaction; returns how many.
pub(super) fn prune(c: &Connection, cuts: &Cuts, limit: u32) -> rusqlite::Result<u64> {
    let mut gone = 0;
    if let Some(edge) = cuts.before_id {
        gone += c
            .prepare_cached(
                "DELETE FROM messages WHERE id IN (
                   SELECT id FROM messages m WHERE id < ?1
                     AND NOT EXISTS (SELECT 1 FROM inbox i
                                      WHERE i.account_id = m.recipient_id AND i.message_id = m.id)
                   ORDER BY id LIMIT ?2)",
            )?
            .execute(params![edge, limit])? as u64;
    }
    for &(room, edge) in &cuts.rooms {
        let left = u64::from(limit).saturating_sub(gone);
        if left == 0 {
            break;
        }
        gone += c
            .prepare_cached(
                "DELETE FROM messages WHERE id IN (
                   SELECT id FROM messages WHERE room_id = ?1 AND id <= ?2
                   ORDER BY id LIMIT ?3)",
            )?
            .execute(params![room, edge, left])? as u64;
    }
    Ok(gone)
}

/// The id of the first message stored at or after `ms`, found by bisecting
/// the ids: messages are stored in id order, and `sent_ms` is the time of
/// storing, so a point look-up per step finds it without an index on time.
fn first_id_from(c: &Connection, ms: i64) -> rusqlite::Result<i64> {
    let (mut lo, mut hi): (i64, i64) = c.query_row(
        "SELECT IFNULL(MIN(id), 0), IFNULL(MAX(id), 0) + 1 FROM messages",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut at =
        c.prepare_cached("SELECT id, sent_ms FROM messages WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    // Every message below `lo` was stored before `ms`; every one from `hi`
    // on, at or after it.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let next = at
            .query_row([mid], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?;
        match next {
            Some((id, sent)) if sent < ms => lo = id + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}
