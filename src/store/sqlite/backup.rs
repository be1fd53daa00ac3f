//! A consistent copy of a live SQLite store, by SQLite's online backup API.
//!
//! The copy reads through a connection of its own, in one step: one read
//! transaction, so it is one consistent snapshot, and under write-ahead
//! logging a reader never blocks the server's writer (copied in smaller
//! steps, a write between two would restart it, and a busy server's copy
//! might never end). It is written beside the destination and renamed into
//! place once complete and checked, so a copy that failed halfway is never
//! taken for a backup.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::backend;
use crate::store::StoreError;

/// What a backup copied.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    pub pages: u64,
    pub bytes: u64,
}

/// Copies the database at `db` to a new file at `to`; refuses to overwrite.
pub fn backup(db: &Path, to: &Path) -> Result<Copied, StoreError> {
    if !db.exists() {
        return Err(StoreError::Backend(format!(
            "no database at {}",
            db.display()
        )));
    }
    if to.exists() {
        return Err(StoreError::Backend(format!(
            "{} exists already: name a new file",
            to.display()
        )));
    }
    let partial = to.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let copied = copy(db, &partial).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    std::fs::rename(&partial, to)
        .map_err(|e| StoreError::failed(format!("cannot move the copy to {}", to.display()), e))?;
    Ok(copied)
}

fn copy(db: &Path, to: &Path) -> Result<Copied, StoreError> {
    let source = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    source
        .busy_timeout(Duration::from_secs(5))
        .map_err(backend)?;
    let mut copy = Connection::open(to).map_err(backend)?;
    {
        let backup = Backup::new(&source, &mut copy).map_err(backend)?;
        // -1: every page in one step, one snapshot.
        loop {
            match backup.step(-1).map_err(backend)? {
                StepResult::Done => break,
                // The writer holds a lock for a moment: try again.
                StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {}
            }
        }
    }
    let pages: u64 = copy
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(backend)?;
    let page_size: u64 = copy
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(backend)?;
    let check: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(backend)?;
    if check != "ok" {
        return Err(StoreError::Backend(format!(
            "the copy failed its check: {check}"
        )));
    }
    // A backup that is only in the page cache is not one yet.
    copy.execute_batch("PRAGMA journal_mode = DELETE")
        .map_err(backend)?;
    drop(copy);
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::failed(format!("cannot sync {}", to.display()), e))?;
    Ok(Copied {
        pages,
        bytes: pages * page_size,
    })
}
