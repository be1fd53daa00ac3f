//! Calls waiting for their replies, by request id: what a client with many
//! requests in flight on one connection uses to hand each reply to the call
//! that made the request.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Calls waiting for their replies, by request id: a reader hands each
/// reply to the call that waits for it. Once closed (the connection is
/// gone), every waiter hears so and later calls fail at once.
pub struct Waiters<K, V> {
    /// `None` once closed.
    table: Arc<Mutex<Option<Table<K, V>>>>,
}

type Table<K, V> = HashMap<K, oneshot::Sender<V>>;

impl<K, V> Clone for Waiters<K, V> {
    fn clone(&self) -> Self {
        Waiters {
            table: self.table.clone(),
        }
    }
}

impl<K: Hash + Eq, V> Default for Waiters<K, V> {
    fn default() -> Self {
        Waiters {
            table: Arc::new(Mutex::new(Some(HashMap::new()))),
        }
    }
}

impl<K: Hash + Eq, V> Waiters<K, V> {
    /// Waits for the reply with this id; `None` once closed.
    pub fn wait(&self, id: K) -> Option<oneshot::Receiver<V>> {
        let (tx, rx) = oneshot::channel();
        self.table.lock().ok()?.as_mut()?.insert(id, tx);
        Some(rx)
    }

    /// Hands a reply to whoever waits for its id, if anyone does.
    pub fn complete(&self, id: &K, reply: V) {
        let waiter = self
            .table
            .lock()
            .ok()
            .and_then(|mut t| t.as_mut().and_then(|t| t.remove(id)));
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        }
    }

    /// Drops every waiter and refuses new ones.
    pub fn close(&self) {
        if let Ok(mut table) = self.table.lock() {
            table.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reply_finds_its_waiter() {
        let waiters = Waiters::<u32, &str>::default();
        let first = waiters.wait(1).unwrap();
        let second = waiters.wait(2).unwrap();
        // Replies come in any order, from a clone (the reader's).
        let reader = waiters.clone();
        reader.complete(&2, "two");
        reader.complete(&1, "one");
        assert_eq!(second.await, Ok("two"));
        assert_eq!(first.await, Ok("one"));
    }

    #[tokio::test]
    async fn a_reply_nobody_waits_for_is_dropped() {
        let waiters = Waiters::<u32, &str>::default();
        let waiting = waiters.wait(1).unwrap();
        waiters.complete(&7, "stray");
        waiters.complete(&1, "one");
        // An id is answered once: a second reply to it finds no one.
        waiters.complete(&1, "again");
        assert_eq!(waiting.await, Ok("one"));
    }

    #[tokio::test]
    async fn closing_wakes_every_waiter_and_refuses_new_ones() {
        let waiters = Waiters::<u32, &str>::default();
        let waiting = waiters.wait(1).unwrap();
        waiters.clone().close();
        assert!(waiting.await.is_err(), "the waiter hears the table closed");
        assert!(waiters.wait(2).is_none(), "a later call fails at once");
        waiters.complete(&1, "late");
    }
}
