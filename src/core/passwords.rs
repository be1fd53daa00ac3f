//! Password hashing on a small fixed pool of threads.
//!
//! argon2id uses 19 MiB per hash by design. Hashing on the async runtime's
//! blocking pool would let a burst of logins start hundreds of threads, each
//! keeping its own allocator arena: memory would grow with the burst. A pool
//! of one thread per core bounds both the CPU and the memory that password
//! checks can take; a burst waits in a short queue, and past it is told the
//! server is busy.
//!
//! Each thread keeps one argon2 work area for its life and hashes into it.
//! Allocating 19 MiB per hash instead left most of each allocation resident
//! (glibc raises its mmap threshold after the first such block is freed, and
//! serves the next ones from per-thread arenas it does not give back): 200
//! checks grew the process by 190 MiB. Reused, the pool holds one area per
//! thread, whatever the number of checks.

use std::sync::{Mutex, mpsc};

use argon2::password_hash::{Output, PasswordHash, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use super::CoreError;
use crate::store::StoreError;

enum Job {
    Hash(String, oneshot::Sender<Result<String, String>>),
    Verify(String, String, oneshot::Sender<bool>),
}

/// Password checks that may wait for each thread; past this, a login is
/// told the server is busy at once instead of waiting behind a flood. With
/// checks of about 40 ms, a full queue is well under a second's wait.
const QUEUE_PER_THREAD: usize = 16;

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
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_PER_THREAD * threads);
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        // Take one job, then let go of the queue while working.
                        let job = match rx.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => run(job, &mut memory),
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
            Err(mpsc::TrySendError::Full(_)) => {
                Err(CoreError::Limit("server busy; try again".into()))
            }
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

fn run(job: Job, memory: &mut Vec<Block>) {
    match job {
        // Whoever asked has gone (a client that disconnected mid-login).
        Job::Hash(_, reply) if reply.is_closed() => {}
        Job::Verify(_, _, reply) if reply.is_closed() => {}
        Job::Hash(password, reply) => {
            let _ = reply.send(hash(&password, memory).map_err(|e| e.to_string()));
        }
        Job::Verify(password, hash, reply) => {
            let _ = reply.send(verify(&password, &hash, memory));
        }
    }
    // A stored hash with larger parameters than ours may have grown the
    // area; keep only what our own hashes need.
    let usual = Params::default().block_count();
    if memory.len() > usual {
        memory.truncate(usual);
        memory.shrink_to_fit();
    }
}

/// Runs argon2 in the thread's work area, grown to what `argon2` needs.
fn hash_into(
    argon2: &Argon2<'_>,
    password: &str,
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Vec<Block>,
) -> argon2::Result<()> {
    let blocks = argon2.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    argon2.hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
}

/// A new PHC string (argon2id, default parameters, random salt).
fn hash(password: &str, memory: &mut Vec<Block>) -> Result<String, argon2::password_hash::Error> {
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    hash_into(&argon2, password, salt_bytes, &mut out, memory)?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into()?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out)?),
    }
    .to_string())
}

/// Whether `password` matches the PHC string `stored`.
fn verify(password: &str, stored: &str, memory: &mut Vec<Block>) -> bool {
    let mut check = || -> Result<bool, argon2::password_hash::Error> {
        let parsed = PasswordHash::new(stored)?;
        let algorithm = Algorithm::try_from(parsed.algorithm)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let params = Params::try_from(&parsed)?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Ok(false);
        };
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
        let mut out = vec![0u8; expected.len()];
        hash_into(
            &Argon2::new(algorithm, version, params),
            password,
            salt_bytes,
            &mut out,
            memory,
        )?;
        // Output compares in constant time.
        Ok(Output::new(&out)? == expected)
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordVerifier;

    #[test]
    fn hashes_verify_both_ways_with_the_argon2_crate() {
        let mut memory = Vec::new();
        let ours = hash("hunter2", &mut memory).unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        assert!(verify("hunter2", &ours, &mut memory));
        assert!(!verify("hunter3", &ours, &mut memory));
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"hunter2", &parsed)
                .is_ok()
        );
        // A hash made with argon2's own defaults, not through the pool.
        let theirs = {
            use argon2::PasswordHasher;
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(b"swordfish", &salt)
                .unwrap()
                .to_string()
        };
        assert!(verify("swordfish", &theirs, &mut memory));
        assert!(!verify("swordfish", "not a hash", &mut memory));
        assert_eq!(memory.len(), Params::default().block_count());
    }
}
