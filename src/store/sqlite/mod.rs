//! The embedded SQLite store.
//!
//! One writer thread owns the only write connection. Mutations queue to it;
//! it takes everything waiting, runs it in one transaction, and commits once
//! (one fsync with `synchronous=FULL`). Only then are the callers answered
//! and the commit hooks run, in commit order: by a second thread, so that
//! the writer, which every mutation waits for, goes on to the next batch
//! instead of waking every caller and receiver itself, or by the writer
//! when a small batch finds nothing else waiting. Reads go to a small pool of
//! connections, which in WAL mode run beside the writer and see every
//! committed batch.
//!
//! The files:
//!
//! - `mod.rs`: [`SqliteStore`], opening the database, and this map;
//! - `schema.rs`: the schema as numbered migrations, applied at open;
//! - `writer.rs`: the job queue, the writer thread (group commit, savepoints)
//!   and the answering thread that runs the commit hooks in their scope;
//! - `read.rs`: the pool of read connections;
//! - `store.rs`: the [`Store`](super::Store) trait, each call a read or a
//!   write of one of the queries below;
//! - `accounts.rs`: accounts, sessions and operator grants;
//! - `rooms.rs`: rooms and memberships;
//! - `messages.rs`: appends, what waits for an account, acknowledgements,
//!   history and counts.

mod accounts;
mod backup;
mod messages;
mod read;
mod retention;
mod rooms;
mod schema;
mod store;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::{DiskReserve, HookScope, StoreError};
use crate::model::{AccountId, RoomId, SessionId};
pub use backup::{Copied, backup};
use read::ReadPool;
use writer::Job;

/// Pages the write-ahead log gathers before a commit copies them into the
/// database (SQLite's default is 1,000, 4 MiB). A copy writes each page
/// once however many times the log holds it, and direct messages rewrite
/// the same inbox and index pages over and over: at 8,000 (32 MiB of log)
/// copies come an eighth as often and write less in all.
const CHECKPOINT_PAGES: u32 = 8000;

/// The writer's queue is unbounded so that queueing never waits and jobs
/// queued one after another keep their order; what bounds it is upstream:
/// every connection and stream caps the sends it has in flight.
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    readers: ReadPool,
    /// Below this much free space, appends are refused.
    reserve: Option<DiskReserve>,
    /// What the hooks of each run of commits run inside; set once.
    hook_scope: Arc<OnceLock<HookScope>>,
}

/// Ids are stored as the INTEGER keys SQLite gives them.
macro_rules! sql_id {
    ($($id:ty),*) => {$(
        impl rusqlite::ToSql for $id {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl rusqlite::types::FromSql for $id {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(value).map(Self)
            }
        }
    )*};
}

sql_id!(AccountId, RoomId, SessionId);

fn backend(e: rusqlite::Error) -> StoreError {
    match &e {
        // A full disk is not a fault of the server's: the user is told so,
        // and can try again once space is freed.
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            StoreError::DiskFull
        }
        _ => StoreError::database(e),
    }
}

fn now_ms() -> i64 {
    crate::model::now_ms()
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema
    /// up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::failed(format!("cannot create {}", dir.display()), e))?;
        }
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES};
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;"
        ))
        .map_err(backend)?;
        schema::migrate(&mut conn)?;
        let readers = ReadPool::open(path)?;
        let hook_scope = Arc::new(OnceLock::new());
        let (writer, thread) = writer::start(conn, hook_scope.clone())?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(writer)),
            writer_thread: Mutex::new(Some(thread)),
            readers,
            reserve: None,
            hook_scope,
        })
    }

    /// Refuses new messages while the file system holding the database has
    /// less than `min_free` bytes free (0: never).
    pub fn keep_free(mut self, path: &Path, min_free: u64) -> Self {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        self.reserve = Some(DiskReserve::new(dir, min_free));
        self
    }

    /// Caps the database at `pages` pages, as a full disk would: past it,
    /// writes fail with SQLITE_FULL. For tests of what users see then.
    pub async fn limit_pages(&self, pages: u64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(backend)
        })
        .await
    }

    /// Lets the writer finish what is queued, then waits for it to stop.
    async fn shut_down(&self) {
        // Dropping the sender lets the writer finish the queue and stop.
        if let Ok(mut writer) = self.writer.lock() {
            writer.take();
        }
        let thread = self.writer_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database error reads as the database said it, and is kept whole.
    #[test]
    fn a_database_error_is_kept_whole() {
        let e = backend(rusqlite::Error::QueryReturnedNoRows);
        assert_eq!(
            e.to_string(),
            rusqlite::Error::QueryReturnedNoRows.to_string()
        );
        let StoreError::Database(inner) = &e else {
            panic!("{e:?}");
        };
        assert!(matches!(
            inner.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::QueryReturnedNoRows)
        ));
    }
}
