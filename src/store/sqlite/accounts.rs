//! Accounts, sessions and operator grants.

use rusqlite::{Connection, OptionalExtension, params};

use super::{backend, now_ms, rooms};
use crate::model::{AccountId, RoomId, SessionId};
use crate::store::{AccountRecord, AccountSummary, SessionRecord, StoreError, Suspension};

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

/// Creates an account, a member of `lobby`.
pub(super) fn create(
    c: &Connection,
    name: &str,
    key: &str,
    hash: &str,
    lobby: RoomId,
) -> Result<AccountId, StoreError> {
    c.prepare_cached(
        "INSERT INTO accounts (name, name_key, password_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![name, key, hash, now_ms()]))
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::NameTaken
        } else {
            backend(e)
        }
    })?;
    let id = AccountId(c.last_insert_rowid());
    rooms::join(c, id, lobby).map_err(backend)?;
    Ok(id)
}

/// An account's columns with its suspension, if any.
const ACCOUNT: &str = "SELECT a.id, a.name, a.password_hash, a.created_ms,
        s.by_name, s.reason, s.since_ms
    FROM accounts a LEFT JOIN suspensions s ON s.account_id = a.id";

pub(super) fn by_key(c: &Connection, key: &str) -> rusqlite::Result<Option<AccountRecord>> {
    c.prepare_cached(&format!("{ACCOUNT} WHERE a.name_key = ?1"))?
        .query_row([key], account_record)
        .optional()
}

pub(super) fn by_id(c: &Connection, id: AccountId) -> rusqlite::Result<Option<AccountRecord>> {
    c.prepare_cached(&format!("{ACCOUNT} WHERE a.id = ?1"))?
        .query_row([id], account_record)
        .optional()
}

fn account_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRecord> {
    let by: Option<String> = r.get(4)?;
    Ok(AccountRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        password_hash: r.get(2)?,
        created_ms: r.get(3)?,
        suspended: match by {
            Some(by) => Some(Suspension {
                by,
                reason: r.get(5)?,
                since_ms: r.get(6)?,
            }),
            None => None,
        },
    })
}

/// Deletes the account; its sessions, memberships, inbox and operator
/// grant go with it (foreign keys cascade).
pub(super) fn delete(c: &Connection, id: AccountId) -> Result<(), StoreError> {
    c.execute("DELETE FROM accounts WHERE id = ?1", [id])
        .map_err(backend)?;
    Ok(())
}

pub(super) fn all(c: &Connection) -> rusqlite::Result<Vec<AccountSummary>> {
    c.prepare_cached("SELECT id, name, created_ms FROM accounts ORDER BY name_key")?
        .query_map([], |r| {
            Ok(AccountSummary {
                id: r.get(0)?,
                name: r.get(1)?,
                created_ms: r.get(2)?,
            })
        })?
        .collect()
}

pub(super) fn operators(c: &Connection) -> rusqlite::Result<Vec<AccountId>> {
    c.prepare_cached("SELECT account_id FROM operators ORDER BY account_id")?
        .query_map([], |row| row.get(0))?
        .collect()
}

pub(super) fn grant_operator(c: &Connection, account: AccountId) -> Result<(), StoreError> {
    c.execute(
        "INSERT OR IGNORE INTO operators (account_id, granted_ms) VALUES (?1, ?2)",
        params![account, now_ms()],
    )
    .map(drop)
    .map_err(backend)
}

/// Opens a session; beyond the newest `keep` of the account, the oldest
/// go. Returns the new session and the ones that went. The writer runs one
/// job at a time, so the suspension checked here cannot land in between.
pub(super) fn create_session(
    c: &Connection,
    token_hash: &[u8; 32],
    account: AccountId,
    keep: usize,
) -> Result<(SessionId, Vec<SessionId>), StoreError> {
    if is_suspended(c, account).map_err(backend)? {
        return Err(StoreError::Suspended);
    }
    c.prepare_cached(
        "INSERT INTO sessions (token_hash, account_id, created_ms) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![&token_hash[..], account, now_ms()]))
    .map_err(backend)?;
    let id = SessionId(c.last_insert_rowid());
    let evicted: Vec<SessionId> = c
        .prepare_cached(
            "SELECT id FROM sessions WHERE account_id = ?1 ORDER BY id DESC LIMIT -1 OFFSET ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![account, keep as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<SessionId>>>()
        })
        .map_err(backend)?;
    let mut delete = c
        .prepare_cached("DELETE FROM sessions WHERE id = ?1")
        .map_err(backend)?;
    for old in &evicted {
        delete.execute([old]).map_err(backend)?;
    }
    Ok((id, evicted))
}

pub(super) fn session_by_token(
    c: &Connection,
    token_hash: &[u8; 32],
) -> rusqlite::Result<Option<SessionRecord>> {
    c.prepare_cached(
        "SELECT s.id, a.id, a.name FROM sessions s JOIN accounts a ON a.id = s.account_id
         WHERE s.token_hash = ?1",
    )?
    .query_row([&token_hash[..]], |r| {
        Ok(SessionRecord {
            id: r.get(0)?,
            account_id: r.get(1)?,
            name: r.get(2)?,
        })
    })
    .optional()
}

pub(super) fn sessions_alive(
    c: &Connection,
    ids: &[SessionId],
) -> rusqlite::Result<Vec<SessionId>> {
    let mut exists = c.prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")?;
    let mut alive = Vec::new();
    for &id in ids {
        if exists.exists([id])? {
            alive.push(id);
        }
    }
    Ok(alive)
}

pub(super) fn delete_session(c: &Connection, id: SessionId) -> Result<(), StoreError> {
    c.execute("DELETE FROM sessions WHERE id = ?1", [id])
        .map_err(backend)?;
    Ok(())
}

/// Ends every session of the account; returns their ids.
pub(super) fn end_sessions(
    c: &Connection,
    account: AccountId,
) -> Result<Vec<SessionId>, StoreError> {
    c.prepare_cached("DELETE FROM sessions WHERE account_id = ?1 RETURNING id")
        .and_then(|mut s| {
            s.query_map([account], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<SessionId>>>()
        })
        .map_err(backend)
}

fn is_suspended(c: &Connection, account: AccountId) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM suspensions WHERE account_id = ?1")?
        .exists([account])
}

/// Records the suspension and ends the account's sessions; the writer's
/// savepoint keeps the two together.
pub(super) fn suspend(
    c: &Connection,
    account: AccountId,
    s: &Suspension,
) -> Result<Vec<SessionId>, StoreError> {
    c.prepare_cached(
        "INSERT INTO suspensions (account_id, by_name, reason, since_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (account_id) DO UPDATE
             SET by_name = excluded.by_name, reason = excluded.reason, since_ms = excluded.since_ms",
    )
    .and_then(|mut st| st.execute(params![account, s.by, s.reason, s.since_ms]))
    .map_err(backend)?;
    end_sessions(c, account)
}

pub(super) fn restore(c: &Connection, account: AccountId) -> Result<bool, StoreError> {
    c.prepare_cached("DELETE FROM suspensions WHERE account_id = ?1")
        .and_then(|mut s| s.execute([account]))
        .map(|n| n > 0)
        .map_err(backend)
}
