//! Password hashing on a small fixed pool of threads.
//!
//! argon2id uses 19 MiB per hash by design. Hashing on the async runtime's
//! blocking pool would let a burst of logins start hundreds of threads, each
//! keeping its own allocator arena: memory would grow with the burst. A pool
//! of one thread per core bounds both the CPU and the memory that password
//! checks can take; a burst waits in the queue instead.

use std::sync::{Mutex, mpsc};

use argon2::password_hash::{PasswordHash, SaltString, rand_core::OsRng};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::sync::oneshot;

use super::CoreError;
use crate::store::StoreError;

enum Job {
    Hash(String, oneshot::Sender<Result<String, String>>),
    Verify(String, String, oneshot::Sender<bool>),
}

/// Password checks that may wait for a thread; past this, a login is told
/// the server is busy instead of queueing without bound.
const QUEUE: usize = 256;

pub struct PasswordPool {
    jobs: Mutex<mpsc::SyncSender<Job>>,
}

fn failed(e: impl std::fmt::Display) -> CoreError {
    CoreError::Store(StoreError::Backend(format!("password hashing failed: {e}")))
}

impl PasswordPool {
    pub fn new() -> PasswordPool {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    loop {
                        // Take one job, then let go of the queue while working.
                        let job = match rx.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => run(job),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password thread");
            }
        }
        PasswordPool {
            jobs: Mutex::new(tx),
        }
    }

    fn submit(&self, job: Job) -> Result<(), CoreError> {
        match self.jobs.lock().map_err(failed)?.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(_)) => Err(CoreError::Limit(
                "the server is busy checking passwords: try again in a moment".into(),
            )),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(failed("no password threads")),
        }
    }

    pub async fn hash(&self, password: &str) -> Result<String, CoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Hash(password.to_owned(), tx))?;
        rx.await.map_err(failed)?.map_err(failed)
    }

    pub async fn verify(&self, password: &str, hash: &str) -> Result<bool, CoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Verify(password.to_owned(), hash.to_owned(), tx))?;
        rx.await.map_err(failed)
    }
}

impl Default for PasswordPool {
    fn default() -> Self {
        Self::new()
    }
}

fn run(job: Job) {
    match job {
        // Whoever asked has gone (a client that disconnected mid-login).
        Job::Hash(_, reply) if reply.is_closed() => {}
        Job::Verify(_, _, reply) if reply.is_closed() => {}
        Job::Hash(password, reply) => {
            let salt = SaltString::generate(&mut OsRng);
            let hashed = Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string());
            let _ = reply.send(hashed);
        }
        Job::Verify(password, hash, reply) => {
            let ok = PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            });
            let _ = reply.send(ok);
        }
    }
}
