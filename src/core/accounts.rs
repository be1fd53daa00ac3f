//! Accounts and sessions: register, log in, authenticate, log out, delete.
//!
//! Passwords are hashed with argon2id on a small pool of threads of their own
//! ([`super::passwords`]): a hash takes tens of milliseconds and 19 MiB by
//! design, and must neither stall an async worker nor multiply in a burst.
//! Tokens are 256 random bits; only their SHA-256 is stored.

use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::{Closed, Core, CoreError, Identity, names};
use crate::model::{AccountId, SessionId};
use crate::store::StoreError;

impl Core {
    /// Drops cached sessions, and tells concurrent look-ups not to re-add them.
    pub(super) fn revoke(&self, matches: impl Fn(AccountId, SessionId) -> bool) {
        let mut sessions = self.sessions();
        self.inner.revocations.fetch_add(1, Ordering::SeqCst);
        sessions.retain(|_, s| !matches(s.account, s.session));
        drop(sessions);
        self.forget_places(matches);
    }
}

/// A login: the token to present from now on, and who it belongs to.
#[derive(Debug, Clone)]
pub struct Login {
    pub token: String,
    pub identity: Identity,
}

const TOKEN_BYTES: usize = 32;

impl Core {
    /// Creates an account and returns its name as registered. `from`, the
    /// caller's address, bounds how fast one address may make accounts.
    pub async fn register(
        &self,
        name: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<String, CoreError> {
        self.check_running()?;
        let key = names::account_key(name)?;
        names::check_password(password)?;
        if self.directory_read().contains_key(&key) {
            return Err(CoreError::NameTaken(name.to_owned()));
        }
        // A name is global: one held on another node is taken here too.
        if let Some(claim) = self
            .remote()
            .and_then(|r| r.claims(&key).into_iter().next())
        {
            return Err(CoreError::NameTaken(format!(
                "{}@{}",
                claim.name, claim.node
            )));
        }
        let turn = self.inner.throttle.register(from).await?;
        let hash = self.inner.passwords.hash(password).await?;
        // Directory and lobby membership change on the commit path, like a join.
        let (core, registered, cached_key) = (self.clone(), name.to_owned(), key.clone());
        let on_commit: crate::store::AccountHook = Box::new(move |id| {
            let account = crate::store::AccountSummary {
                id: *id,
                name: registered,
                created_ms: super::now_ms(),
            };
            core.directory_write().insert(cached_key, account);
            core.inner.changed.notify_one();
            let lobby = core.inner.lobby;
            core.rooms_write()
                .members
                .entry(lobby)
                .or_default()
                .insert(*id);
        });
        self.inner
            .store
            .create_account(name, &key, &hash, self.inner.lobby, on_commit)
            .await
            .map_err(|e| match e {
                StoreError::NameTaken => CoreError::NameTaken(name.to_owned()),
                e => e.into(),
            })?;
        turn.registered();
        Ok(name.to_owned())
    }

    /// Checks the password and opens a new session. `from`, the caller's
    /// address, has its failures counted apart from the account's: either
    /// past a few makes the next try wait (see [`super::throttle`]).
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<Login, CoreError> {
        self.check_running()?;
        let key = names::account_key(name).map_err(|_| CoreError::BadCredentials)?;
        let turn = self.inner.throttle.login(&key, from).await?;
        let Some(account) = self.inner.store.account_by_key(&key).await? else {
            // An unknown name costs a hash too, so timing does not tell which names exist.
            self.inner.passwords.hash(password).await?;
            turn.failed();
            crate::metrics::login_failed();
            return Err(CoreError::BadCredentials);
        };
        if !self
            .inner
            .passwords
            .verify(password, &account.password_hash)
            .await?
        {
            turn.failed();
            crate::metrics::login_failed();
            return Err(CoreError::BadCredentials);
        }
        turn.succeeded();
        drop(turn);
        // Told only to whoever knows the password.
        if let Some(s) = &account.suspended {
            return Err(suspended(&s.by, &s.reason));
        }
        // Before the session exists, so a failure leaves nothing behind.
        self.know_from_store(account.id).await?;
        let token = new_token();
        let token_hash = hash_token(&token);
        let revocations = self.inner.revocations.load(Ordering::SeqCst);
        let (session, evicted) = self
            .inner
            .store
            .create_session(
                token_hash,
                account.id,
                self.inner.limits.max_sessions_per_account,
            )
            .await
            .map_err(|e| match e {
                StoreError::Suspended => suspended("an operator", ""),
                e => e.into(),
            })?;
        // The oldest sessions made room for this one: their tokens stop working.
        for old in evicted {
            self.end_session(account.id, old);
        }
        let identity = Identity {
            account: account.id,
            name: account.name,
            session,
        };
        self.cache_new_session(token_hash, &identity, revocations)
            .await?;
        Ok(Login { token, identity })
    }

    /// Caches a session just made, unless a kick or a suspension ended it
    /// while it was being made: `revocations` is the count read before.
    async fn cache_new_session(
        &self,
        token_hash: [u8; 32],
        identity: &Identity,
        mut revocations: u64,
    ) -> Result<(), CoreError> {
        loop {
            {
                let mut sessions = self.sessions();
                // Read under the lock that `revoke` counts under.
                let now = self.inner.revocations.load(Ordering::SeqCst);
                if now == revocations {
                    sessions.insert(token_hash, identity.clone());
                    return Ok(());
                }
                revocations = now;
            }
            let alive = self
                .inner
                .store
                .sessions_alive(vec![identity.session])
                .await?;
            if alive.is_empty() {
                return Err(CoreError::Unauthenticated(
                    "this session was ended as it began: log in again",
                ));
            }
        }
    }

    /// Finds the session a token belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, CoreError> {
        if token.len() != TOKEN_BYTES * 2 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CoreError::Unauthenticated(
                "malformed token: log in for a new one",
            ));
        }
        let token_hash = hash_token(&token.to_ascii_lowercase());
        if let Some(identity) = self.sessions().get(&token_hash) {
            return Ok(identity.clone());
        }
        let revocations = self.inner.revocations.load(Ordering::SeqCst);
        let record = self.inner.store.session_by_token(token_hash).await?.ok_or(
            CoreError::Unauthenticated("unknown or logged-out token: log in again"),
        )?;
        let identity = Identity {
            account: record.account_id,
            name: record.name,
            session: record.id,
        };
        self.know_from_store(identity.account).await?;
        let mut sessions = self.sessions();
        // A logout that ran while the store was being read must not have its
        // session put back in the cache.
        if self.inner.revocations.load(Ordering::SeqCst) == revocations {
            sessions.insert(token_hash, identity.clone());
        }
        Ok(identity)
    }

    /// Ends a session: its token stops working and its streams close.
    pub async fn logout(&self, who: &Identity) -> Result<(), CoreError> {
        self.inner.store.delete_session(who.session).await?;
        self.end_session(who.account, who.session);
        Ok(())
    }

    /// A session is over: its token stops working, here and on the
    /// siblings, which may have it cached, and its streams close.
    fn end_session(&self, account: AccountId, session: SessionId) {
        self.revoke(|_, s| s == session);
        self.inner
            .hub
            .close_session(account, session, Closed::LoggedOut);
        if let Some(siblings) = self.siblings() {
            siblings.session_ended(session);
        }
    }

    /// Deletes the caller's account after checking its password.
    pub async fn delete_account(&self, who: &Identity, password: &str) -> Result<(), CoreError> {
        self.check_running()?;
        let account = self
            .inner
            .store
            .account_by_id(who.account)
            .await?
            .ok_or(CoreError::Unauthenticated("this account no longer exists"))?;
        // The password is asked for again here, so guesses at it count
        // against the account as failed log-ins do: a stolen token is no
        // way around the delays.
        let key = names::account_key(&account.name)?;
        let turn = self.inner.throttle.login(&key, None).await?;
        if !self
            .inner
            .passwords
            .verify(password, &account.password_hash)
            .await?
        {
            turn.failed();
            return Err(CoreError::WrongPassword);
        }
        drop(turn);
        self.inner.store.delete_account(who.account).await?;
        self.directory_write()
            .remove(&account.name.to_ascii_lowercase());
        self.inner.changed.notify_one();
        self.forget_deleted(who.account);
        if let Some(siblings) = self.siblings() {
            siblings.account_deleted(who.account);
        }
        Ok(())
    }
}

/// The refusal of a suspended account's log-in.
fn suspended(by: &str, reason: &str) -> CoreError {
    CoreError::Suspended(if reason.is_empty() {
        format!(" by {by}")
    } else {
        format!(" by {by}: {reason}")
    })
}

fn new_token() -> String {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
