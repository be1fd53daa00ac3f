//! Sending, receiving, rooms, history and the views of who is here.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;

use futures::future::Either;
use wildmatch::WildMatch;

use super::directory::Recipient;
use super::hub::{Attachment, Closed};
use super::message::{Delivery, on_commit};
use super::{
    Claim, Core, CoreError, Gathered, Identity, Message, RemoteDirect, Sent, Stats, Target,
    UserInfo, names, now_ms,
};
use crate::model::AccountId;
use crate::store::{Conversation, NewMessage, StoreError};

/// Longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 128;
/// Most ids one Ack may carry.
pub const MAX_ACK_IDS: usize = 10_000;
/// Most messages one history request returns.
pub const MAX_HISTORY: u32 = 1000;
/// Longest user pattern, in characters.
pub const MAX_PATTERN: usize = 64;
/// A history request's limit: 0 asks for the most there is.
pub(super) fn history_limit(limit: u32) -> u32 {
    if limit == 0 {
        MAX_HISTORY
    } else {
        limit.min(MAX_HISTORY)
    }
}

/// Backlog rows read from the store at a time.
const BACKLOG_PAGE: u32 = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub name: String,
    pub members: u32,
    pub joined: bool,
}

/// One live stream of deliveries for a session: first what waits in the
/// store, then live traffic.
///
/// The stream registers with the hub *before* reading the store's newest id
/// (the high-water mark). Anything committed up to that mark comes from the
/// store; anything live at or below it is a repeat and is skipped; so nothing
/// falls between the two and nothing comes twice.
pub struct Inbox {
    core: Core,
    account: AccountId,
    live: Attachment,
    high_water: u64,
    backlog: VecDeque<Delivery>,
    read_up_to: u64,
    backlog_done: bool,
    /// The page being read. Kept here so that a caller that stops waiting
    /// (a `select!` that takes another branch) resumes the same read next
    /// time instead of abandoning it and starting another.
    reading: Option<futures::future::BoxFuture<'static, Result<Vec<Message>, StoreError>>>,
}

impl Inbox {
    /// Deliveries at hand: at least this many calls to [`Inbox::next`]
    /// return without waiting, unless the stream ends.
    pub fn ready(&self) -> usize {
        self.backlog.len() + self.live.ready()
    }

    /// The next message for this session, or why the stream ended.
    pub async fn next(&mut self) -> Result<Delivery, Closed> {
        loop {
            if let Some(message) = self.backlog.pop_front() {
                // A logout or shutdown ends the stream at once, backlog or not;
                // an overflow only after the backlog, which is still owed.
                match self.live.closed() {
                    Some(why) if why != Closed::Overflow => return Err(why),
                    _ => return Ok(message),
                }
            }
            if !self.backlog_done {
                let reading = self.reading.get_or_insert_with(|| {
                    let store = self.core.inner.store.clone();
                    let (account, after, up_to) = (self.account, self.read_up_to, self.high_water);
                    Box::pin(
                        async move { store.pending(account, after, up_to, BACKLOG_PAGE).await },
                    )
                });
                let page = reading.await;
                self.reading = None;
                let page = page.map_err(|e| {
                    tracing::error!(error = %e, "reading the backlog failed");
                    Closed::StoreFailed
                })?;
                self.backlog_done = page.len() < BACKLOG_PAGE as usize;
                if let Some(last) = page.last() {
                    self.read_up_to = last.id;
                }
                self.backlog.extend(page.into_iter().map(Delivery::new));
                continue;
            }
            let message = self.live.recv().await?;
            if message.id > self.high_water {
                return Ok(message);
            }
        }
    }
}

/// A send on its way: to this node's store, or to another node.
enum Queued {
    Here(crate::store::PendingAppend),
    Elsewhere(futures::future::BoxFuture<'static, Result<Sent, CoreError>>),
}

impl Core {
    /// Stores a message and hands it to every live session it is for.
    ///
    /// The checks run and the message is queued for the store before this
    /// returns; the future resolves once it is on disk. So a connection may
    /// keep several sends in flight and they are still stored in the order
    /// it made them.
    pub fn send(
        &self,
        who: &Identity,
        to: &Target,
        body: &str,
        client_msg_id: Option<&str>,
    ) -> impl Future<Output = Result<Sent, CoreError>> + Send + use<> {
        let queued = self.queue_send(who, to, body, client_msg_id);
        // On a shared store, a name unknown here may be an account a
        // sibling made a moment ago: learn it from the store and try again.
        // That rare path is boxed: every send in flight is one allocation,
        // and a future carrying the look-up inline grows it past what the
        // allocator serves from its per-thread cache.
        match (&queued, to) {
            (Err(CoreError::NoSuchUser(_)), Target::User(name)) if self.inner.shared.is_some() => {
                let learned = self.learn_account(name);
                let again = (self.clone(), who.clone(), to.clone(), body.to_owned());
                let client_msg_id = client_msg_id.map(str::to_owned);
                Either::Left(Box::pin(async move {
                    let (core, who, to, body) = again;
                    // One look-up at a time, first come first served: two
                    // sends to a name learned this way are queued in the
                    // order made.
                    let _turn = core.inner.learning.lock().await;
                    let queued = match learned.await {
                        true => core.queue_send(&who, &to, &body, client_msg_id.as_deref()),
                        false => queued,
                    };
                    Self::sent(queued).await
                }))
            }
            _ => Either::Right(Self::sent(queued)),
        }
    }

    /// What a queued send comes to.
    async fn sent(queued: Result<Queued, CoreError>) -> Result<Sent, CoreError> {
        match queued? {
            Queued::Here(pending) => {
                let appended = pending.await?;
                Ok(Sent {
                    id: appended.id,
                    sent_at_ms: appended.sent_at_ms,
                    duplicate: appended.duplicate,
                })
            }
            Queued::Elsewhere(routed) => routed.await,
        }
    }

    fn queue_send(
        &self,
        who: &Identity,
        to: &Target,
        body: &str,
        client_msg_id: Option<&str>,
    ) -> Result<Queued, CoreError> {
        self.check_send(body, client_msg_id)?;
        let client_msg_id = client_msg_id.filter(|id| !id.is_empty()).map(str::to_owned);
        let mut message = NewMessage {
            sender: who.account,
            sender_name: who.name.clone(),
            recipient: None,
            room: None,
            body: body.to_owned(),
            client_msg_id,
            sent_at_ms: now_ms(),
        };
        let room = match to {
            Target::User(name) => {
                match self.recipient(name)? {
                    Recipient::Local(id, name) => message.recipient = Some((id, name)),
                    Recipient::Remote(claim) => return self.send_elsewhere(claim, message),
                }
                None
            }
            Target::Room(name) => {
                let room = self.room(name)?;
                if !self.is_member(room.id, who.account) {
                    return Err(CoreError::NotMember(room.name));
                }
                message.room = Some((room.id, room.name.clone()));
                Some(room.id)
            }
        };
        message.sender_name = self.shown_name(&who.name, self.node());
        let recipient = message.recipient.as_ref().map(|(id, _)| *id);
        let fan_out = self.fan_out_on_commit(who, room, recipient);
        Ok(Queued::Here(self.inner.store.append(message, fan_out)))
    }

    /// Hands a direct message for an account homed on another node to the
    /// mesh.
    fn send_elsewhere(&self, to: Claim, message: NewMessage) -> Result<Queued, CoreError> {
        let remote = self
            .remote()
            .ok_or_else(|| CoreError::Unreachable("this node is not in a mesh".into()))?;
        Ok(Queued::Elsewhere(remote.send_direct(RemoteDirect {
            to,
            from: message.sender_name,
            body: message.body,
            client_msg_id: message.client_msg_id,
            sent_ms: message.sent_at_ms,
        })))
    }

    /// What a local send does once committed: hand it to the live sessions
    /// it is for, and pass room speech on to the other nodes.
    fn fan_out_on_commit(
        &self,
        who: &Identity,
        room: Option<crate::model::RoomId>,
        recipient: Option<AccountId>,
    ) -> Box<dyn crate::store::CommitHook> {
        // Fan-out runs on the commit path: in commit order (so a receiver
        // sees ids ascending and a room ack never skips an earlier message),
        // and even when the sender has stopped waiting.
        let core = self.clone();
        let except = who.session;
        on_commit(move |delivery, duplicate| {
            if duplicate {
                return;
            }
            crate::metrics::messages_stored(1);
            match (room, recipient) {
                (Some(room), _) => {
                    core.fan_out_room(delivery, room, Some(except));
                    if let Some(remote) = core.remote() {
                        remote.flood(delivery, room);
                    }
                }
                (None, Some(recipient)) => {
                    core.inner.hub.fan_out(delivery, [&recipient], Some(except));
                    if let Some(siblings) = core.siblings() {
                        siblings.to_siblings(delivery, recipient);
                    }
                }
                (None, None) => {}
            }
        })
    }

    /// The checks every message passes before it is stored, whichever node
    /// it comes from: this node is running, the body is acceptable and the
    /// client's id is within bounds.
    pub(super) fn check_send(
        &self,
        body: &str,
        client_msg_id: Option<&str>,
    ) -> Result<(), CoreError> {
        self.check_running()?;
        self.check_body(body)?;
        if client_msg_id.is_some_and(|id| id.len() > MAX_CLIENT_MSG_ID) {
            return Err(CoreError::invalid(
                "client_msg_id",
                format!("it is longer than {MAX_CLIENT_MSG_ID} bytes"),
            ));
        }
        Ok(())
    }

    pub(super) fn check_body(&self, body: &str) -> Result<(), CoreError> {
        let max = self.inner.limits.max_body;
        if body.is_empty() {
            return Err(CoreError::invalid("body", "it is empty"));
        }
        if body.len() > max {
            return Err(CoreError::invalid(
                "body",
                format!("{} bytes is over the limit of {max}", body.len()),
            ));
        }
        // A line break would let one message forge further lines on the line protocol.
        if body.chars().any(|c| c.is_control() && c != '\t') {
            return Err(CoreError::invalid(
                "body",
                "it contains a line break or control character",
            ));
        }
        Ok(())
    }

    fn is_member(&self, room: crate::model::RoomId, account: AccountId) -> bool {
        self.rooms_read()
            .members
            .get(&room)
            .is_some_and(|m| m.contains(&account))
    }

    /// Opens a live stream of deliveries for a session.
    pub async fn attach(&self, who: &Identity) -> Result<Inbox, CoreError> {
        self.check_running()?;
        // The backlog is read against the store's cursors and inbox, which
        // must first have this account's acknowledgements so far. Before
        // attaching, so the live queue does not fill meanwhile.
        self.inner.acks.flush_account(who.account).await;
        let live = self.inner.hub.attach(who.account, who.session);
        let high_water = self.inner.store.last_message_id().await?;
        Ok(Inbox {
            core: self.clone(),
            account: who.account,
            live,
            high_water,
            backlog: VecDeque::new(),
            read_up_to: 0,
            backlog_done: false,
            reading: None,
        })
    }

    /// Marks messages as shown, so they are not delivered again. The store
    /// learns of it within [`acks::ACK_DELAY`](super::acks::ACK_DELAY), and
    /// before this account's next backlog is read. Returns at once, unless
    /// acknowledgements arrive faster than the store takes them.
    pub async fn ack(&self, who: &Identity, ids: &[u64]) -> Result<(), CoreError> {
        if ids.len() > MAX_ACK_IDS {
            return Err(CoreError::invalid(
                "ack",
                format!("{} ids is over the limit of {MAX_ACK_IDS}", ids.len()),
            ));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let sorted = self.inner.recent.sort(ids);
        let hold = self
            .inner
            .acks
            .record(who.account, &sorted.others, &sorted.rooms);
        if hold {
            self.inner.acks.flush().await?;
        }
        Ok(())
    }

    /// Hands committed room speech to every live member session on this
    /// node, and remembers its room for the acknowledgements to come.
    pub(super) fn fan_out_room(
        &self,
        delivery: &Delivery,
        room: crate::model::RoomId,
        except: Option<crate::model::SessionId>,
    ) {
        self.inner.recent.record(delivery.id, room);
        let rooms = self.rooms_read();
        if let Some(members) = rooms.members.get(&room) {
            self.inner.hub.fan_out(delivery, members, except);
        }
    }

    /// Marks delivered messages as shown, as [`Core::ack`] does. Knowing the
    /// messages, the core keeps only direct-message ids and the newest id
    /// per room.
    pub fn ack_shown(&self, who: &Identity, shown: &[Delivery]) {
        let mut direct = Vec::new();
        // The newest id per room name. A batch is nearly always one or two
        // rooms, so a short list beats hashing every message's room name.
        let mut newest: Vec<(&str, u64)> = Vec::new();
        for message in shown {
            match &message.to {
                Target::User(_) => direct.push(message.id),
                Target::Room(name) => match newest.iter_mut().find(|(n, _)| *n == name.as_str()) {
                    Some((_, id)) => *id = (*id).max(message.id),
                    None => newest.push((name, message.id)),
                },
            }
        }
        let mut rooms: Vec<(crate::model::RoomId, u64)> = Vec::with_capacity(newest.len());
        {
            let cache = self.rooms_read();
            for (name, id) in newest {
                if let Some(room) = cache.by_key.get(&name.to_ascii_lowercase()) {
                    match rooms.iter_mut().find(|(r, _)| *r == room.id) {
                        Some((_, newest)) => *newest = (*newest).max(id),
                        None => rooms.push((room.id, id)),
                    }
                }
            }
        }
        // Bounded by what was delivered, so never held back.
        let _ = self.inner.acks.record(who.account, &direct, &rooms);
    }

    /// A room's or a direct conversation's history after a cursor.
    pub async fn history(
        &self,
        who: &Identity,
        of: &Target,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<Message>, CoreError> {
        let conversation = match (self.conversation(who, of), of) {
            (Err(CoreError::NoSuchUser(_)), Target::User(name))
                if self.learn_account(name).await =>
            {
                self.conversation(who, of)?
            }
            (conversation, _) => conversation?,
        };
        Ok(self
            .inner
            .store
            .history(conversation, after, history_limit(limit), newest)
            .await?)
    }

    /// The stored conversation `of` names, if `who` may read it.
    pub(super) fn conversation(
        &self,
        who: &Identity,
        of: &Target,
    ) -> Result<Conversation, CoreError> {
        match of {
            Target::Room(name) => {
                let room = self.room(name)?;
                if !self.is_member(room.id, who.account) {
                    return Err(CoreError::NotMember(room.name));
                }
                Ok(Conversation::Room(room.id))
            }
            Target::User(name) => match self.recipient(name)? {
                Recipient::Local(id, _) => Ok(Conversation::Direct(who.account, id)),
                Recipient::Remote(claim) => Err(CoreError::invalid(
                    "conversation",
                    format!(
                        "{} is homed on node {}: this node keeps no history with them",
                        claim.name, claim.node
                    ),
                )),
            },
        }
    }

    /// Joins a room, creating it if needed, and makes it the one the caller
    /// speaks in. Returns its name and whether the caller was not a member
    /// before.
    pub async fn join_room(&self, who: &Identity, name: &str) -> Result<(String, bool), CoreError> {
        self.check_running()?;
        let seen = self.places_seen();
        let (bare, key) = names::room_key(name)?;
        let existing = self.rooms_read().by_key.get(&key).cloned();
        if let Some(room) = &existing
            && self.is_member(room.id, who.account)
        {
            self.enter_room(who, &room.name, seen);
            return Ok((room.name.clone(), false));
        }
        let joined_count = self
            .rooms_read()
            .members
            .values()
            .filter(|m| m.contains(&who.account))
            .count();
        let max = self.inner.limits.max_rooms_per_account;
        if joined_count >= max {
            return Err(CoreError::Limit(format!(
                "you are in {joined_count} rooms, the most allowed is {max}: leave one first"
            )));
        }
        let room = match existing {
            Some(room) => room,
            None => {
                let rooms = self.rooms_read().by_key.len();
                let max = self.inner.limits.max_rooms;
                if rooms >= max {
                    return Err(CoreError::Limit(format!(
                        "this node has {rooms} rooms, the most allowed: join an existing one"
                    )));
                }
                self.inner.store.ensure_room(bare, &key).await?
            }
        };
        // The member list changes on the commit path, so the first message
        // committed after the join already reaches the new member.
        let (core, account, record) = (self.clone(), who.account, room.clone());
        let on_commit: crate::store::MembershipHook = Box::new(move |joined| {
            core.inner.memberships_seen.fetch_add(1, Ordering::SeqCst);
            if *joined && let Some(siblings) = core.siblings() {
                siblings.membership(record.id, &record.name, account, true);
            }
            let mut rooms = core.rooms_write();
            rooms.members.entry(record.id).or_default().insert(account);
            rooms.by_key.insert(key, record);
        });
        let joined = self
            .inner
            .store
            .join(who.account, room.id, on_commit)
            .await?;
        self.enter_room(who, &room.name, seen);
        Ok((room.name, joined))
    }

    /// Leaves a room; a caller that spoke there speaks in the lobby again.
    /// Returns whether the caller was a member.
    pub async fn leave_room(&self, who: &Identity, name: &str) -> Result<bool, CoreError> {
        self.check_running()?;
        let room = self.room(name)?;
        if room.id == self.inner.lobby {
            return Err(CoreError::invalid("room", "nobody leaves #lobby"));
        }
        let (core, account, record) = (self.clone(), who.account, room.clone());
        let on_commit: crate::store::MembershipHook = Box::new(move |left| {
            core.inner.memberships_seen.fetch_add(1, Ordering::SeqCst);
            if *left && let Some(siblings) = core.siblings() {
                siblings.membership(record.id, &record.name, account, false);
            }
            if let Some(members) = core.rooms_write().members.get_mut(&record.id) {
                members.remove(&account);
            }
        });
        let left = self
            .inner
            .store
            .leave(who.account, room.id, on_commit)
            .await?;
        self.left_room(who, &room.name);
        Ok(left)
    }

    pub fn list_rooms(&self, who: &Identity) -> Vec<RoomInfo> {
        let rooms = self.rooms_read();
        let mut list: Vec<RoomInfo> = rooms
            .by_key
            .values()
            .map(|room| {
                let members = rooms.members.get(&room.id);
                RoomInfo {
                    name: room.name.clone(),
                    members: members.map_or(0, |m| m.len() as u32),
                    joined: members.is_some_and(|m| m.contains(&who.account)),
                }
            })
            .collect();
        list.sort_by_key(|r| r.name.to_ascii_lowercase());
        list
    }

    /// Accounts whose names match a glob (`*`, `?`), case-insensitively,
    /// on every node this node knows of.
    pub fn list_users(&self, pattern: &str) -> Result<Vec<UserInfo>, CoreError> {
        let pattern = if pattern.is_empty() { "*" } else { pattern };
        if pattern.chars().count() > MAX_PATTERN {
            return Err(CoreError::invalid(
                "pattern",
                format!("it is longer than {MAX_PATTERN} characters"),
            ));
        }
        let glob = WildMatch::new_case_insensitive(pattern);
        // Online on a sibling is online: the account is the same one.
        let elsewhere = self
            .siblings()
            .map(|s| s.sibling_online())
            .unwrap_or_default();
        let mut users: Vec<UserInfo> = self
            .directory_read()
            .values()
            .filter(|account| glob.matches(&account.name))
            .map(|account| UserInfo {
                name: account.name.clone(),
                online: self.inner.hub.is_online(account.id)
                    || elsewhere.contains(&account.name.to_ascii_lowercase()),
                node: self.inner.node.clone(),
            })
            .collect();
        if let Some(remote) = self.remote() {
            users.extend(
                remote
                    .accounts()
                    .into_iter()
                    .filter(|u| glob.matches(&u.name)),
            );
        }
        self.show_names(&mut users);
        users.sort_by(by_name_then_node);
        Ok(users)
    }

    /// Who is online on this node, sorted by name.
    pub fn who_here(&self) -> Vec<UserInfo> {
        let online: std::collections::HashSet<AccountId> =
            self.inner.hub.online().into_iter().collect();
        let mut users: Vec<UserInfo> = self
            .directory_read()
            .values()
            .filter(|account| online.contains(&account.id))
            .map(|account| UserInfo {
                name: account.name.clone(),
                online: true,
                node: self.inner.node.clone(),
            })
            .collect();
        users.sort_by_key(|u| u.name.to_ascii_lowercase());
        users
    }

    /// Who is online on every reachable node, sorted by name, and the nodes
    /// that did not answer in time.
    pub async fn who(&self) -> Gathered<UserInfo> {
        let mut gathered = match self.remote() {
            Some(remote) => remote.gather_who().await,
            None => Gathered::default(),
        };
        gathered.answers.extend(self.who_here());
        self.show_names(&mut gathered.answers);
        gathered.answers.sort_by(by_name_then_node);
        gathered
    }

    /// This node's own figures.
    pub async fn stats(&self) -> Result<Stats, CoreError> {
        let counts = self.inner.store.counts().await?;
        Ok(Stats {
            messages: counts.messages,
            accounts: counts.accounts,
            sessions_online: self.inner.hub.session_count() as u64,
            rooms: counts.rooms,
            uptime_secs: self.inner.started.elapsed().as_secs(),
            node: self.inner.node.clone(),
        })
    }

    /// Totals over every node that answered, and the nodes that did not.
    /// Rooms are counted per node: a room held on two nodes counts twice.
    pub async fn mesh_stats(&self) -> Result<(Stats, Vec<String>), CoreError> {
        let mut total = self.stats().await?;
        let Some(remote) = self.remote() else {
            return Ok((total, Vec::new()));
        };
        let gathered = remote.gather_stats().await;
        for s in &gathered.answers {
            // The figures come from other nodes: no overflow on their word.
            total.sessions_online = total.sessions_online.saturating_add(s.sessions_online);
            // A sibling's messages, accounts and rooms are this node's own.
            if remote.is_sibling(&s.node) {
                continue;
            }
            total.messages = total.messages.saturating_add(s.messages);
            total.accounts = total.accounts.saturating_add(s.accounts);
            total.rooms = total.rooms.saturating_add(s.rooms);
        }
        total.node = format!("mesh of {} nodes", gathered.answers.len() + 1);
        Ok((total, gathered.missing))
    }
}

/// Users in the order lists show them: by name, ignoring case, then node.
fn by_name_then_node(a: &UserInfo, b: &UserInfo) -> std::cmp::Ordering {
    (a.name.to_ascii_lowercase(), &a.node).cmp(&(b.name.to_ascii_lowercase(), &b.node))
}
