//! Growing delays after failed log-ins, per account and per source address,
//! and few password checks at once for either.
//!
//! A password check costs tens of milliseconds of a core and 19 MiB by
//! design; left alone, 50 connections could guess 70 passwords a second at
//! one account and make everyone's login twenty times slower. Here a few
//! failures are free, then each one doubles the wait before the next try
//! (1 s, 2 s, 4 s … up to 5 min); a try inside the wait is refused at once,
//! without a check. At most two checks per account and per address run at
//! once, the rest wait their turn, so a burst from one place cannot start
//! guesses faster than their failures are counted, nor take every password
//! thread. Counts are forgotten 15 minutes after their last failure, and
//! each table holds at most [`MAX_ENTRIES`] keys, so an attacker with many
//! names or addresses cannot grow the server's memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::CoreError;

/// Failed log-ins an account may have before its next try must wait.
pub const FREE_ACCOUNT_FAILURES: u32 = 3;
/// Failed log-ins one address may have before its next try must wait;
/// more than an account's, as one address may be many people behind NAT.
pub const FREE_ADDRESS_FAILURES: u32 = 10;
/// Registrations one address may make before the next must wait.
pub const FREE_REGISTRATIONS: u32 = 32;
/// The wait after the first failure past the free ones; it doubles with each.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// A count whose last failure is this old starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Keys (accounts or addresses) one table holds.
pub const MAX_ENTRIES: usize = 100_000;
/// Password checks one account, or one address, may have running at once.
pub const CHECKS_AT_ONCE: usize = 2;
/// How long a try made during a delay waits for its refusal.
pub const REFUSAL_PAUSE: Duration = Duration::from_millis(250);

/// The wait after `failures` failures when `free` of them cost nothing.
pub fn delay(failures: u32, free: u32) -> Duration {
    match failures.checked_sub(free.saturating_add(1)) {
        None => Duration::ZERO,
        Some(doublings) => FIRST_DELAY
            .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
            .map_or(MAX_DELAY, |d| d.min(MAX_DELAY)),
    }
}

struct Entry {
    failures: u32,
    last: Instant,
    checks: Arc<Semaphore>,
}

impl Entry {
    fn wait_left(&self, free: u32, now: Instant) -> Duration {
        if now.duration_since(self.last) >= FORGET_AFTER {
            return Duration::ZERO;
        }
        (self.last + delay(self.failures, free)).saturating_duration_since(now)
    }

    /// Whether dropping it loses nothing: no wait, no count, no check running.
    fn idle(&self, now: Instant) -> bool {
        let forgotten = self.failures == 0 || now.duration_since(self.last) >= FORGET_AFTER;
        forgotten && Arc::strong_count(&self.checks) == 1
    }
}

/// Failure counts by key, bounded.
struct Table<K> {
    free: u32,
    entries: Mutex<HashMap<K, Entry>>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(free: u32) -> Self {
        Table {
            free,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_left(&self, key: &K) -> Duration {
        let now = Instant::now();
        self.lock()
            .get(key)
            .map_or(Duration::ZERO, |e| e.wait_left(self.free, now))
    }

    /// The key's check slots, making room for it if it is new.
    fn checks(&self, key: &K) -> Result<Arc<Semaphore>, CoreError> {
        let now = Instant::now();
        let mut entries = self.lock();
        if !entries.contains_key(key) && entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| !e.idle(now));
            if entries.len() >= MAX_ENTRIES {
                // Every key is waiting out a delay: dropping one would lift it.
                return Err(busy());
            }
        }
        let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
            failures: 0,
            last: now,
            checks: Arc::new(Semaphore::new(CHECKS_AT_ONCE)),
        });
        Ok(entry.checks.clone())
    }

    fn fail(&self, key: &K) {
        let now = Instant::now();
        if let Some(e) = self.lock().get_mut(key) {
            if now.duration_since(e.last) >= FORGET_AFTER {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
        }
    }

    fn reset(&self, key: &K) {
        if let Some(e) = self.lock().get_mut(key) {
            e.failures = 0;
        }
    }

    /// Drops the key if it holds nothing worth keeping.
    fn tidy(&self, key: &K) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.get(key).is_some_and(|e| e.idle(now)) {
            entries.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

fn busy() -> CoreError {
    CoreError::Limit("server busy; try again".into())
}

fn too_many_failures(wait: Duration) -> CoreError {
    CoreError::LoginDelay(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

/// One address per household: an IPv6 user has a /64 to pick from.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

pub struct Throttle {
    accounts: Table<String>,
    addresses: Table<IpAddr>,
    registrations: Table<IpAddr>,
}

/// The right to run one password check; dropping it frees the slots.
pub struct Turn<'t> {
    throttle: &'t Throttle,
    account: Option<String>,
    address: Option<IpAddr>,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self._permits.clear();
        if let Some(account) = &self.account {
            self.throttle.accounts.tidy(account);
        }
        if let Some(address) = &self.address {
            self.throttle.addresses.tidy(address);
            self.throttle.registrations.tidy(address);
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(Some(FREE_REGISTRATIONS))
    }
}

impl Throttle {
    /// A throttle letting one address register `registrations` accounts
    /// before delays begin (`None`: no limit).
    pub fn new(registrations: Option<u32>) -> Throttle {
        Throttle {
            accounts: Table::new(FREE_ACCOUNT_FAILURES),
            addresses: Table::new(FREE_ADDRESS_FAILURES),
            registrations: Table::new(registrations.unwrap_or(u32::MAX)),
        }
    }
}

impl Throttle {
    /// Waits for a turn to check a password for the account `key` from
    /// `from`; refuses at once while either is waiting out a delay.
    pub async fn login(&self, key: &str, from: Option<IpAddr>) -> Result<Turn<'_>, CoreError> {
        let from = from.map(address_key);
        let key = key.to_owned();
        let mut turn = Turn {
            throttle: self,
            account: Some(key.clone()),
            address: from,
            _permits: Vec::with_capacity(2),
        };
        // Address first, then account, by every caller: no two wait on each other.
        if let Some(from) = from {
            let slots = self.addresses.checks(&from)?;
            turn._permits
                .push(slots.acquire_owned().await.map_err(|_| busy())?);
        }
        self.pause_if_waiting(&key, from).await?;
        let slots = self.accounts.checks(&key)?;
        turn._permits
            .push(slots.acquire_owned().await.map_err(|_| busy())?);
        // Failures counted while this one waited count for it too.
        self.refuse_if_waiting(&key, from)?;
        Ok(turn)
    }

    /// Refuses a try made during a delay, but only after a short pause,
    /// holding the address's check slot: answered at once, a guesser would
    /// ask again at once, and a refusal loop costs the server as much as
    /// any other request loop. Paused, one address gets a few refusals a
    /// second however many connections it opens.
    async fn pause_if_waiting(&self, key: &String, from: Option<IpAddr>) -> Result<(), CoreError> {
        if let Err(refused) = self.refuse_if_waiting(key, from) {
            tokio::time::sleep(REFUSAL_PAUSE).await;
            // A delay that ran out during the pause lets the try go on.
            self.refuse_if_waiting(key, from).map_err(|_| refused)?;
        }
        Ok(())
    }

    fn refuse_if_waiting(&self, key: &String, from: Option<IpAddr>) -> Result<(), CoreError> {
        let wait = self
            .accounts
            .wait_left(key)
            .max(from.map_or(Duration::ZERO, |a| self.addresses.wait_left(&a)));
        if wait.is_zero() {
            Ok(())
        } else {
            Err(too_many_failures(wait))
        }
    }

    /// Waits for a turn to hash a new account's password from `from`.
    pub async fn register(&self, from: Option<IpAddr>) -> Result<Turn<'_>, CoreError> {
        let from = from.map(address_key);
        let mut turn = Turn {
            throttle: self,
            account: None,
            address: from,
            _permits: Vec::with_capacity(1),
        };
        let Some(address) = from else {
            return Ok(turn);
        };
        let refuse = |wait: Duration| {
            CoreError::Limit(format!(
                "too many registrations from your address; try again in {} s",
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
            ))
        };
        // Registrations share the address's check slots with its log-ins.
        let slots = self.addresses.checks(&address)?;
        turn._permits
            .push(slots.acquire_owned().await.map_err(|_| busy())?);
        self.registrations.checks(&address)?;
        let wait = self.registrations.wait_left(&address);
        if !wait.is_zero() {
            // Paused for the reason log-in refusals are.
            tokio::time::sleep(REFUSAL_PAUSE).await;
            return Err(refuse(wait));
        }
        Ok(turn)
    }
}

impl Turn<'_> {
    /// The password was wrong: the account and the address wait longer.
    pub fn failed(&self) {
        if let Some(account) = &self.account {
            self.throttle.accounts.fail(account);
        }
        if let Some(address) = &self.address {
            self.throttle.addresses.fail(address);
        }
    }

    /// The password was right: the account's count starts over. The
    /// address's does not, or one account of the attacker's own would
    /// wipe it between guesses.
    pub fn succeeded(&self) {
        if let Some(account) = &self.account {
            self.throttle.accounts.reset(account);
        }
    }

    /// An account was created: the address's registrations count up.
    pub fn registered(&self) {
        if let Some(address) = &self.address {
            self.throttle.registrations.fail(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_after_the_free_failures_up_to_the_cap() {
        assert_eq!(delay(0, 3), Duration::ZERO);
        assert_eq!(delay(3, 3), Duration::ZERO);
        assert_eq!(delay(4, 3), Duration::from_secs(1));
        assert_eq!(delay(5, 3), Duration::from_secs(2));
        assert_eq!(delay(6, 3), Duration::from_secs(4));
        assert_eq!(delay(12, 3), Duration::from_secs(256));
        assert_eq!(delay(13, 3), MAX_DELAY);
        assert_eq!(delay(u32::MAX, 3), MAX_DELAY);
        assert_eq!(delay(u32::MAX - 1, u32::MAX), Duration::ZERO);
    }

    #[test]
    fn ipv6_addresses_count_by_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn failures_delay_the_account_and_a_success_starts_it_over() {
        let t = Throttle::default();
        let from = Some("192.0.2.1".parse().unwrap());
        for _ in 0..FREE_ACCOUNT_FAILURES {
            t.login("eve", from).await.unwrap().failed();
        }
        t.login("eve", from).await.unwrap().failed();
        match t.login("eve", from).await {
            Err(CoreError::LoginDelay(1)) => {}
            Err(e) => panic!("expected a 1 s delay, got {e}"),
            Ok(_) => panic!("expected a 1 s delay"),
        }
        // Another account from elsewhere is not held up.
        t.login("bob", Some("192.0.2.2".parse().unwrap()))
            .await
            .unwrap()
            .succeeded();
        t.accounts.reset(&"eve".to_owned());
        t.login("eve", from).await.unwrap().succeeded();
        assert_eq!(t.accounts.wait_left(&"eve".to_owned()), Duration::ZERO);
    }

    #[tokio::test]
    async fn idle_keys_are_dropped_so_the_tables_stay_small() {
        let t = Throttle::default();
        for i in 0..1000u32 {
            let from = Some(IpAddr::from(i.to_be_bytes()));
            t.login(&format!("user{i}"), from)
                .await
                .unwrap()
                .succeeded();
        }
        assert_eq!(t.accounts.len(), 0);
        assert_eq!(t.addresses.len(), 0);
    }
}
