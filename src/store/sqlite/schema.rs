//! The schema, as numbered migrations. The database records the last one
//! applied in `PRAGMA user_version`; opening it applies the ones after, in
//! order, in one transaction. Every schema change is a new migration at the
//! end of [`MIGRATIONS`]; a migration once released is never edited.

use rusqlite::{Connection, TransactionBehavior};

use super::backend;
use crate::store::StoreError;

/// The migrations, in order: `MIGRATIONS[n - 1]` takes a database from
/// version `n - 1` to `n`.
const MIGRATIONS: &[&str] = &[TABLES, NO_INBOX_TRIGGER, SUSPENSIONS];

/// The schema version this code writes and reads.
pub(super) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration 1: the tables and their indexes. `IF NOT EXISTS` throughout,
/// so that a database whose tables were made without a recorded version
/// (version 0) is brought to version 1 as it is.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash BLOB NOT NULL UNIQUE,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rooms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    room_id INTEGER NOT NULL REFERENCES rooms(id),
    acked_id INTEGER NOT NULL,
    PRIMARY KEY (account_id, room_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_id INTEGER NOT NULL,
    sender_name TEXT NOT NULL,
    recipient_id INTEGER,
    recipient_name TEXT,
    room_id INTEGER,
    room_name TEXT,
    body TEXT NOT NULL,
    client_msg_id TEXT,
    sent_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_msg_id
    ON messages (sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_room ON messages (room_id, id) WHERE room_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_direct
    ON messages (sender_id, recipient_id, id) WHERE recipient_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS inbox (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (account_id, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS operators (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    granted_ms INTEGER NOT NULL
);
";

/// Migration 2: an inbox row is written by the append that stores its
/// message and by nothing else, so no trigger on `messages` may write one
/// too (the inbox's primary key would refuse the second row, and with it
/// the message).
const NO_INBOX_TRIGGER: &str = "DROP TRIGGER IF EXISTS messages_inbox;";

/// Migration 3: accounts an operator suspended, apart from `accounts` so
/// that the hot reads of accounts stay as they were; the row goes with the
/// account.
const SUSPENSIONS: &str = "
CREATE TABLE suspensions (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    by_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    since_ms INTEGER NOT NULL
);
";

/// Brings the database to [`VERSION`]: applies every migration after the
/// one it records, each once and in order, all in one transaction, so a
/// failure leaves it as it was. Refuses a database whose version this code
/// does not know. Returns the version the database had.
pub(super) fn migrate(conn: &mut Connection) -> Result<i64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let found = version(&tx).map_err(backend)?;
    if !(0..=VERSION).contains(&found) {
        return Err(StoreError::UnknownSchema {
            found,
            known: VERSION,
        });
    }
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", done as i64 + 1)
            .map_err(backend)?;
    }
    tx.commit().map_err(backend)?;
    Ok(found)
}

/// The last migration the database records.
fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountId, Target};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewMessage, Store};

    /// A database made before versions were recorded holds exactly the
    /// tables of migration 1 (which is why migration 1 may never change),
    /// at version 0.
    const UNVERSIONED: &str = TABLES;

    /// What the migrations after the first add to its tables.
    const LATER: &str = SUSPENSIONS;

    /// Every table and index with the SQL that made it.
    fn objects(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        conn.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn an_empty_database_gets_every_migration() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(version(&conn).unwrap(), VERSION);

        let unversioned = Connection::open_in_memory().unwrap();
        unversioned.execute_batch(UNVERSIONED).unwrap();
        unversioned.execute_batch(LATER).unwrap();
        assert_eq!(objects(&conn), objects(&unversioned));
    }

    #[test]
    fn migrating_again_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let before = objects(&conn);
        assert_eq!(migrate(&mut conn).unwrap(), VERSION);
        assert_eq!(version(&conn).unwrap(), VERSION);
        assert_eq!(objects(&conn), before);
    }

    /// A database made before versions were recorded, with its data, opens
    /// at the current version with nothing lost, and takes new messages,
    /// direct ones too though a trigger on `messages` wrote inbox rows.
    #[tokio::test]
    async fn an_unversioned_database_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(UNVERSIONED).unwrap();
        conn.execute_batch(
            "INSERT INTO accounts VALUES (1, 'Alice', 'alice', 'h1', 10), (2, 'bob', 'bob', 'h2', 11);
             INSERT INTO rooms VALUES (1, 'lobby', 'lobby', 10);
             INSERT INTO memberships VALUES (1, 1, 0), (2, 1, 0);
             INSERT INTO messages (sender_id, sender_name, room_id, room_name, body, sent_ms)
                 VALUES (1, 'Alice', 1, 'lobby', 'hi all', 20);
             INSERT INTO messages (sender_id, sender_name, recipient_id, recipient_name, body, sent_ms)
                 VALUES (1, 'Alice', 2, 'bob', 'lunch?', 21);
             INSERT INTO inbox VALUES (2, 2);",
        )
        .unwrap();
        conn.execute_batch(
            "CREATE TRIGGER messages_inbox AFTER INSERT ON messages
                 WHEN NEW.recipient_id IS NOT NULL
             BEGIN
                 INSERT INTO inbox (account_id, message_id) VALUES (NEW.recipient_id, NEW.id);
             END;",
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&path).unwrap();
        let alice = store.account_by_key("alice").await.unwrap().unwrap();
        assert_eq!((alice.id, alice.name.as_str()), (AccountId(1), "Alice"));
        let bob = AccountId(2);
        let waiting = store.pending(bob, 0, u64::MAX >> 1, 10).await.unwrap();
        let seen: Vec<_> = waiting.iter().map(|m| (m.id, m.to.clone())).collect();
        assert_eq!(
            seen,
            [
                (1, Target::Room("lobby".into())),
                (2, Target::User("bob".into()))
            ]
        );
        let sent = store
            .append(
                NewMessage {
                    sender: bob,
                    sender_name: "bob".into(),
                    recipient: Some((alice.id, "Alice".into())),
                    room: None,
                    body: "yes".into(),
                    client_msg_id: None,
                    sent_at_ms: 30,
                },
                crate::store::after_commit(|_| {}),
            )
            .await
            .unwrap();
        assert_eq!(sent.id, 3);
        store.close().await;

        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), VERSION);
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    /// Reopening a store finds its data and its version as they were.
    #[tokio::test]
    async fn reopening_a_store_keeps_its_version_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        for _ in 0..2 {
            let store = SqliteStore::open(&path).unwrap();
            store.ensure_room("lobby", "lobby").await.unwrap();
            assert_eq!(store.rooms().await.unwrap().len(), 1);
            store.close().await;
        }
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), VERSION);
    }

    /// A database from a newer version is refused, and left as it was.
    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let newer = VERSION + 1;
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();

        let refused = SqliteStore::open(&path)
            .err()
            .expect("a newer schema is refused");
        assert!(
            matches!(refused, StoreError::UnknownSchema { found, known } if found == newer && known == VERSION),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("newer meshtalk"), "{refused}");

        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), newer);
        assert!(objects(&conn).is_empty());
    }
}
