//! Acknowledgements, merged in memory and written to the store in batches.
//!
//! A receiver acknowledges what it has shown so that it is not delivered
//! again. Writing each acknowledgement as it comes would cost the store one
//! job per delivery batch per connection: at 1,000 messages a second into a
//! room of 100, that is 100,000 cursor updates a second competing with the
//! messages themselves for the writer. Instead an acknowledgement is merged
//! here (a room's cursor is only its newest id) and the merged set is written
//! within [`ACK_DELAY`], in one store job.
//!
//! The delivery contract allows this: what is unacknowledged is delivered
//! again, and every message carries a stable id. An acknowledgement lost to
//! a crash before its write means a few messages come again at the next
//! login, never that one is lost. A login does not see stale cursors:
//! [`Acks::flush_account`] runs before a session's backlog is read, and
//! everything is written on shutdown.
//!
//! What waits is bounded: past [`FLUSH_AT`] entries the writer is woken at
//! once, a write goes to the store in jobs of at most that many, so that
//! sends are not held up behind one long job, and past [`HOLD_AT`] a client
//! that acknowledges waits for the write, as it did when every
//! acknowledgement was a store job of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::model::{AccountId, RoomId};
use crate::store::{AccountAcks, Store, StoreError};

/// How long an acknowledgement may wait in memory before it is written.
pub const ACK_DELAY: Duration = Duration::from_millis(100);
/// Pending ids and room cursors that are written at once, without waiting
/// for [`ACK_DELAY`]; also the most one store job takes.
const FLUSH_AT: usize = 16_384;
/// Pending ids and room cursors past which acknowledging waits for a write.
const HOLD_AT: usize = 4 * FLUSH_AT;

pub struct Acks {
    store: Arc<dyn Store>,
    pending: Mutex<Pending>,
    /// Held from taking a pending set until it is written, so a flush that
    /// finds nothing pending also knows nothing is still on its way.
    writing: tokio::sync::Mutex<()>,
    /// Woken by the first acknowledgement after a write.
    first: Notify,
    /// Woken when [`FLUSH_AT`] is reached, or when closing.
    full: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct Pending {
    by_account: HashMap<AccountId, AccountAcks>,
    entries: usize,
}

impl Acks {
    /// Starts the task that writes acknowledgements within [`ACK_DELAY`].
    pub fn start(store: Arc<dyn Store>) -> Arc<Acks> {
        let acks = Arc::new(Acks {
            store,
            pending: Mutex::new(Pending::default()),
            writing: tokio::sync::Mutex::new(()),
            first: Notify::new(),
            full: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let writer = acks.clone();
        tokio::spawn(async move {
            while !writer.closed.load(Ordering::SeqCst) {
                writer.first.notified().await;
                tokio::select! {
                    _ = tokio::time::sleep(ACK_DELAY) => {}
                    _ = writer.full.notified() => {}
                }
                if let Err(e) = writer.flush().await {
                    tracing::warn!(error = %e, "writing acknowledgements failed; those messages will come again");
                }
            }
        });
        acks
    }

    /// Entries waiting to be written.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.entries)
    }

    /// Records that `account` has been shown the direct messages (or
    /// messages of unknown room) `ids` and each room's speech up to its id.
    /// Returns whether so much is pending that the caller should wait for
    /// a [`flush`](Acks::flush) before acknowledging more.
    pub fn record(&self, account: AccountId, ids: &[u64], rooms: &[(RoomId, u64)]) -> bool {
        if ids.is_empty() && rooms.is_empty() {
            return false;
        }
        if self.closed.load(Ordering::SeqCst) {
            tracing::debug!(
                %account,
                "acknowledgement after shutdown; its messages will come again"
            );
            return false;
        }
        let (was_empty, entries) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let was_empty = pending.by_account.is_empty();
            let entry = pending
                .by_account
                .entry(account)
                .or_insert_with(|| AccountAcks {
                    account,
                    ids: Vec::new(),
                    rooms: Vec::new(),
                });
            entry.ids.extend_from_slice(ids);
            let mut added = ids.len();
            for &(room, id) in rooms {
                match entry.rooms.iter_mut().find(|(r, _)| *r == room) {
                    Some((_, newest)) => *newest = (*newest).max(id),
                    None => {
                        entry.rooms.push((room, id));
                        added += 1;
                    }
                }
            }
            pending.entries += added;
            (was_empty, pending.entries)
        };
        if was_empty {
            self.first.notify_one();
        }
        if entries >= FLUSH_AT {
            self.full.notify_one();
        }
        entries >= HOLD_AT
    }

    /// Writes everything recorded so far, and waits for any write already
    /// under way: once this returns, the store has every acknowledgement
    /// recorded before it was called.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let batch: Vec<AccountAcks> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.entries = 0;
            pending.by_account.drain().map(|(_, acks)| acks).collect()
        };
        self.write(batch).await
    }

    /// Writes what is recorded for `account`, after any write already under
    /// way (which may hold some of it). A failure is logged, not returned:
    /// what it would have acknowledged is delivered again.
    pub async fn flush_account(&self, account: AccountId) {
        let _writing = self.writing.lock().await;
        let mine = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let mine = pending.by_account.remove(&account);
            if let Some(acks) = &mine {
                pending.entries = pending
                    .entries
                    .saturating_sub(acks.ids.len() + acks.rooms.len());
            }
            mine
        };
        if let Some(acks) = mine
            && let Err(e) = self.write(vec![acks]).await
        {
            tracing::warn!(error = %e, %account, "writing acknowledgements failed; those messages will come again");
        }
    }

    /// Writes `batch` in store jobs of at most about [`FLUSH_AT`] entries,
    /// one after another, so that sends queued meanwhile go between them.
    async fn write(&self, batch: Vec<AccountAcks>) -> Result<(), StoreError> {
        let mut job: Vec<AccountAcks> = Vec::new();
        let mut size = 0;
        for AccountAcks {
            account,
            mut ids,
            rooms,
        } in batch
        {
            // A client may acknowledge the same id more than once.
            ids.sort_unstable();
            ids.dedup();
            // An account's room cursors (a few, one per room it is in) go
            // whole; its ids are split where a job is full.
            size += rooms.len();
            job.push(AccountAcks {
                account,
                ids: Vec::new(),
                rooms,
            });
            for id in ids {
                if size >= FLUSH_AT {
                    self.store.ack(std::mem::take(&mut job)).await?;
                    size = 0;
                    job.push(AccountAcks {
                        account,
                        ids: Vec::new(),
                        rooms: Vec::new(),
                    });
                }
                if let Some(last) = job.last_mut() {
                    last.ids.push(id);
                }
                size += 1;
            }
        }
        if size > 0 {
            self.store.ack(job).await?;
        }
        Ok(())
    }

    /// Writes what is pending and stops the background writer.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.first.notify_one();
        self.full.notify_one();
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "writing the last acknowledgements failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per account: the ids and room cursors waiting to be written.
    type Waiting = HashMap<AccountId, (Vec<u64>, Vec<(RoomId, u64)>)>;

    fn pending(acks: &Acks) -> Waiting {
        let pending = acks.pending.lock().unwrap();
        pending
            .by_account
            .iter()
            .map(|(a, p)| (*a, (p.ids.clone(), p.rooms.clone())))
            .collect()
    }

    async fn store_with_dms(count: usize) -> (tempfile::TempDir, Arc<dyn Store>, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::SqliteStore::open(&dir.path().join("db")).unwrap());
        let lobby = store.ensure_room("lobby", "lobby").await.unwrap().id;
        let mut ids = Vec::new();
        for name in ["alice", "bob"] {
            ids.push(
                store
                    .create_account(name, name, "-", lobby, Box::new(|_| {}))
                    .await
                    .unwrap(),
            );
        }
        let (alice, bob) = (ids[0], ids[1]);
        let mut sent = Vec::new();
        for i in 0..count {
            let appended = store
                .append(
                    crate::store::NewMessage {
                        sender: alice,
                        sender_name: "alice".into(),
                        recipient: Some((bob, "bob".into())),
                        room: None,
                        body: format!("dm-{i}"),
                        client_msg_id: None,
                        sent_at_ms: 0,
                    },
                    crate::store::after_commit(|_| {}),
                )
                .await
                .unwrap();
            sent.push(appended.id);
        }
        (dir, store, sent)
    }

    async fn waiting_for_bob(store: &Arc<dyn Store>) -> Vec<u64> {
        let page = store
            .pending(AccountId(2), 0, u64::MAX >> 1, 100)
            .await
            .unwrap();
        page.into_iter().map(|m| m.id).collect()
    }

    #[tokio::test]
    async fn records_merge_to_the_newest_id_per_room() {
        let (_dir, store, _) = store_with_dms(0).await;
        let acks = Acks::start(store);
        acks.record(AccountId(1), &[10], &[(RoomId(5), 7)]);
        acks.record(AccountId(1), &[11], &[(RoomId(5), 3), (RoomId(6), 9)]);
        acks.record(AccountId(2), &[], &[(RoomId(5), 8)]);
        acks.record(AccountId(3), &[], &[]);
        let seen = pending(&acks);
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[&AccountId(1)],
            (vec![10, 11], vec![(RoomId(5), 7), (RoomId(6), 9)])
        );
        assert_eq!(seen[&AccountId(2)], (vec![], vec![(RoomId(5), 8)]));
        acks.flush().await.unwrap();
        assert!(pending(&acks).is_empty());
        acks.close().await;
    }

    #[tokio::test]
    async fn recorded_acks_reach_the_store_on_flush_on_close_and_in_time() {
        let (_dir, store, sent) = store_with_dms(6).await;
        assert_eq!(waiting_for_bob(&store).await, sent);
        let acks = Acks::start(store.clone());

        acks.record(AccountId(2), &sent[..2], &[]);
        acks.flush().await.unwrap();
        assert_eq!(waiting_for_bob(&store).await, sent[2..]);

        acks.record(AccountId(2), &sent[2..4], &[]);
        // Written by the background task, without anyone asking.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while waiting_for_bob(&store).await != sent[4..] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not written in time"
            );
            tokio::time::sleep(ACK_DELAY / 4).await;
        }

        acks.record(AccountId(2), &sent[4..5], &[]);
        acks.close().await;
        assert_eq!(waiting_for_bob(&store).await, sent[5..]);
    }

    #[tokio::test]
    async fn a_login_flush_writes_its_own_account_and_a_flood_is_held() {
        let (_dir, store, sent) = store_with_dms(3).await;
        let acks = Acks::start(store.clone());
        acks.record(AccountId(2), &sent[..1], &[]);
        acks.record(AccountId(1), &[99], &[]);
        acks.flush_account(AccountId(2)).await;
        assert_eq!(waiting_for_bob(&store).await, sent[1..]);
        assert_eq!(pending(&acks).keys().collect::<Vec<_>>(), [&AccountId(1)]);

        // Repeats count until written: a client sending the same ids over
        // and over is told to wait once enough are pending.
        let many: Vec<u64> = (1..=1000).collect();
        let held = (0..HOLD_AT / many.len() + 1)
            .map(|_| acks.record(AccountId(3), &many, &[]))
            .collect::<Vec<_>>();
        assert!(!held[0]);
        assert_eq!(held.last(), Some(&true));
        acks.close().await;
        assert!(pending(&acks).is_empty());
    }
}
