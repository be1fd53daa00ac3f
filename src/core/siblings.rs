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

use super::message::Delivery;
use super::{Closed, Core, CoreError, Identity, Message, names};
use crate::model::{AccountId, RoomId, SessionId};
use crate::store::{AccountSummary, RoomRecord};

impl Core {
    /// The id of the shared store this node runs on, if it runs on one.
    pub fn shared_store(&self) -> Option<String> {
        self.inner.shared.clone()
    }

    /// Hands room speech a sibling committed to its members' sessions here.
    /// The room is unknown here when none of its members ever came here, and
    /// then there is nobody to hand it to.
    pub fn deliver_stored_speech(&self, message: Message, room: RoomId) {
        if self.check_body(&message.body).is_err() {
            return;
        }
        self.fan_out_room(&Delivery::new(message), room, None);
    }

    /// Hands a direct message a sibling committed to its recipient's
    /// sessions here.
    pub fn deliver_stored_direct(&self, message: Message) {
        let super::Target::User(to) = &message.to else {
            return;
        };
        let Ok(key) = names::account_key(to) else {
            return;
        };
        let Some(account) = self.directory_read().get(&key).map(|a| a.id) else {
            return;
        };
        if self.check_body(&message.body).is_err() {
            return;
        }
        self.inner
            .hub
            .fan_out(&Delivery::new(message), [&account], None);
    }

    /// A session a sibling ended: its token stops working here too, and its
    /// streams here close.
    pub fn session_ended_elsewhere(&self, session: SessionId) {
        let account = self
            .sessions()
            .values()
            .find(|s| s.session == session)
            .map(|s| s.account);
        self.revoke(|_, s| s == session);
        if let Some(account) = account {
            self.inner
                .hub
                .close_session(account, session, Closed::LoggedOut);
        }
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
    pub fn sibling_membership(&self, room: RoomRecord, account: AccountId, joined: bool) {
        let mut rooms = self.rooms_write();
        if joined {
            rooms.members.entry(room.id).or_default().insert(account);
            rooms.by_key.insert(room.name.to_ascii_lowercase(), room);
        } else if let Some(members) = rooms.members.get_mut(&room.id) {
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
    /// or have joined rooms, through a sibling: the directory and the room
    /// members learn of it from the store before its session starts.
    pub(super) async fn know_from_store(&self, who: &Identity) -> Result<(), CoreError> {
        if self.inner.shared.is_none() {
            return Ok(());
        }
        if let Some(record) = self.inner.store.account_by_id(who.account).await?
            && self.know_account(AccountSummary {
                id: record.id,
                name: record.name,
                created_ms: record.created_ms,
            })
        {
            self.inner.changed.notify_one();
        }
        let rooms = self.inner.store.rooms_of(who.account).await?;
        let mut cache = self.rooms_write();
        for room in rooms {
            cache
                .members
                .entry(room.id)
                .or_default()
                .insert(who.account);
            cache.by_key.insert(room.name.to_ascii_lowercase(), room);
        }
        Ok(())
    }

    /// On a shared store, a name this node does not know may be an account
    /// a sibling made a moment ago: looks it up in the store. Resolves to
    /// whether the name is known now.
    pub(super) fn learn_account(&self, name: &str) -> impl Future<Output = bool> + Send + use<> {
        let core = self.clone();
        let key = names::account_key(name).ok();
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
