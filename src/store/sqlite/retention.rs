//! Retention: old messages go, a batch at a time, each batch a short
//! transaction of its own on the writer, so sends wait on a prune for no
//! longer than one batch. A direct message still waiting in its
//! recipient's inbox is never deleted.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::Retention;

/// Deletes up to `limit` messages the rule lets go; returns how many.
pub(super) fn prune(c: &Connection, rule: Retention, limit: u32) -> rusqlite::Result<u64> {
    let mut gone = 0;
    if let Some(before) = rule.before_ms {
        let edge = first_id_from(c, before)?;
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
    if let Some(keep) = rule.keep_per_room {
        let rooms: Vec<i64> = c
            .prepare_cached("SELECT id FROM rooms")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for room in rooms {
            if gone >= u64::from(limit) {
                break;
            }
            let edge: Option<i64> = c
                .prepare_cached(
                    "SELECT id FROM messages WHERE room_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                )?
                .query_row(params![room, keep], |r| r.get(0))
                .optional()?;
            if let Some(edge) = edge {
                let left = u64::from(limit) - gone;
                gone += c
                    .prepare_cached(
                        "DELETE FROM messages WHERE id IN (
                           SELECT id FROM messages WHERE room_id = ?1 AND id <= ?2
                           ORDER BY id LIMIT ?3)",
                    )?
                    .execute(params![room, edge, left])? as u64;
            }
        }
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
