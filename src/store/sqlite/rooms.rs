//! Rooms and memberships.

use rusqlite::{Connection, params};

use super::{backend, now_ms};
use crate::model::{AccountId, RoomId};
use crate::store::{RoomRecord, StoreError};

/// Returns the room with this key, creating it first if there is none.
pub(super) fn ensure(c: &Connection, name: &str, key: &str) -> Result<RoomRecord, StoreError> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO rooms (name, name_key, created_ms) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![name, key, now_ms()]))
    .map_err(backend)?;
    c.prepare_cached("SELECT id, name FROM rooms WHERE name_key = ?1")
        .and_then(|mut s| s.query_row([key], room_record))
        .map_err(backend)
}

pub(super) fn all(c: &Connection) -> rusqlite::Result<Vec<RoomRecord>> {
    c.prepare_cached("SELECT id, name FROM rooms ORDER BY name_key")?
        .query_map([], room_record)?
        .collect()
}

fn room_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoomRecord> {
    Ok(RoomRecord {
        id: r.get(0)?,
        name: r.get(1)?,
    })
}

pub(super) fn of_account(c: &Connection, account: AccountId) -> rusqlite::Result<Vec<RoomRecord>> {
    c.prepare_cached(
        "SELECT r.id, r.name FROM memberships m JOIN rooms r ON r.id = m.room_id
          WHERE m.account_id = ?1 ORDER BY r.name_key",
    )?
    .query_map([account], room_record)?
    .collect()
}

pub(super) fn memberships(c: &Connection) -> rusqlite::Result<Vec<(RoomId, AccountId)>> {
    c.prepare_cached("SELECT room_id, account_id FROM memberships")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Adds a membership whose cursor starts at the newest message; false if
/// it was there already.
pub(super) fn join(c: &Connection, account: AccountId, room: RoomId) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO memberships (account_id, room_id, acked_id)
         VALUES (?1, ?2, (SELECT IFNULL(MAX(id), 0) FROM messages))",
    )?
    .execute(params![account, room])
    .map(|n| n == 1)
}

/// Removes a membership; false if there was none.
pub(super) fn leave(c: &Connection, account: AccountId, room: RoomId) -> Result<bool, StoreError> {
    c.execute(
        "DELETE FROM memberships WHERE account_id = ?1 AND room_id = ?2",
        params![account, room],
    )
    .map(|n| n == 1)
    .map_err(backend)
}
