//! One server per data dir: an exclusive `flock` on `meshtalk.lock` beside
//! the database, held for the life of the server.
//!
//! Two servers writing one SQLite file would each believe its own directory
//! and caches, and each hand out message ids the other does not know about.
//! `flock` is released by the kernel when the process dies, however it dies,
//! so a `kill -9` never leaves a stale lock behind; the pid written in the
//! file only names the holder in the refusal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::StoreError;

pub const LOCK_FILE: &str = "meshtalk.lock";

/// The data dir's lock; dropping it lets the next server in.
#[derive(Debug)]
pub struct DataDirLock {
    // Closing the file releases the lock.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `dir`, creating it if needed, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, StoreError> {
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::InUse(format!(
                "the data dir {} is a file: name a directory (or one to create)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::failed(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(LOCK_FILE);
        let cannot =
            |e: std::io::Error| StoreError::failed(format!("cannot lock {}", path.display()), e);
        // Not truncated on open: the holder's pid must survive a refused open.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(cannot)?;
        // SAFETY: flock only acts on the descriptor, which `file` keeps open.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(cannot(e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("process {pid}"),
                Err(_) => "another process".to_owned(),
            };
            return Err(StoreError::InUse(format!(
                "the data dir {} is in use by {holder} ({LOCK_FILE}); stop it first",
                dir.display()
            )));
        }
        file.set_len(0).map_err(cannot)?;
        file.seek(SeekFrom::Start(0)).map_err(cannot)?;
        writeln!(file, "{}", std::process::id()).map_err(cannot)?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_names_the_holder_until_the_first_goes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("data");
        let first = DataDirLock::acquire(&db).expect("first lock");
        let refused = DataDirLock::acquire(&db).expect_err("second lock refused");
        let text = refused.to_string();
        assert!(
            text.contains(&format!("in use by process {}", std::process::id()))
                && text.contains("meshtalk.lock")
                && text.ends_with("stop it first"),
            "{text}"
        );
        drop(first);
        DataDirLock::acquire(&db).expect("free again once the first is dropped");
    }
}
