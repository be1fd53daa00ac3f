//! The read pool: a few read-only connections, which in WAL mode run beside
//! the writer and see every committed batch.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::{SqliteStore, backend};
use crate::store::StoreError;

const READERS: usize = 4;

pub(super) struct ReadPool {
    connections: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub(super) fn open(path: &Path) -> Result<ReadPool, StoreError> {
        let mut connections = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(backend)?;
            conn.execute_batch("PRAGMA busy_timeout = 5000;")
                .map_err(backend)?;
            connections.push(conn);
        }
        Ok(ReadPool {
            connections: Arc::new(Mutex::new(connections)),
            permits: Arc::new(Semaphore::new(READERS)),
        })
    }
}

impl SqliteStore {
    /// Runs `f` on a free read connection, on a blocking thread.
    pub(super) async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, StoreError> {
        // The permit moves into the blocking task: if the caller goes away,
        // the connection stays counted until it is back in the pool.
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = self.readers.connections.clone();
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
        .map_err(|e| StoreError::failed("reader failed", e))?
    }
}
