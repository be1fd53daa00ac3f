//! Nodes on one shared store (PostgreSQL): siblings.
//!
//! Siblings read and write the same accounts, rooms, memberships and
//! messages, so none of them is any account's home: each serves anyone.
//! What the store cannot tell them is what lives only in memory: which
//! sessions are online where, and the caches that spare the store a read
//! per send (the directory, the room members). The mesh carries that: a
//! node commits a message once, to the store, and hands it to its siblings
//! for their live sessions; it tells them of memberships and sessions that
//! changed; and the accounts each publishes keep their directories level.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;

use super::message::Delivery;
use super::{Closed, Core, CoreError, Identity, Message, names};
use crate::model::{AccountId, RoomId, SessionId};
use crate::store::{AccountSummary, RoomRecord};

impl Core {
    /// Whether `node` is this node or a sibling: either way its accounts
    /// are the ones in this node's store.
    pub(super) fn is_this_store(&self, node: &str) -> bool {
        node.eq_ignore_ascii_case(self.node())
            || self.siblings().is_some_and(|s| s.is_sibling(node))
    }

    /// The id of the shared store this node runs on, if it runs on one.
    pub fn shared_store(&self) -> Option<String> {
        self.inner.shared.clone()
    }

    /// Hands room speech a sibling committed (as message `id` of room
    /// `room_id`, from `shown`) to its members' sessions here. A room this
    /// node has not loaded has no members here that it could reach.
    pub fn deliver_stored_speech(
        &self,
        id: u64,
        shown: &str,
        room: &str,
        room_id: RoomId,
        body: &str,
        sent_ms: i64,
    ) {
        let Ok(record) = self.room(room) else {
            return;
        };
        if record.id != room_id || self.check_body(body).is_err() {
            return;
        }
        let message = Message {
            id,
            from: shown.to_owned(),
            to: super::Target::Room(record.name),
            body: body.to_owned(),
            sent_at_ms: sent_ms,
            client_msg_id: None,
        };
        self.fan_out_room(&Delivery::new(message), room_id, None);
    }

    /// Hands a direct message a sibling committed to the sessions of its
    /// recipient here.
    pub fn deliver_stored_direct(&self, message: Message, recipient: AccountId) {
        if self.check_body(&message.body).is_err() {
            return;
        }
        self.inner
            .hub
            .fan_out(&Delivery::new(message), [&recipient], None);
    }

    /// A session a sibling ended: its token stops working here too, and its
    /// streams here close.
    pub fn session_ended_elsewhere(&self, session: SessionId) {
        self.revoke(|_, s| s == session);
        self.inner
            .hub
            .close_session_anywhere(session, Closed::LoggedOut);
    }

    /// Ends the sessions cached here that are gone from the shared store:
    /// logged out or deleted through a sibling whose word did not arrive
    /// (a link was down, a peer queue overflowed).
    pub async fn audit_sessions(&self) -> Result<(), CoreError> {
        let cached: Vec<Identity> = self.sessions().values().cloned().collect();
        if cached.is_empty() {
            return Ok(());
        }
        let ids = cached.iter().map(|s| s.session).collect();
        let alive: HashSet<SessionId> = self
            .inner
            .store
            .sessions_alive(ids)
            .await?
            .into_iter()
            .collect();
        for gone in cached.iter().filter(|s| !alive.contains(&s.session)) {
            self.revoke(|_, s| s == gone.session);
            self.inner
                .hub
                .close_session(gone.account, gone.session, Closed::LoggedOut);
        }
        Ok(())
    }

    /// On a shared store, audits the cached sessions every `every` until
    /// the node shuts down.
    pub fn start_session_audit(&self, every: std::time::Duration) {
        if self.inner.shared.is_none() {
            return;
        }
        let core = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if core.inner.shutting_down.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = core.audit_sessions().await {
                    tracing::warn!(error = %e, "could not check the cached sessions");
                }
            }
        });
    }

    /// An account a sibling deleted: gone from here too.
    pub fn sibling_deleted(&self, account: AccountId) {
        let key = self
            .directory_read()
            .iter()
            .find(|(_, a)| a.id == account)
            .map(|(key, _)| key.clone());
        if let Some(key) = key {
            self.directory_write().remove(&key);
            self.inner.changed.notify_one();
        }
        // Its sessions may be cached here though its name was not known.
        self.forget_deleted(account);
    }

    /// A membership a sibling committed, for the room members kept here.
    pub fn sibling_membership(&self, room: RoomId, name: String, account: AccountId, joined: bool) {
        self.inner.memberships_seen.fetch_add(1, Ordering::SeqCst);
        let mut rooms = self.rooms_write();
        if joined {
            rooms.members.entry(room).or_default().insert(account);
            let key = name.to_ascii_lowercase();
            rooms.by_key.insert(key, RoomRecord { id: room, name });
        } else if let Some(members) = rooms.members.get_mut(&room) {
            members.remove(&account);
        }
    }

    /// Brings the directory level with the accounts a sibling listed: those
    /// it has that this node lacks are read from the store, and those this
    /// node has that it lacks are dropped if the store no longer has them
    /// (deleted through another node). The store decides, not the list: a
    /// sibling's list may be a moment behind.
    pub async fn sibling_accounts(self, listed: Vec<String>) {
        let listed_keys: HashSet<String> = listed.iter().map(|n| n.to_ascii_lowercase()).collect();
        let (missing, unlisted): (Vec<String>, Vec<String>) = {
            let directory = self.directory_read();
            let missing = listed_keys
                .iter()
                .filter(|k| !directory.contains_key(*k))
                .cloned()
                .collect();
            let unlisted = directory
                .keys()
                .filter(|k| !listed_keys.contains(*k))
                .cloned()
                .collect();
            (missing, unlisted)
        };
        let mut changed = false;
        for key in missing.iter().chain(&unlisted) {
            match self.inner.store.account_by_key(key).await {
                Ok(Some(record)) => {
                    changed |= self.know_account(AccountSummary {
                        id: record.id,
                        name: record.name,
                        created_ms: record.created_ms,
                    });
                }
                Ok(None) => changed |= self.forget_account(key),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read an account a sibling listed");
                    return;
                }
            }
        }
        if changed {
            self.inner.changed.notify_one();
        }
    }

    /// Adds an account stored by a sibling to the directory, a member of
    /// the lobby as every account is. Returns whether it was new here.
    fn know_account(&self, account: AccountSummary) -> bool {
        let key = account.name.to_ascii_lowercase();
        let id = account.id;
        let added = {
            let mut directory = self.directory_write();
            if directory.get(&key).is_some_and(|a| a.id == id) {
                return false;
            }
            directory.insert(key, account);
            true
        };
        let lobby = self.inner.lobby;
        self.rooms_write()
            .members
            .entry(lobby)
            .or_default()
            .insert(id);
        added
    }

    /// Drops an account deleted through a sibling, and ends its sessions
    /// here. Returns whether it was known here.
    fn forget_account(&self, key: &str) -> bool {
        let Some(account) = self.directory_write().remove(key) else {
            return false;
        };
        self.forget_deleted(account.id);
        true
    }

    /// Everything this node keeps of a deleted account, gone.
    pub(super) fn forget_deleted(&self, account: AccountId) {
        // Rights belong to the account: a new one under this name has none.
        self.operators_write().remove(&account);
        for members in self.rooms_write().members.values_mut() {
            members.remove(&account);
        }
        self.revoke(|a, _| a == account);
        self.inner
            .hub
            .close_account(account, Closed::AccountDeleted);
    }

    /// On a shared store, an account that logs in here may have been made,
    /// or have joined or left rooms, through a sibling: the directory and
    /// the room members take the store's word before its session starts.
    pub(super) async fn know_from_store(&self, account: AccountId) -> Result<(), CoreError> {
        if self.inner.shared.is_none() {
            return Ok(());
        }
        if let Some(record) = self.inner.store.account_by_id(account).await?
            && self.know_account(AccountSummary {
                id: record.id,
                name: record.name,
                created_ms: record.created_ms,
            })
        {
            self.inner.changed.notify_one();
        }
        // A membership change that lands while the store is read makes the
        // read stale: read again, a few times at most.
        for _ in 0..3 {
            let seen = self.inner.memberships_seen.load(Ordering::SeqCst);
            let rooms = self.inner.store.rooms_of(account).await?;
            let mut cache = self.rooms_write();
            if self.inner.memberships_seen.load(Ordering::SeqCst) != seen {
                continue;
            }
            let ids: HashSet<RoomId> = rooms.iter().map(|r| r.id).collect();
            for (room, members) in cache.members.iter_mut() {
                if !ids.contains(room) {
                    members.remove(&account);
                }
            }
            for room in rooms {
                cache.members.entry(room.id).or_default().insert(account);
                cache.by_key.insert(room.name.to_ascii_lowercase(), room);
            }
            break;
        }
        Ok(())
    }

    /// On a shared store, a name this node does not know may be an account
    /// a sibling made a moment ago: looks it up in the store. Resolves to
    /// whether the name is known now.
    pub(super) fn learn_account(&self, name: &str) -> impl Future<Output = bool> + Send + use<> {
        let core = self.clone();
        // `name@node` names the shared account too when node is a sibling.
        let bare = match name.split_once('@') {
            Some((bare, node)) if self.is_this_store(node) => bare,
            Some(_) => "",
            None => name,
        };
        let key = names::account_key(bare).ok();
        async move {
            let (Some(key), Some(_)) = (key, core.inner.shared.as_ref()) else {
                return false;
            };
            match core.inner.store.account_by_key(&key).await {
                Ok(Some(record)) => {
                    if core.know_account(AccountSummary {
                        id: record.id,
                        name: record.name,
                        created_ms: record.created_ms,
                    }) {
                        core.inner.changed.notify_one();
                    }
                    true
                }
                _ => false,
            }
        }
    }
}
