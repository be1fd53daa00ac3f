//! The embedded SQLite store.
//!
//! One writer thread owns the only write connection. Mutations queue to it;
//! it takes everything waiting (up to [`MAX_BATCH`]), runs them in one
//! transaction, and commits once (one fsync with `synchronous=FULL`). Only
//! then are the callers answered and the commit hooks run, by a second
//! thread, in commit order: the writer, which every mutation waits for, goes
//! on to the next batch meanwhile instead of waking every caller and
//! receiver itself (about 2 µs of its 10 µs per direct message). When the
//! store is quiet, the writer answers a small batch itself and saves the
//! hand-off. A failing
//! job is undone alone: by its own savepoint, or, for an append, by SQLite
//! (a failed statement) and by the append itself (a message whose inbox row
//! failed). Reads go to a small pool of connections, which in WAL mode run
//! beside the writer and see every committed batch.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    AccountAcks, AccountHook, AccountRecord, AccountSummary, Appended, CommitHook, Conversation,
    Counts, DiskReserve, HookScope, MembershipHook, NewMessage, PendingAppend, RoomRecord,
    SessionRecord, Store, StoreError, message_target,
};
use crate::model::{AccountId, Message, RoomId, SessionId};

/// The most jobs one transaction takes.
const MAX_BATCH: usize = 4096;
/// Finished jobs whose fan-out reaches receivers together.
const WAKE_RUN: usize = 128;
const READERS: usize = 4;
/// Batches this small, with nothing else waiting, are answered by the
/// writer. A large batch wakes many callers, which would hold up the next
/// commit.
const QUIET_BATCH: usize = 4;
/// Pages the write-ahead log gathers before a commit copies them into the
/// database (SQLite's default is 1,000, 4 MiB). A copy writes each page
/// once however many times the log holds it, and direct messages rewrite
/// the same inbox and index pages over and over: at 8,000 (32 MiB of log),
/// checkpoints come an eighth as often and durable DMs ran about 5 % faster.
const CHECKPOINT_PAGES: u32 = 8000;

const SCHEMA: &str = "
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
-- Earlier versions wrote a direct message's inbox row from a trigger. A
-- statement that fires a trigger copies every page it touches into a
-- statement journal, in case the trigger fails halfway: a tenth of the
-- writer's time. The append writes the row itself now.
DROP TRIGGER IF EXISTS messages_inbox;
";

const MESSAGE_COLUMNS: &str =
    "id, sender_name, recipient_name, room_name, body, sent_ms, client_msg_id";

/// Runs inside the write transaction; returns whether it succeeded and what
/// to do once the transaction's fate is known.
type Run = Box<dyn FnOnce(&Writer<'_>) -> (Result<(), StoreError>, Finish) + Send>;

const INSERT_MESSAGE: &str = "INSERT INTO messages (sender_id, sender_name, recipient_id,
    recipient_name, room_id, room_name, body, client_msg_id, sent_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const INSERT_INBOX: &str = "INSERT INTO inbox (account_id, message_id) VALUES (?1, ?2)";

/// The writer's connection, and the two statements it runs for every
/// message, kept prepared: fetching them from rusqlite's statement cache
/// (which hashes the SQL text on the way out and again on the way back)
/// took a twelfth of the writer's time.
struct Writer<'c> {
    conn: &'c Connection,
    insert_message: Prepared<'c>,
    insert_inbox: Prepared<'c>,
}

impl<'c> Writer<'c> {
    fn new(conn: &'c Connection) -> Writer<'c> {
        Writer {
            conn,
            insert_message: Prepared::new(INSERT_MESSAGE),
            insert_inbox: Prepared::new(INSERT_INBOX),
        }
    }
}

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// A statement prepared on first use and kept for the connection's life.
struct Prepared<'c> {
    sql: &'static str,
    statement: std::cell::RefCell<Option<rusqlite::Statement<'c>>>,
}

impl<'c> Prepared<'c> {
    fn new(sql: &'static str) -> Prepared<'c> {
        Prepared {
            sql,
            statement: std::cell::RefCell::new(None),
        }
    }

    fn execute(
        &self,
        conn: &'c Connection,
        params: impl rusqlite::Params,
    ) -> rusqlite::Result<usize> {
        let mut slot = self.statement.borrow_mut();
        let statement = match &mut *slot {
            Some(statement) => statement,
            None => slot.insert(conn.prepare(self.sql)?),
        };
        statement.execute(params)
    }
}

/// A mutation for the writer.
struct Job {
    run: Run,
    /// Whether `run` makes changes that must stand or fall together, and so
    /// needs a savepoint of its own. A job that undoes its own failures
    /// does not: SQLite undoes a failed statement by itself, and an append
    /// deletes its message again if its inbox row fails. Appends are most
    /// of the writer's work: two savepoint statements, and the page copies
    /// a savepoint makes, cost about a tenth of each.
    savepoint: bool,
}
/// Answers the caller: with the job's result if the commit succeeded.
type Finish = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// The writer's queue is unbounded so that queueing never waits and jobs
/// queued one after another keep their order; what bounds it is upstream:
/// every connection and stream caps the sends it has in flight.
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    reader_permits: Arc<Semaphore>,
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
        _ => StoreError::Backend(e.to_string()),
    }
}

fn now_ms() -> i64 {
    crate::model::now_ms()
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let writer = Connection::open(path).map_err(backend)?;
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES};
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;"
            ))
            .map_err(backend)?;
        writer.execute_batch(SCHEMA).map_err(backend)?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(backend)?;
            conn.execute_batch("PRAGMA busy_timeout = 5000;")
                .map_err(backend)?;
            readers.push(conn);
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let hook_scope = Arc::new(OnceLock::new());
        let scope = hook_scope.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(writer, rx, scope))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer: {e}")))?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            readers: Arc::new(Mutex::new(readers)),
            reader_permits: Arc::new(Semaphore::new(READERS)),
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

    /// Queues a mutation for the next group commit and waits for the commit.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.write_then(f, |_| {}).await
    }

    /// Like [`write`](Self::write), and runs `then` after a successful
    /// commit, in commit order, before answering.
    async fn write_then<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> Result<R, StoreError> + Send + 'static,
        then: impl FnOnce(&R) + Send + 'static,
    ) -> Result<R, StoreError> {
        self.queue(f, then, true).await
    }

    /// Queues a job now (so jobs keep the order they were queued in) and
    /// returns a future for its answer. Without `savepoint`, `f` must undo
    /// by itself whatever it wrote before failing.
    fn queue<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> Result<R, StoreError> + Send + 'static,
        then: impl FnOnce(&R) + Send + 'static,
        savepoint: bool,
    ) -> impl std::future::Future<Output = Result<R, StoreError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let run: Run = Box::new(move |writer| {
            let result = f(writer);
            let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
            let finish: Finish = Box::new(move |commit_error| {
                let _ = reply.send(match commit_error {
                    Some(e) => Err(e.clone()),
                    None => {
                        if let Ok(value) = &result {
                            then(value);
                        }
                        result
                    }
                });
            });
            (outcome, finish)
        });
        let job = Job { run, savepoint };
        let queued = match self.writer.lock() {
            Ok(writer) => writer
                .as_ref()
                .is_some_and(|writer| writer.send(job).is_ok()),
            Err(_) => false,
        };
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            answer.await.map_err(|_| StoreError::Closed)?
        }
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        // The permit moves into the blocking task: if the caller goes away,
        // the connection stays counted until it is back in the pool.
        let permit = self
            .reader_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // The permit guarantees a connection is free.
            let conn = pool
                .lock()
                .map_err(|_| StoreError::Closed)?
                .pop()
                .ok_or(StoreError::Closed)?;
            let result = f(&conn).map_err(backend);
            if let Ok(mut pool) = pool.lock() {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("reader failed: {e}")))?
    }
}

/// A committed (or failed) batch's answers, for the answering thread.
type Answers = (Vec<Finish>, Result<(), StoreError>);

fn write_loop(
    conn: Connection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    scope: Arc<OnceLock<HookScope>>,
) {
    let (answers, answering) = std::sync::mpsc::channel::<Answers>();
    // Batches handed to the answering thread and not yet answered.
    let unanswered = Arc::new(AtomicUsize::new(0));
    let answerer = std::thread::Builder::new()
        .name("sqlite-answer".into())
        .spawn({
            let unanswered = unanswered.clone();
            let scope = scope.clone();
            move || {
                for (finishes, commit) in answering {
                    answer(finishes, &commit, &scope);
                    unanswered.fetch_sub(1, Ordering::Release);
                }
            }
        })
        .ok();
    let writer = Writer::new(&conn);
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut finishes = Vec::with_capacity(batch.len());
        let begun = conn.execute_batch("BEGIN IMMEDIATE").map_err(backend);
        let commit = match begun {
            Err(e) => Err(e),
            Ok(()) => {
                let mut aborted = None;
                for job in batch.drain(..) {
                    let opened = match job.savepoint {
                        true => savepoint(&conn, "SAVEPOINT job").map(|()| true),
                        false => Ok(false),
                    };
                    let (outcome, finish) = (job.run)(&writer);
                    let ok = outcome.is_ok();
                    finishes.push(finish);
                    let ended = match opened {
                        Ok(true) if ok => savepoint(&conn, "RELEASE job"),
                        Ok(true) => savepoint(&conn, "ROLLBACK TO job")
                            .and_then(|()| savepoint(&conn, "RELEASE job")),
                        Ok(false) => Ok(()),
                        Err(e) => Err(e),
                    };
                    // On a full disk or an I/O error SQLite rolls the whole
                    // transaction back by itself: nothing in it may be
                    // reported as stored, and no later job may run outside it.
                    if ended.is_err() || conn.is_autocommit() {
                        aborted = Some(match (ended, outcome) {
                            (Err(e), _) => backend(e),
                            // The job's own error says why SQLite gave up.
                            (Ok(()), Err(StoreError::DiskFull)) => StoreError::DiskFull,
                            (Ok(()), _) => {
                                StoreError::Backend("the transaction was rolled back".into())
                            }
                        });
                        break;
                    }
                }
                match aborted {
                    Some(e) => Err(e),
                    None => conn.execute_batch("COMMIT").map_err(backend),
                }
            }
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, "commit failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        // Jobs that never ran are dropped with their replies, which their
        // callers see as an unavailable store.
        batch.clear();
        // With nothing waiting, a small batch is answered by the writer
        // itself: a hand-off to the answering thread costs a thread
        // wake-up, about a fifth of a quiet room's message latency with the
        // data on tmpfs. Only once every earlier batch is answered, or
        // hooks would run out of commit order. Under load, the answering
        // thread takes the batch and the writer goes on to the next commit.
        if finishes.len() <= QUIET_BATCH
            && jobs.is_empty()
            && unanswered.load(Ordering::Acquire) == 0
        {
            answer(finishes, &commit, &scope);
            continue;
        }
        unanswered.fetch_add(1, Ordering::Relaxed);
        // Without an answering thread (it could not start, or it died),
        // the writer answers itself.
        if let Err(std::sync::mpsc::SendError((finishes, commit))) =
            answers.send((finishes, commit))
        {
            unanswered.fetch_sub(1, Ordering::Relaxed);
            answer(finishes, &commit, &scope);
        }
    }
    drop(answers);
    if let Some(thread) = answerer {
        let _ = thread.join();
    }
}

/// Runs a committed batch's hooks and answers its callers, a run of jobs at
/// a time inside the hook scope. A run is kept well under a receiver's
/// queue, which must not fill before its receiver has had a chance to
/// empty it.
fn answer(finishes: Vec<Finish>, commit: &Result<(), StoreError>, scope: &OnceLock<HookScope>) {
    let scope = scope.get().copied().unwrap_or(unscoped);
    let mut finishes = finishes.into_iter().peekable();
    while finishes.peek().is_some() {
        scope(&mut || {
            for finish in finishes.by_ref().take(WAKE_RUN) {
                finish(commit.as_ref().err());
            }
        });
    }
}

fn unscoped(run: &mut dyn FnMut()) {
    run()
}

/// Runs a savepoint statement, prepared once per connection.
fn savepoint(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: row.get::<_, i64>(0)? as u64,
        from: row.get(1)?,
        to: message_target(row.get(2)?, row.get(3)?),
        body: row.get(4)?,
        sent_at_ms: row.get(5)?,
        client_msg_id: row.get(6)?,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(
        &self,
        name: &str,
        key: &str,
        password_hash: &str,
        lobby: RoomId,
        on_commit: AccountHook,
    ) -> Result<AccountId, StoreError> {
        let (name, key, hash) = (name.to_owned(), key.to_owned(), password_hash.to_owned());
        self.write_then(move |c| {
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
            join_tx(c, id, lobby).map_err(backend)?;
            Ok(id)
        }, move |value| on_commit(value))
        .await
    }

    async fn account_by_key(&self, key: &str) -> Result<Option<AccountRecord>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT id, name, password_hash FROM accounts WHERE name_key = ?1")?
                .query_row([key], |r| {
                    Ok(AccountRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        password_hash: r.get(2)?,
                    })
                })
                .optional()
        })
        .await
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        self.read(move |c| {
            c.prepare_cached("SELECT id, name, password_hash FROM accounts WHERE id = ?1")?
                .query_row([id], |r| {
                    Ok(AccountRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        password_hash: r.get(2)?,
                    })
                })
                .optional()
        })
        .await
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM accounts WHERE id = ?1", [id])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn accounts(&self) -> Result<Vec<AccountSummary>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT id, name, created_ms FROM accounts ORDER BY name_key")?
                .query_map([], |r| {
                    Ok(AccountSummary {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_ms: r.get(2)?,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn operators(&self) -> Result<Vec<AccountId>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT account_id FROM operators ORDER BY account_id")?
                .query_map([], |row| row.get(0))?
                .collect()
        })
        .await
    }

    async fn grant_operator(&self, account: AccountId) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO operators (account_id, granted_ms) VALUES (?1, ?2)",
                params![account, now_ms()],
            )
            .map(drop)
            .map_err(backend)
        })
        .await
    }

    async fn create_session(
        &self,
        token_hash: [u8; 32],
        account: AccountId,
        keep: usize,
    ) -> Result<(SessionId, Vec<SessionId>), StoreError> {
        self.write(move |c| {
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
        })
        .await
    }

    async fn session_by_token(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.read(move |c| {
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
        })
        .await
    }

    async fn delete_session(&self, id: SessionId) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM sessions WHERE id = ?1", [id])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn ensure_room(&self, name: &str, key: &str) -> Result<RoomRecord, StoreError> {
        let (name, key) = (name.to_owned(), key.to_owned());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT OR IGNORE INTO rooms (name, name_key, created_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![name, key, now_ms()]))
            .map_err(backend)?;
            c.prepare_cached("SELECT id, name FROM rooms WHERE name_key = ?1")
                .and_then(|mut s| {
                    s.query_row([key], |r| {
                        Ok(RoomRecord {
                            id: r.get(0)?,
                            name: r.get(1)?,
                        })
                    })
                })
                .map_err(backend)
        })
        .await
    }

    async fn rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT id, name FROM rooms ORDER BY name_key")?
                .query_map([], |r| {
                    Ok(RoomRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn memberships(&self) -> Result<Vec<(RoomId, AccountId)>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT room_id, account_id FROM memberships")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    async fn join(
        &self,
        account: AccountId,
        room: RoomId,
        on_commit: MembershipHook,
    ) -> Result<bool, StoreError> {
        self.write_then(
            move |c| join_tx(c, account, room).map_err(backend),
            move |joined| on_commit(joined),
        )
        .await
    }

    async fn leave(
        &self,
        account: AccountId,
        room: RoomId,
        on_commit: MembershipHook,
    ) -> Result<bool, StoreError> {
        self.write_then(
            move |c| {
                c.execute(
                    "DELETE FROM memberships WHERE account_id = ?1 AND room_id = ?2",
                    params![account, room],
                )
                .map(|n| n == 1)
                .map_err(backend)
            },
            move |value| on_commit(value),
        )
        .await
    }

    fn append(&self, m: NewMessage, on_commit: CommitHook) -> PendingAppend {
        if self
            .reserve
            .as_ref()
            .is_some_and(DiskReserve::is_nearly_full)
        {
            return Box::pin(std::future::ready(Err(StoreError::NearlyFull)));
        }
        Box::pin(self.queue(move |c| append_tx(c, m).map_err(backend), on_commit, false))
    }

    async fn pending(
        &self,
        account: AccountId,
        after: u64,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        // Each source is read as an index range with its own limit, then
        // merged: a page costs `limit` rows per source, however far behind
        // the account is.
        self.read(move |c| {
            let (after, up_to) = (after as i64, up_to as i64);
            let mut page: Vec<Message> = c
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN (
                         SELECT message_id FROM inbox
                          WHERE account_id = ?1 AND message_id > ?2 AND message_id <= ?3
                          ORDER BY message_id LIMIT ?4)"
                ))?
                .query_map(params![account, after, up_to, limit], row_to_message)?
                .collect::<rusqlite::Result<_>>()?;
            let cursors: Vec<(RoomId, i64)> = c
                .prepare_cached("SELECT room_id, acked_id FROM memberships WHERE account_id = ?1")?
                .query_map([account], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut room_page = c.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                  WHERE room_id = ?1 AND id > ?2 AND id <= ?3 AND sender_id != ?4
                  ORDER BY id LIMIT ?5"
            ))?;
            for (room, acked) in cursors {
                let rows = room_page.query_map(
                    params![room, acked.max(after), up_to, account, limit],
                    row_to_message,
                )?;
                for row in rows {
                    page.push(row?);
                }
            }
            page.sort_by_key(|m| m.id);
            page.truncate(limit as usize);
            Ok(page)
        })
        .await
    }

    async fn last_message_id(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT IFNULL(MAX(id), 0) FROM messages", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await
        .map(|id| id as u64)
    }

    async fn ack(&self, acks: Vec<AccountAcks>) -> Result<(), StoreError> {
        self.write(move |c| {
            let mut unbox = c
                .prepare_cached("DELETE FROM inbox WHERE account_id = ?1 AND message_id = ?2")
                .map_err(backend)?;
            let mut room_of = c
                .prepare_cached("SELECT room_id FROM messages WHERE id = ?1")
                .map_err(backend)?;
            let mut advance = c
                .prepare_cached(
                    "UPDATE memberships SET acked_id = MAX(acked_id, ?3)
                      WHERE account_id = ?1 AND room_id = ?2",
                )
                .map_err(backend)?;
            for AccountAcks {
                account,
                ids,
                rooms,
            } in acks
            {
                let mut cursors: std::collections::HashMap<RoomId, i64> = rooms
                    .into_iter()
                    .map(|(room, id)| (room, id as i64))
                    .collect();
                for id in ids {
                    let id = id as i64;
                    if unbox.execute(params![account, id]).map_err(backend)? > 0 {
                        continue;
                    }
                    let room: Option<Option<RoomId>> = room_of
                        .query_row([id], |r| r.get(0))
                        .optional()
                        .map_err(backend)?;
                    if let Some(Some(room)) = room {
                        let cursor = cursors.entry(room).or_insert(id);
                        *cursor = (*cursor).max(id);
                    }
                }
                // One update per room, however many of its messages were acked.
                for (room, id) in cursors {
                    advance
                        .execute(params![account, room, id])
                        .map_err(backend)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn history(
        &self,
        conversation: Conversation,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<Message>, StoreError> {
        self.read(move |c| {
            let (filter, mut args) = conversation_filter(conversation);
            let (after_at, limit_at) = (args.len() + 1, args.len() + 2);
            args.extend([after as i64, i64::from(limit)]);
            let order = if newest { "DESC" } else { "ASC" };
            let sql = format!(
                "SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages
                  WHERE {filter} AND id > ?{after_at} ORDER BY id {order} LIMIT ?{limit_at})
                 ORDER BY id"
            );
            c.prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(args), row_to_message)?
                .collect()
        })
        .await
    }

    async fn nth_newest(
        &self,
        conversation: Conversation,
        after: u64,
        n: u32,
    ) -> Result<Option<u64>, StoreError> {
        if n == 0 {
            return Ok(None);
        }
        self.read(move |c| {
            let (filter, mut args) = conversation_filter(conversation);
            let (after_at, offset_at) = (args.len() + 1, args.len() + 2);
            args.extend([after as i64, i64::from(n) - 1]);
            let sql = format!(
                "SELECT id FROM messages WHERE {filter} AND id > ?{after_at}
                 ORDER BY id DESC LIMIT 1 OFFSET ?{offset_at}"
            );
            c.prepare_cached(&sql)?
                .query_row(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))
                .optional()
                .map(|id| id.map(|id| id as u64))
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT (SELECT IFNULL(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'messages'),
                        (SELECT COUNT(*) FROM accounts),
                        (SELECT COUNT(*) FROM rooms)",
                [],
                |r| {
                    Ok(Counts {
                        messages: r.get::<_, i64>(0)? as u64,
                        accounts: r.get::<_, i64>(1)? as u64,
                        rooms: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
        })
        .await
    }

    fn set_hook_scope(&self, scope: HookScope) {
        let _ = self.hook_scope.set(scope);
    }

    async fn close(&self) {
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

fn join_tx(c: &Connection, account: AccountId, room: RoomId) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO memberships (account_id, room_id, acked_id)
         VALUES (?1, ?2, (SELECT IFNULL(MAX(id), 0) FROM messages))",
    )?
    .execute(params![account, room])
    .map(|n| n == 1)
}

fn append_tx(c: &Writer<'_>, m: NewMessage) -> rusqlite::Result<Appended> {
    if let Some(client_id) = &m.client_msg_id {
        let earlier = c
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2"
            ))?
            .query_row(params![m.sender, client_id], row_to_message)
            .optional()?;
        if let Some(message) = earlier {
            return Ok(Appended {
                message: Arc::new(message),
                duplicate: true,
            });
        }
    }
    let (recipient_id, recipient_name) = m.recipient.unzip();
    let (room_id, room_name) = m.room.unzip();
    c.insert_message.execute(
        c.conn,
        params![
            m.sender,
            m.sender_name,
            recipient_id,
            recipient_name,
            room_id,
            room_name,
            m.body,
            m.client_msg_id,
            m.sent_at_ms
        ],
    )?;
    let id = c.last_insert_rowid();
    if let Some(recipient) = recipient_id {
        let boxed = c.insert_inbox.execute(c.conn, params![recipient, id]);
        if let Err(e) = boxed {
            // A message nobody's inbox holds must not be stored either. SQLite
            // undid only the failed statement, so the message, and the id it
            // took, are given back here; if even that fails, the whole
            // transaction goes, and every job in it is answered with the error.
            let undone = c
                .prepare_cached("DELETE FROM messages WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
                .and_then(|_| {
                    c.prepare_cached(
                        "UPDATE sqlite_sequence SET seq = ?1 - 1 WHERE name = 'messages' AND seq = ?1",
                    )?
                    .execute([id])
                });
            if undone.is_err() && !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
            return Err(e);
        }
    }
    Ok(Appended {
        message: Arc::new(Message {
            id: id as u64,
            from: m.sender_name,
            to: message_target(recipient_name, room_name),
            body: m.body,
            sent_at_ms: m.sent_at_ms,
            client_msg_id: m.client_msg_id,
        }),
        duplicate: false,
    })
}

/// The `WHERE` condition selecting a conversation's messages, and its
/// arguments (numbered from 1).
fn conversation_filter(conversation: Conversation) -> (&'static str, Vec<i64>) {
    match conversation {
        Conversation::Room(room) => ("room_id = ?1", vec![room.0]),
        Conversation::Direct(x, y) => (
            "((sender_id = ?1 AND recipient_id = ?2) OR (sender_id = ?2 AND recipient_id = ?1))",
            vec![x.0, y.0],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(from: AccountId, to: AccountId, body: &str) -> NewMessage {
        NewMessage {
            sender: from,
            sender_name: "alice".into(),
            recipient: Some((to, "bob".into())),
            room: None,
            body: body.into(),
            client_msg_id: None,
            sent_at_ms: 0,
        }
    }

    /// Queues a job that keeps the writer busy for `ms`, so that what is
    /// queued next shares one batch.
    fn hold_writer(
        store: &SqliteStore,
        ms: u64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        store.queue(
            move |_| {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(())
            },
            |_| {},
            true,
        )
    }

    /// An append that fails leaves nothing behind (no message without its
    /// inbox row), and the appends batched with it are stored.
    #[tokio::test]
    async fn a_failed_append_is_undone_whole_and_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let lobby = store.ensure_room("lobby", "lobby").await.unwrap().id;
        let mut ids = Vec::new();
        for name in ["alice", "bob", "carol"] {
            let id = store
                .create_account(name, name, "-", lobby, Box::new(|_| {}))
                .await
                .unwrap();
            ids.push(id);
        }
        let (alice, bob, carol) = (ids[0], ids[1], ids[2]);
        store.delete_account(carol).await.unwrap();

        // Queued behind a job that holds the writer, so they share one
        // transaction; the one to the deleted account breaks its inbox
        // row's foreign key.
        let gate = hold_writer(&store, 200);
        let first = store.append(dm(alice, bob, "one"), Box::new(|_| {}));
        let broken = store.append(dm(alice, carol, "lost"), Box::new(|_| {}));
        let last = store.append(dm(alice, bob, "two"), Box::new(|_| {}));
        let (gate, first, broken, last) = tokio::join!(gate, first, broken, last);
        gate.unwrap();
        assert!(broken.is_err(), "{broken:?}");
        let (first, last) = (first.unwrap().message.id, last.unwrap().message.id);

        assert_eq!(store.counts().await.unwrap().messages, 2);
        let waiting: Vec<u64> = store
            .pending(bob, 0, u64::MAX >> 1, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(waiting, [first, last]);
        assert!(
            store
                .pending(carol, 0, u64::MAX >> 1, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Commit hooks run in commit order, whether the answering thread or
    /// the writer itself runs them: a quiet append that commits while an
    /// earlier batch's hooks are still running waits for them.
    #[tokio::test]
    async fn hooks_run_in_commit_order_while_an_earlier_batch_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let lobby = store.ensure_room("lobby", "lobby").await.unwrap().id;
        let alice = store
            .create_account("alice", "alice", "-", lobby, Box::new(|_| {}))
            .await
            .unwrap();
        let bob = store
            .create_account("bob", "bob", "-", lobby, Box::new(|_| {}))
            .await
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let record = |pause: u64| -> CommitHook {
            let order = order.clone();
            Box::new(move |appended: &Appended| {
                std::thread::sleep(std::time::Duration::from_millis(pause));
                order.lock().unwrap().push(appended.message.id);
            })
        };

        // A batch too big for the writer to answer, whose first hook is slow.
        let gate = hold_writer(&store, 50);
        let batch: Vec<_> = (0..=QUIET_BATCH)
            .map(|i| store.append(dm(alice, bob, "busy"), record(if i == 0 { 300 } else { 0 })))
            .collect();
        let batch =
            tokio::spawn(async move { (gate.await, futures::future::join_all(batch).await) });

        // Committed alone, on a store with nothing else queued, while the
        // first batch's slow hook still runs.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let late = store
            .append(dm(alice, bob, "quiet"), record(0))
            .await
            .unwrap()
            .message
            .id;
        let (gate, batch) = batch.await.unwrap();
        gate.unwrap();
        for appended in batch {
            appended.unwrap();
        }

        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), QUIET_BATCH + 2);
        assert_eq!(order.last(), Some(&late), "{order:?}");
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    /// A database last opened by a version that wrote inbox rows from a
    /// trigger takes direct messages as before: each lands in the inbox
    /// once, not twice (which its primary key would refuse).
    #[tokio::test]
    async fn a_database_with_the_old_inbox_trigger_takes_direct_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (alice, bob) = {
            let store = SqliteStore::open(&path).unwrap();
            let lobby = store.ensure_room("lobby", "lobby").await.unwrap().id;
            let alice = store.create_account("alice", "alice", "-", lobby, Box::new(|_| {}));
            let bob = store.create_account("bob", "bob", "-", lobby, Box::new(|_| {}));
            let (alice, bob) = tokio::join!(alice, bob);
            store.close().await;
            (alice.unwrap(), bob.unwrap())
        };
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER messages_inbox AFTER INSERT ON messages
                     WHEN NEW.recipient_id IS NOT NULL
                 BEGIN
                     INSERT INTO inbox (account_id, message_id) VALUES (NEW.recipient_id, NEW.id);
                 END;",
            )
            .unwrap();

        let store = SqliteStore::open(&path).unwrap();
        let sent = store
            .append(dm(alice, bob, "hello"), Box::new(|_| {}))
            .await
            .unwrap();
        let waiting = store.pending(bob, 0, u64::MAX >> 1, 10).await.unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].id, sent.message.id);
        assert_eq!(waiting[0].body, "hello");
    }
}
