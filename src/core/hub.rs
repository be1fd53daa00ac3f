//! The hub: who is connected right now, and fan-out to them.
//!
//! Every live stream or connection is a *sink* with its own bounded queue.
//! Fan-out never waits: it pushes into each queue, and a sink whose queue is
//! full is cut loose with [`Closed::Overflow`] so one slow reader cannot slow
//! anyone else. What it missed stays in the store and is delivered when it
//! comes back.
//!
//! The queue is a plain locked `VecDeque` rather than a channel because of
//! how fan-out loads it: one commit pushes the same message into hundreds of
//! queues, and each receiver is best served taking everything waiting at
//! once. A push is a short uncontended lock and wakes the receiver only if
//! it is asleep; a receiver swaps the whole queue out under one lock.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Waker};

use tokio::sync::Notify;

use super::Delivery;
use crate::store::{AccountId, SessionId};

/// Why a live stream ended from the server's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The reader fell a whole queue behind.
    Overflow,
    LoggedOut,
    AccountDeleted,
    ShuttingDown,
    /// The store could not be read.
    StoreFailed,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Closed::Overflow => {
                "disconnected: you fell too far behind; reconnect to receive what you missed"
            }
            Closed::LoggedOut => "this session logged out",
            Closed::AccountDeleted => "this account was deleted",
            Closed::ShuttingDown => "the server is shutting down",
            Closed::StoreFailed => "the server could not read its store; reconnect",
        })
    }
}

#[derive(Default)]
struct Sinks {
    by_account: HashMap<AccountId, Vec<Sink>>,
    /// Set by `close_all`: later attachments are closed from the start.
    closing: bool,
}

/// One sink's queue, shared by the hub (which pushes) and the attachment
/// (which takes).
struct Queue {
    state: Mutex<QueueState>,
    reason: OnceLock<Closed>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Delivery>,
    /// The receiver, when it found the queue empty and went to sleep.
    waker: Option<Waker>,
    /// The hub let go of this sink: nothing more will come.
    ended: bool,
}

/// What a push into a full queue tells the hub.
struct Full;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock leaves only plain data behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, delivery: &Delivery, depth: usize) -> Result<(), Full> {
        let mut state = self.lock();
        if state.items.len() >= depth {
            return Err(Full);
        }
        state.items.push_back(delivery.clone());
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

struct Sink {
    id: u64,
    session: SessionId,
    queue: Arc<Queue>,
}

impl Sink {
    fn close(&self, why: Closed) {
        let _ = self.queue.reason.set(why);
    }
}

impl Drop for Sink {
    /// A sink the hub lets go of, for whatever reason, ends its stream.
    fn drop(&mut self) {
        self.queue.end();
    }
}

pub struct Hub {
    sinks: Mutex<Sinks>,
    /// Woken whenever an account comes online or goes offline.
    presence: Arc<Notify>,
    next_id: AtomicU64,
    queue_depth: usize,
}

/// One registered live sink: the receiving end of its queue. Dropping it
/// unregisters the sink.
pub struct Attachment {
    hub: Arc<Hub>,
    account: AccountId,
    id: u64,
    queue: Arc<Queue>,
    /// What was taken from the queue and not yet handed out.
    taken: VecDeque<Delivery>,
}

impl Attachment {
    /// Why the hub let go of this sink, if it has.
    pub fn closed(&self) -> Option<Closed> {
        self.queue.reason.get().copied()
    }

    /// The next live delivery, or why the hub let go of this sink.
    pub async fn recv(&mut self) -> Result<Delivery, Closed> {
        if let Some(delivery) = self.taken.pop_front() {
            return Ok(delivery);
        }
        poll_fn(|cx| {
            let mut state = self.queue.lock();
            if !state.items.is_empty() {
                // Swapping keeps both buffers' capacity in use: no allocation
                // once a connection has seen its usual burst.
                std::mem::swap(&mut state.items, &mut self.taken);
                return Poll::Ready(());
            }
            if state.ended {
                return Poll::Ready(());
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
        self.taken
            .pop_front()
            .ok_or_else(|| self.closed().unwrap_or(Closed::ShuttingDown))
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut sinks = self.hub.lock();
        if let Some(list) = sinks.by_account.get_mut(&self.account) {
            list.retain(|s| s.id != self.id);
            if list.is_empty() {
                sinks.by_account.remove(&self.account);
                self.hub.presence.notify_one();
            }
        }
    }
}

impl Hub {
    pub fn new(queue_depth: usize, presence: Arc<Notify>) -> Arc<Self> {
        Arc::new(Hub {
            sinks: Mutex::new(Sinks::default()),
            presence,
            next_id: AtomicU64::new(1),
            queue_depth: queue_depth.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Sinks> {
        // A panic while holding this lock leaves only plain data behind.
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn attach(self: &Arc<Self>, account: AccountId, session: SessionId) -> Attachment {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            reason: OnceLock::new(),
        });
        let sink = Sink {
            id,
            session,
            queue: queue.clone(),
        };
        let mut sinks = self.lock();
        if sinks.closing {
            // Dropping the sink ends the stream at once, with this reason.
            sink.close(Closed::ShuttingDown);
            drop(sink);
        } else {
            sinks.by_account.entry(account).or_default().push(sink);
            self.presence.notify_one();
        }
        drop(sinks);
        Attachment {
            hub: self.clone(),
            account,
            id,
            queue,
            taken: VecDeque::new(),
        }
    }

    /// Hands `delivery` to every sink of `accounts`, except those of the
    /// session that sent it.
    pub fn fan_out<'a>(
        &self,
        delivery: &Delivery,
        accounts: impl IntoIterator<Item = &'a AccountId>,
        except: Option<SessionId>,
    ) {
        let mut guard = self.lock();
        let sinks = &mut guard.by_account;
        for account in accounts {
            let Some(list) = sinks.get_mut(account) else {
                continue;
            };
            list.retain(|sink| {
                if Some(sink.session) == except {
                    return true;
                }
                match sink.queue.push(delivery, self.queue_depth) {
                    Ok(()) => true,
                    Err(Full) => {
                        sink.close(Closed::Overflow);
                        false
                    }
                }
            });
            if list.is_empty() {
                sinks.remove(account);
                self.presence.notify_one();
            }
        }
    }

    /// Ends every sink of one session.
    pub fn close_session(&self, account: AccountId, session: SessionId, why: Closed) {
        let mut guard = self.lock();
        let sinks = &mut guard.by_account;
        if let Some(list) = sinks.get_mut(&account) {
            list.retain(|s| {
                let keep = s.session != session;
                if !keep {
                    s.close(why);
                }
                keep
            });
            if list.is_empty() {
                sinks.remove(&account);
                self.presence.notify_one();
            }
        }
    }

    pub fn close_account(&self, account: AccountId, why: Closed) {
        if let Some(list) = self.lock().by_account.remove(&account) {
            list.iter().for_each(|s| s.close(why));
            self.presence.notify_one();
        }
    }

    /// Ends every sink, and every sink attached from now on.
    pub fn close_all(&self, why: Closed) {
        let mut sinks = self.lock();
        sinks.closing = true;
        for (_, list) in sinks.by_account.drain() {
            list.iter().for_each(|s| s.close(why));
        }
    }

    /// Accounts with at least one live sink.
    pub fn online(&self) -> Vec<AccountId> {
        self.lock().by_account.keys().copied().collect()
    }

    pub fn is_online(&self, account: AccountId) -> bool {
        self.lock().by_account.contains_key(&account)
    }

    /// Sessions with at least one live sink.
    pub fn session_count(&self) -> usize {
        self.lock()
            .by_account
            .values()
            .flat_map(|list| list.iter().map(|s| s.session))
            .collect::<std::collections::HashSet<_>>()
            .len()
    }
}
