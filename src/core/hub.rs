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

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Waker};

use tokio::sync::Notify;

use super::Delivery;
use crate::model::{AccountId, SessionId};

/// Why a live stream ended from the server's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The reader fell a whole queue behind.
    Overflow,
    LoggedOut,
    AccountDeleted,
    /// An operator ended the account's sessions (a kick or a suspension);
    /// the notice says who and why.
    Removed(Arc<str>),
    ShuttingDown,
    /// The store could not be read.
    StoreFailed,
}

impl Closed {
    /// What a client can do about it, for each protocol's own form.
    pub fn kind(&self) -> super::ErrorKind {
        use super::ErrorKind;
        match self {
            Closed::Overflow => ErrorKind::Overflow,
            Closed::LoggedOut | Closed::AccountDeleted => ErrorKind::Unauthenticated,
            Closed::Removed(_) => ErrorKind::PermissionDenied,
            Closed::ShuttingDown | Closed::StoreFailed => ErrorKind::Unavailable,
        }
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Closed::Overflow => {
                "disconnected: you fell too far behind; reconnect to receive what you missed"
            }
            Closed::LoggedOut => "this session logged out",
            Closed::AccountDeleted => "this account was deleted",
            Closed::Removed(notice) => notice,
            Closed::ShuttingDown => "the server is shutting down",
            Closed::StoreFailed => "the server could not read its store; reconnect",
        })
    }
}

/// Hashes account ids for the fan-out path, which looks one up per member
/// per message. The ids are integers the store hands out, not keys a client
/// picks, so a multiplicative hash spreads them well at a fraction of the
/// default hasher's cost.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b) ^ self.0.rotate_left(8));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

type ById = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct Sinks {
    by_account: HashMap<AccountId, Vec<Sink>, ById>,
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
        self.push_all(std::iter::once(delivery.clone()), depth)
    }

    /// Queues `deliveries` in one lock and wakes the receiver once. A queue
    /// that ended (its receiver fell behind earlier in the batch) takes
    /// nothing more.
    fn push_all<I>(&self, deliveries: I, depth: usize) -> Result<(), Full>
    where
        I: IntoIterator<Item = Delivery>,
        I::IntoIter: ExactSizeIterator,
    {
        let deliveries = deliveries.into_iter();
        let mut state = self.lock();
        if state.ended {
            return Ok(());
        }
        if state.items.len() + deliveries.len() > depth {
            return Err(Full);
        }
        state.items.extend(deliveries);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Ends the queue because its receiver fell a whole queue behind.
    fn overflow(&self) {
        crate::metrics::slow_consumer();
        let _ = self.reason.set(Closed::Overflow);
        self.end();
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
    /// Its place among the deliveries held by a batch: (batch, index).
    held: (u64, usize),
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

thread_local! {
    /// The deliveries held by the batch open on this thread, if any.
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
    /// Emptied per-receiver lists of earlier batches, kept for the next, so
    /// no list is grown from nothing one delivery at a time for every
    /// receiver of every batch (see docs/performance.md).
    static SPARE: RefCell<Vec<Vec<Delivery>>> = const { RefCell::new(Vec::new()) };
}

/// Lists kept spare per thread, and the largest kept: together at most
/// about a megabyte, however many receivers one batch reached.
const SPARE_LISTS: usize = 1024;
const SPARE_LIST_LEN: usize = 128;

/// Numbers batches, so a sink can tell whether its place in `Held` is from
/// the batch now open.
static BATCHES: AtomicU64 = AtomicU64::new(1);

/// Deliveries held for each sink until the end of a batch.
struct Held {
    batch: u64,
    sinks: Vec<(Arc<Queue>, Vec<Delivery>)>,
    depth: usize,
}

impl Held {
    fn new() -> Held {
        Held {
            batch: BATCHES.fetch_add(1, Ordering::Relaxed),
            sinks: Vec::new(),
            depth: usize::MAX,
        }
    }

    fn hold(&mut self, sink: &mut Sink, delivery: &Delivery, depth: usize) {
        self.depth = self.depth.min(depth);
        if sink.held.0 != self.batch {
            sink.held = (self.batch, self.sinks.len());
            let list = SPARE
                .with(|spare| spare.borrow_mut().pop())
                .unwrap_or_default();
            self.sinks.push((sink.queue.clone(), list));
        }
        self.sinks[sink.held.1].1.push(delivery.clone());
    }

    fn deliver(self) {
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            for (queue, mut deliveries) in self.sinks {
                if queue.push_all(deliveries.drain(..), self.depth).is_err() {
                    // Its attachment removes it from the hub when its reader
                    // has taken what was queued and learns why it ends.
                    queue.overflow();
                }
                if spare.len() < SPARE_LISTS && deliveries.capacity() <= SPARE_LIST_LEN {
                    spare.push(deliveries);
                }
            }
        });
    }
}

/// Runs `f`, holding what the hub fans out on this thread meanwhile; when
/// `f` returns, each receiver gets all of its deliveries in one lock and
/// one wake-up. The store's writer runs its commit hooks in a batch: one
/// commit fans many messages out to the same receivers, and handing them
/// over one at a time costs a lock shared with the receiver's thread, and
/// often a wake-up, per message per receiver.
/// A batch opened inside another joins it, so each receiver's deliveries
/// still go over in commit order.
pub fn batch<R>(f: impl FnOnce() -> R) -> R {
    struct Release;
    impl Drop for Release {
        // Runs even if `f` panics, so nothing held is lost.
        fn drop(&mut self) {
            if let Some(held) = HELD.with(|held| held.borrow_mut().take()) {
                held.deliver();
            }
        }
    }
    let opened = HELD.with(|held| {
        let mut held = held.borrow_mut();
        if held.is_some() {
            return false;
        }
        *held = Some(Held::new());
        true
    });
    // Made only by the batch that opened it: a `Release` dropped anywhere
    // hands over what is held.
    let _release = if opened { Some(Release) } else { None };
    f()
}

/// [`batch`] for the store's commit hooks: each run of hooks that commit
/// together wakes each receiver once.
pub fn batch_hooks(run: &mut dyn FnMut()) {
    batch(run)
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
        self.queue.reason.get().cloned()
    }

    /// Deliveries already taken from the queue: what [`Attachment::recv`]
    /// returns next without waiting.
    pub fn ready(&self) -> usize {
        self.taken.len()
    }

    /// The next live delivery, or why the hub let go of this sink.
    pub async fn recv(&mut self) -> Result<Delivery, Closed> {
        if let Some(delivery) = self.taken.pop_front() {
            return Ok(delivery);
        }
        poll_fn(|cx| {
            let mut state = self.queue.lock();
            if !state.items.is_empty() {
                // The emptied buffer goes back to the queue for the next
                // deliveries, so a busy receiver allocates nothing. What a
                // burst leaves in it is at most two queues' worth of
                // pointers, 16 KiB at the default depth.
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
            held: (0, 0),
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
        let mut handed = 0;
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            for account in accounts {
                let Some(list) = sinks.get_mut(account) else {
                    continue;
                };
                list.retain_mut(|sink| {
                    if Some(sink.session) == except {
                        return true;
                    }
                    handed += 1;
                    if let Some(held) = held.as_mut() {
                        held.hold(sink, delivery, self.queue_depth);
                        return true;
                    }
                    match sink.queue.push(delivery, self.queue_depth) {
                        Ok(()) => true,
                        Err(Full) => {
                            crate::metrics::slow_consumer();
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
        });
        // One add per message, not per receiver.
        crate::metrics::delivered(handed);
    }

    /// Ends every sink of one session.
    /// Closes the sinks of a session whose account is not known here.
    pub fn close_session_anywhere(&self, session: SessionId, why: Closed) {
        let account = self
            .lock()
            .by_account
            .iter()
            .find(|(_, list)| list.iter().any(|s| s.session == session))
            .map(|(account, _)| *account);
        if let Some(account) = account {
            self.close_session(account, session, why);
        }
    }

    pub fn close_session(&self, account: AccountId, session: SessionId, why: Closed) {
        let mut guard = self.lock();
        let sinks = &mut guard.by_account;
        if let Some(list) = sinks.get_mut(&account) {
            list.retain(|s| {
                let keep = s.session != session;
                if !keep {
                    s.close(why.clone());
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
            list.iter().for_each(|s| s.close(why.clone()));
            self.presence.notify_one();
        }
    }

    /// Ends every sink, and every sink attached from now on.
    pub fn close_all(&self, why: Closed) {
        let mut sinks = self.lock();
        sinks.closing = true;
        for (_, list) in sinks.by_account.drain() {
            list.iter().for_each(|s| s.close(why.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Message, Target};
    use futures::FutureExt;

    fn delivery(id: u64) -> Delivery {
        Delivery::new(Message {
            id,
            from: "a".into(),
            to: Target::Room("r".into()),
            body: "hi".into(),
            sent_at_ms: 0,
            client_msg_id: None,
        })
    }

    #[tokio::test]
    async fn a_batch_hands_over_its_deliveries_at_its_end_in_order() {
        let hub = Hub::new(8, Arc::new(Notify::new()));
        let mut live = hub.attach(AccountId(1), SessionId(10));
        let mut other = hub.attach(AccountId(2), SessionId(20));
        batch(|| {
            for id in 1..=3 {
                hub.fan_out(
                    &delivery(id),
                    [&AccountId(1), &AccountId(2)],
                    Some(SessionId(20)),
                );
            }
            assert!(live.recv().now_or_never().is_none(), "held until the end");
        });
        for id in 1..=3 {
            assert_eq!(live.recv().await.map(|d| d.id), Ok(id));
        }
        assert!(
            other.recv().now_or_never().is_none(),
            "the sender's session is skipped"
        );
    }

    #[tokio::test]
    async fn a_batch_inside_a_batch_keeps_commit_order() {
        let hub = Hub::new(8, Arc::new(Notify::new()));
        let mut live = hub.attach(AccountId(1), SessionId(10));
        batch(|| {
            hub.fan_out(&delivery(1), [&AccountId(1)], None);
            batch(|| hub.fan_out(&delivery(2), [&AccountId(1)], None));
            hub.fan_out(&delivery(3), [&AccountId(1)], None);
            assert!(
                live.recv().now_or_never().is_none(),
                "held until the outer end"
            );
        });
        for id in 1..=3 {
            assert_eq!(live.recv().await.map(|d| d.id), Ok(id));
        }
    }

    #[tokio::test]
    async fn a_receiver_a_whole_queue_behind_gets_what_was_queued_then_overflow() {
        let hub = Hub::new(4, Arc::new(Notify::new()));
        let mut live = hub.attach(AccountId(1), SessionId(10));
        batch(|| hub.fan_out(&delivery(1), [&AccountId(1)], None));
        batch(|| {
            for id in 2..=6 {
                hub.fan_out(&delivery(id), [&AccountId(1)], None);
            }
        });
        assert_eq!(live.recv().await.map(|d| d.id), Ok(1));
        assert_eq!(live.recv().await.map(|d| d.id), Err(Closed::Overflow));
        // Outside a batch, a full queue ends the stream the same way.
        let mut slow = hub.attach(AccountId(2), SessionId(20));
        for id in 1..=5 {
            hub.fan_out(&delivery(id), [&AccountId(2)], None);
        }
        for id in 1..=4 {
            assert_eq!(slow.recv().await.map(|d| d.id), Ok(id));
        }
        assert_eq!(slow.recv().await.map(|d| d.id), Err(Closed::Overflow));
    }
}
