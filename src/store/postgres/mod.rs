//! The PostgreSQL store: several meshtalk nodes on one database, any node
//! serving any account.
//!
//! The contract is SQLite's: a mutation is answered only after its
//! `COMMIT` (with `synchronous_commit` on), and commit hooks run right after
//! it, in commit order. Each node has one writer task on a connection of
//! its own; it takes every mutation waiting, runs them in one transaction,
//! and commits once, so concurrent sends share the transaction, its round
//! trips (multi-row statements, pipelined) and its flush. Reads and the
//! mutations that need no hook go to a small pool of connections.
//!
//! Message ids come from one counter row, `message_ids`, which a writer
//! updates inside its transaction: the row stays locked until that commit,
//! so the writers of all nodes take ids one transaction after another, and
//! ids increase in commit order. A sequence would not give that: two
//! transactions may commit in the opposite order of their ids, and a reader
//! whose cursor passed the later id would never see the earlier one.
//!
//! The SQL stays within what PostgreSQL-wire distributed engines run: no
//! triggers, no LISTEN/NOTIFY, BIGINT keys, and every transaction retried on
//! a serialization failure (SQLSTATE 40001) or a deadlock. The one
//! exception is the advisory lock that keeps two nodes from migrating an
//! empty database at once (`schema.rs`).
//!
//! The files:
//!
//! - `mod.rs`: [`PostgresStore`], connecting, and how errors are read;
//! - `schema.rs`: the numbered migrations, applied at open;
//! - `writer.rs`: the writer task, group commit of appends, accounts and
//!   memberships, and the commit hooks in their scope;
//! - `queries.rs`: reads, and the writes that run on the pool;
//! - `store.rs`: the [`Store`](super::Store) trait over the two.

mod queries;
mod retention;
mod schema;
mod store;
mod writer;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::{HookScope, StoreError};

/// Connections for reads and for writes without hooks.
const POOL_SIZE: usize = 8;

/// How long a call waits for a pooled connection, or for a new one.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// How many times a transaction is tried when the database asks for a
/// retry (serialization failure, deadlock, a clash with another node's
/// commit) before the error goes to the caller.
const ATTEMPTS: usize = 5;

pub struct PostgresStore {
    jobs: Mutex<Option<mpsc::UnboundedSender<writer::Op>>>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    pool: Pool,
    /// What the hooks of each committed batch run inside; set once.
    hook_scope: Arc<OnceLock<HookScope>>,
    /// The database's id, the same for every node on it.
    shared_id: String,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER@HOST:PORT/DB`)
    /// and brings its schema up to date.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::failed(format!("bad PostgreSQL URL {url:?}"), e))?;
        let client = connect(&config).await?;
        warn_if_commits_are_not_durable(&client).await;
        schema::migrate(&client).await?;
        let shared_id = schema::store_id(&client).await?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StoreError::failed("cannot build the connection pool", e))?;
        let hook_scope = Arc::new(OnceLock::new());
        let (jobs, task) = writer::start(config, client, hook_scope.clone()).await?;
        Ok(PostgresStore {
            jobs: Mutex::new(Some(jobs)),
            writer_task: Mutex::new(Some(task)),
            pool,
            hook_scope,
            shared_id,
        })
    }

    /// Lets the writer commit what is queued, then waits for it to stop.
    async fn shut_down(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let task = self.writer_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        self.pool.close();
    }
}

/// A connection of its own, its driver running on a task.
async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| StoreError::failed("cannot connect to PostgreSQL", e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// An acknowledgement promises the message survives a crash of the
/// database server too; with `synchronous_commit` off it would not, so the
/// operator is told.
async fn warn_if_commits_are_not_durable(client: &tokio_postgres::Client) {
    let setting = match client.query_one("SHOW synchronous_commit", &[]).await {
        Ok(row) => row.get::<_, String>(0),
        Err(_) => return,
    };
    if setting == "off" {
        tracing::warn!(
            "synchronous_commit is off on this database: a message acknowledged just before \
             the database server crashes may be lost; turn it on for meshtalk's guarantee"
        );
    }
}

fn backend(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        // As with SQLite: the user is told the disk is full, and can try
        // again once space is freed.
        Some(code) if *code == SqlState::DISK_FULL => StoreError::DiskFull,
        _ => StoreError::database(e),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => backend(e),
        e => StoreError::failed("no PostgreSQL connection", e),
    }
}

/// The database asks for the transaction to be run again: another one
/// conflicted with it (another node's commit, in most cases), and a
/// second try sees what that one committed.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::UNIQUE_VIOLATION,
            SqlState::FOREIGN_KEY_VIOLATION,
        ]
        .contains(code)
    })
}
