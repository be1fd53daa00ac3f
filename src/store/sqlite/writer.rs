//! The writer: one thread owns the only write connection and commits what is
//! queued in batches (group commit); a second thread answers each committed
//! batch and runs its commit hooks, in commit order, while the writer goes
//! on to the next one. When the store is quiet, the writer answers a small
//! batch itself and saves the hand-off.
//!
//! A failing job is undone alone: by its own savepoint, or, for an append,
//! by SQLite (a failed statement) and by the append itself (a message whose
//! inbox row failed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{SqliteStore, backend};
use crate::store::{HookScope, StoreError};

/// The most jobs one transaction takes.
const MAX_BATCH: usize = 4096;
/// Finished jobs whose fan-out reaches receivers together.
const WAKE_RUN: usize = 128;
/// Batches this small, with nothing else waiting, are answered by the
/// writer. A large batch wakes many callers, which would hold up the next
/// commit.
pub(super) const QUIET_BATCH: usize = 4;

const INSERT_MESSAGE: &str = "INSERT INTO messages (sender_id, sender_name, recipient_id,
    recipient_name, room_id, room_name, body, client_msg_id, sent_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const INSERT_INBOX: &str = "INSERT INTO inbox (account_id, message_id) VALUES (?1, ?2)";

/// Runs inside the write transaction; returns whether it succeeded and what
/// to do once the transaction's fate is known.
type Run = Box<dyn FnOnce(&Writer<'_>) -> (Result<(), StoreError>, Finish) + Send>;

/// Answers the caller: with the job's result if the commit succeeded.
type Finish = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A committed (or failed) batch's answers, for the answering thread.
type Answers = (Vec<Finish>, Result<(), StoreError>);

/// A mutation for the writer.
pub(super) struct Job {
    run: Run,
    /// Whether `run` makes changes that must stand or fall together, and so
    /// needs a savepoint of its own. A job that undoes its own failures
    /// does not: SQLite undoes a failed statement by itself, and an append
    /// deletes its message again if its inbox row fails. Appends are most
    /// of the writer's work, and a savepoint costs two statements and makes
    /// SQLite copy every page the job touches into a journal first.
    savepoint: bool,
}

/// The writer's connection, and the two statements it runs for every
/// message, kept prepared: rusqlite's statement cache hashes the SQL text
/// on the way out and again on the way back, on every message.
pub(super) struct Writer<'c> {
    pub(super) conn: &'c Connection,
    pub(super) insert_message: Prepared<'c>,
    pub(super) insert_inbox: Prepared<'c>,
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
pub(super) struct Prepared<'c> {
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

    pub(super) fn execute(
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

impl SqliteStore {
    /// Queues a mutation for the next group commit and waits for the commit.
    pub(super) async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.write_then(f, |_| {}).await
    }

    /// Like [`write`](Self::write), and runs `then` after a successful
    /// commit, in commit order, before answering.
    pub(super) async fn write_then<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> Result<R, StoreError> + Send + 'static,
        then: impl FnOnce(&R) + Send + 'static,
    ) -> Result<R, StoreError> {
        let then = |value: R| {
            then(&value);
            value
        };
        self.queue(f, then, true).await
    }

    /// Queues a job now (so jobs keep the order they were queued in) and
    /// returns a future for its answer. Without `savepoint`, `f` must undo
    /// by itself whatever it wrote before failing.
    pub(super) fn queue<R: Send + 'static, S: Send + 'static>(
        &self,
        f: impl FnOnce(&Writer<'_>) -> Result<R, StoreError> + Send + 'static,
        then: impl FnOnce(R) -> S + Send + 'static,
        savepoint: bool,
    ) -> impl std::future::Future<Output = Result<S, StoreError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let run: Run = Box::new(move |writer| {
            let result = f(writer);
            let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
            let finish: Finish = Box::new(move |commit_error| {
                let _ = reply.send(match commit_error {
                    Some(e) => Err(e.clone()),
                    None => result.map(then),
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
}

/// Starts the writer thread on `conn`; it runs until the returned sender
/// and every clone of it are dropped, and then finishes what is queued.
pub(super) fn start(
    conn: Connection,
    scope: Arc<OnceLock<HookScope>>,
) -> Result<(mpsc::UnboundedSender<Job>, JoinHandle<()>), StoreError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || write_loop(conn, rx, scope))
        .map_err(|e| StoreError::failed("cannot start the writer", e))?;
    Ok((tx, thread))
}

fn write_loop(
    conn: Connection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    scope: Arc<OnceLock<HookScope>>,
) {
    let answering = Answering::start(scope);
    let writer = Writer::new(&conn);
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while collect_batch(&mut jobs, &mut batch) {
        let (finishes, commit) = commit_batch(&writer, &mut batch);
        answering.hand(finishes, commit, jobs.is_empty());
    }
    answering.stop();
}

/// Waits for a job, then takes whatever else is queued, up to
/// [`MAX_BATCH`]. False once the queue is closed and empty.
fn collect_batch(jobs: &mut mpsc::UnboundedReceiver<Job>, batch: &mut Vec<Job>) -> bool {
    let Some(first) = jobs.blocking_recv() else {
        return false;
    };
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    true
}

/// Runs a batch in one transaction and commits it. Returns each job's
/// answer, in order, and the commit's outcome; if the transaction failed,
/// it is rolled back, and jobs that never ran are dropped with their
/// replies, which their callers see as an unavailable store.
fn commit_batch(writer: &Writer<'_>, batch: &mut Vec<Job>) -> Answers {
    let conn = writer.conn;
    let mut finishes = Vec::with_capacity(batch.len());
    let (started, size) = (std::time::Instant::now(), batch.len());
    let commit = conn
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(backend)
        .and_then(|()| {
            batch
                .drain(..)
                .try_for_each(|job| run_job(writer, job, &mut finishes))
        })
        .and_then(|()| conn.execute_batch("COMMIT").map_err(backend));
    match &commit {
        Ok(()) => crate::metrics::committed(size, started.elapsed()),
        Err(e) => {
            tracing::error!(error = %e, "commit failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
    }
    batch.clear();
    (finishes, commit)
}

/// Runs one job in the open transaction, in a savepoint of its own if it
/// asks for one, and keeps its answer. An error means the transaction is
/// gone: no later job may run outside it.
fn run_job(writer: &Writer<'_>, job: Job, finishes: &mut Vec<Finish>) -> Result<(), StoreError> {
    let conn = writer.conn;
    let opened = match job.savepoint {
        true => savepoint(conn, "SAVEPOINT job").map(|()| true),
        false => Ok(false),
    };
    let (outcome, finish) = (job.run)(writer);
    let ok = outcome.is_ok();
    finishes.push(finish);
    let ended = match opened {
        Ok(true) if ok => savepoint(conn, "RELEASE job"),
        Ok(true) => {
            savepoint(conn, "ROLLBACK TO job").and_then(|()| savepoint(conn, "RELEASE job"))
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    // On a full disk or an I/O error SQLite rolls the whole transaction
    // back by itself: nothing in it may be reported as stored.
    if ended.is_ok() && !conn.is_autocommit() {
        return Ok(());
    }
    Err(match (ended, outcome) {
        (Err(e), _) => backend(e),
        // The job's own error says why SQLite gave up.
        (Ok(()), Err(StoreError::DiskFull)) => StoreError::DiskFull,
        (Ok(()), _) => StoreError::Backend("the transaction was rolled back".into()),
    })
}

/// Runs a savepoint statement, prepared once per connection.
fn savepoint(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// The answering thread, which answers committed batches in commit order.
struct Answering {
    answers: std::sync::mpsc::Sender<Answers>,
    /// Batches handed to the answering thread and not yet answered.
    unanswered: Arc<AtomicUsize>,
    /// None if it could not start: then the writer answers every batch.
    thread: Option<JoinHandle<()>>,
    scope: Arc<OnceLock<HookScope>>,
}

impl Answering {
    fn start(scope: Arc<OnceLock<HookScope>>) -> Answering {
        let (answers, answering) = std::sync::mpsc::channel::<Answers>();
        let unanswered = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
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
        Answering {
            answers,
            unanswered,
            thread,
            scope,
        }
    }

    /// Answers a batch, or hands it to the answering thread. With nothing
    /// waiting (`quiet`), a small batch is answered here: a hand-off costs a
    /// thread wake-up, which a quiet message would wait for. Only once every
    /// earlier batch is answered, or hooks would run out of commit order.
    /// Under load, the answering thread takes the batch and the writer goes
    /// on to the next commit.
    fn hand(&self, finishes: Vec<Finish>, commit: Result<(), StoreError>, quiet: bool) {
        if finishes.len() <= QUIET_BATCH && quiet && self.unanswered.load(Ordering::Acquire) == 0 {
            answer(finishes, &commit, &self.scope);
            return;
        }
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        // Without an answering thread (it could not start, or it died),
        // the writer answers itself.
        if let Err(std::sync::mpsc::SendError((finishes, commit))) =
            self.answers.send((finishes, commit))
        {
            self.unanswered.fetch_sub(1, Ordering::Relaxed);
            answer(finishes, &commit, &self.scope);
        }
    }

    /// Lets the answering thread answer what it holds, and waits for it.
    fn stop(self) {
        drop(self.answers);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::AccountId;
    use crate::store::{Appended, CommitHook, NewMessage, Store, after_commit};

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
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let hook = || {
            let delivered = delivered.clone();
            after_commit(move |appended: Appended| {
                delivered.lock().unwrap().push(appended.message.body);
            })
        };
        let first = store.append(dm(alice, bob, "one"), hook());
        let broken = store.append(dm(alice, carol, "lost"), hook());
        let last = store.append(dm(alice, bob, "two"), hook());
        let (gate, first, broken, last) = tokio::join!(gate, first, broken, last);
        gate.unwrap();
        assert!(broken.is_err(), "{broken:?}");
        // What failed is never handed on to be delivered.
        assert_eq!(*delivered.lock().unwrap(), ["one", "two"]);
        let (first, last) = (first.unwrap().id, last.unwrap().id);

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
        let record = |pause: u64| -> Box<dyn CommitHook> {
            let order = order.clone();
            after_commit(move |appended: Appended| {
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
}
