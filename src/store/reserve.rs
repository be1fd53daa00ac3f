//! The disk reserve: below a set amount of free space in the data dir, new
//! messages are refused, so the space left goes to what keeps the server
//! usable (logins, acknowledgements, the log's checkpoints) rather than to
//! whoever sends most.
//!
//! Free space is read with `statvfs` at most once a second, by the first
//! append that finds the last reading stale: a reading costs a system call,
//! and a disk does not fill between two sends a millisecond apart, while a
//! thread polling it would wake an idle server every second.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// How old a reading may be before the next append takes a new one.
const STALE_MS: i64 = 1000;

#[derive(Debug)]
pub struct DiskReserve {
    dir: PathBuf,
    min_free: u64,
    checked_ms: AtomicI64,
    nearly_full: AtomicBool,
}

impl DiskReserve {
    /// Watches the file system holding `dir`; `min_free` of 0 turns it off.
    pub fn new(dir: &Path, min_free: u64) -> DiskReserve {
        let reserve = DiskReserve {
            dir: dir.to_owned(),
            min_free,
            checked_ms: AtomicI64::new(i64::MIN),
            nearly_full: AtomicBool::new(false),
        };
        reserve.is_nearly_full();
        reserve
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// True while the free space is under the reserve.
    pub fn is_nearly_full(&self) -> bool {
        if self.min_free == 0 {
            return false;
        }
        let now = crate::model::now_ms();
        let last = self.checked_ms.load(Ordering::Relaxed);
        // One caller takes the reading; the others use the last one.
        if now.saturating_sub(last) >= STALE_MS
            && self
                .checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.read();
        }
        self.nearly_full.load(Ordering::Relaxed)
    }

    fn read(&self) {
        let free = match free_bytes(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                // A reading that fails says nothing about the space: keep the last state.
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read free disk space");
                return;
            }
        };
        let full = free < self.min_free;
        if self.nearly_full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(
                    dir = %self.dir.display(),
                    free,
                    reserve = self.min_free,
                    "disk nearly full: refusing new messages"
                );
            } else {
                tracing::info!(
                    dir = %self.dir.display(),
                    free,
                    reserve = self.min_free,
                    "disk space back above the reserve: taking messages again"
                );
            }
        }
    }
}

/// Bytes an unprivileged process may still write on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes only into `stat`, which is large enough for it;
    // `path` is a NUL-terminated string that outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_is_nearly_full_and_zero_is_off() {
        let dir = tempfile::tempdir().expect("temp dir");
        let free = free_bytes(dir.path()).expect("statvfs");
        assert!(free > 0);
        assert!(DiskReserve::new(dir.path(), free.saturating_mul(2).max(1)).is_nearly_full());
        assert!(!DiskReserve::new(dir.path(), 1).is_nearly_full());
        assert!(!DiskReserve::new(dir.path(), 0).is_nearly_full());
    }
}
