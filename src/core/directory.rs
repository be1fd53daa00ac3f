//! Where a user name leads and how it is shown, and the core's view of the
//! other nodes: the [`Remote`] trait and the types that cross it.
//!
//! Both sending (`chat.rs`) and the mesh's calls into the core
//! (`remote.rs`) build on this module; it builds on neither.

use std::sync::Arc;

use futures::future::BoxFuture;

use std::collections::BTreeSet;

use super::{Core, CoreError, Message, Moderated, ModerationRequest, Sent, names};
use crate::model::{AccountId, RoomId, SessionId};

/// An account as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub online: bool,
    /// The node the account is homed on.
    pub node: String,
}

/// One node's figures, or the mesh's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub messages: u64,
    pub accounts: u64,
    pub sessions_online: u64,
    pub rooms: u64,
    pub uptime_secs: u64,
    pub node: String,
}

/// An account homed on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub node: String,
    pub name: String,
    pub created_ms: i64,
}

/// A direct message for an account on another node.
#[derive(Debug, Clone)]
pub struct RemoteDirect {
    pub to: Claim,
    pub from: String,
    pub body: String,
    pub client_msg_id: Option<String>,
    pub sent_ms: i64,
}

/// Answers gathered from other nodes, and the nodes that did not answer.
#[derive(Debug, Clone)]
pub struct Gathered<T> {
    pub answers: Vec<T>,
    pub missing: Vec<String>,
}

impl<T> Default for Gathered<T> {
    fn default() -> Self {
        Gathered {
            answers: Vec::new(),
            missing: Vec::new(),
        }
    }
}

/// A direct link to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLink {
    pub node: String,
    pub address: String,
    /// This node dialled it.
    pub outbound: bool,
}

/// The mesh as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Every node known, this one included, sorted.
    pub nodes: Vec<String>,
    /// Links both of whose ends report them, each as (lesser, greater).
    pub links: Vec<(String, String)>,
}

/// What the core asks of the mesh.
pub trait Remote: Send + Sync + 'static {
    /// Accepts peer links on `addr`; returns the address bound.
    fn listen(&self, addr: String) -> BoxFuture<'static, Result<String, CoreError>>;
    /// Links to the node at `addr` and keeps the link up; returns its name.
    fn connect(&self, addr: String) -> BoxFuture<'static, Result<String, CoreError>>;
    /// Drops the link to `node` and stops redialling it.
    fn kill(&self, node: &str) -> Result<(), CoreError>;
    fn peers(&self) -> Vec<PeerLink>;
    fn topology(&self) -> Topology;
    /// Accounts other nodes hold under this name key.
    fn claims(&self, key: &str) -> Vec<Claim>;
    /// Accounts of other nodes, with whether each is online now.
    fn accounts(&self) -> Vec<UserInfo>;
    /// Passes committed room speech on to the other nodes. Must not block:
    /// it runs on the commit path.
    fn flood(&self, message: &Message, room: RoomId);
    /// Whether `node` runs on this node's shared store.
    fn is_sibling(&self, node: &str) -> bool;
    /// Name keys of the accounts online on the siblings.
    fn sibling_online(&self) -> BTreeSet<String>;
    /// Hands a direct message committed to the shared store to the
    /// siblings, for the recipient's sessions there. Must not block.
    fn to_siblings(&self, message: &Message, recipient: AccountId);
    /// Tells the siblings of a membership committed to the shared store.
    fn membership(&self, room: RoomId, name: &str, account: AccountId, joined: bool);
    /// Tells the siblings that an account was deleted.
    fn account_deleted(&self, account: AccountId);
    /// Tells the siblings that a session ended: its token stops working.
    fn session_ended(&self, session: SessionId);
    /// Tells the siblings that an operator ended every session of an
    /// account (a kick or a suspension), with the notice its sessions get.
    fn sessions_removed(&self, account: AccountId, notice: &str);
    /// Has an operator's act done on the home node of the account `name`;
    /// resolves with what that node did.
    fn moderate(
        &self,
        node: String,
        request: ModerationRequest,
    ) -> BoxFuture<'static, Result<Moderated, CoreError>>;
    /// Routes a direct message to its recipient's home node; resolves once
    /// that node has committed it.
    fn send_direct(&self, message: RemoteDirect) -> BoxFuture<'static, Result<Sent, CoreError>>;
    /// Who is online on each other reachable node.
    fn gather_who(&self) -> BoxFuture<'static, Gathered<UserInfo>>;
    /// Each other reachable node's own figures.
    fn gather_stats(&self) -> BoxFuture<'static, Gathered<Stats>>;
}

/// Where a user name leads.
pub(super) enum Recipient {
    Local(AccountId, String),
    Remote(Claim),
}

impl Core {
    /// Connects the core to the mesh. Only the first call takes effect.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.inner.remote.set(remote);
    }

    /// The mesh, if one is attached; without one this node has no peers.
    pub(super) fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.inner.remote.get()
    }

    /// The mesh, when this node runs on a shared store and so may have
    /// siblings to tell of what it commits.
    pub(super) fn siblings(&self) -> Option<&Arc<dyn Remote>> {
        self.inner.shared.as_ref().and(self.remote())
    }

    /// Resolves a user name: `name@node` names one node's account; a bare
    /// name goes to the earliest claim on it, so after a partition heals
    /// the first account registered keeps the bare name.
    pub(super) fn recipient(&self, name: &str) -> Result<Recipient, CoreError> {
        let no_such = || CoreError::NoSuchUser(name.to_owned());
        let (bare, node) = match name.split_once('@') {
            Some((bare, node)) => (bare, Some(node)),
            None => (name, None),
        };
        let key = names::account_key(bare).map_err(|_| no_such())?;
        let local = self.directory_read().get(&key).cloned();
        let remote = self.remote().map(|r| r.claims(&key)).unwrap_or_default();
        if let Some(node) = node {
            if self.is_this_store(node) {
                return local
                    .map(|a| Recipient::Local(a.id, a.name))
                    .ok_or_else(no_such);
            }
            return remote
                .into_iter()
                .find(|c| c.node.eq_ignore_ascii_case(node))
                .map(Recipient::Remote)
                .ok_or_else(no_such);
        }
        let earliest_remote = remote
            .into_iter()
            .min_by(|a, b| (a.created_ms, &a.node).cmp(&(b.created_ms, &b.node)));
        match (local, earliest_remote) {
            (Some(local), Some(claim))
                if (claim.created_ms, claim.node.as_str()) < (local.created_ms, self.node()) =>
            {
                Ok(Recipient::Remote(claim))
            }
            (Some(local), _) => Ok(Recipient::Local(local.id, local.name)),
            (None, Some(claim)) => Ok(Recipient::Remote(claim)),
            (None, None) => Err(no_such()),
        }
    }

    /// How the account `name` homed on `node` is shown to users: the bare
    /// name when `node` holds the earliest claim on it, or nobody claims it;
    /// else `name@node`. So after a partition heals, the later of two
    /// accounts sharing a name can never pass as the earlier: its speech,
    /// its direct messages and its line in a listing all carry its node.
    pub(super) fn shown_name(&self, name: &str, node: &str) -> String {
        let Ok(key) = names::account_key(name) else {
            return name.to_owned();
        };
        // A sibling's accounts are this node's own.
        let node = match self.siblings() {
            Some(siblings) if node != self.node() && siblings.is_sibling(node) => self.node(),
            _ => node,
        };
        let remote = self.remote().map(|r| r.claims(&key)).unwrap_or_default();
        // Every local send asks: with no other claim, a local name is bare.
        if remote.is_empty() && node == self.node() {
            return name.to_owned();
        }
        let local = self
            .directory_read()
            .get(&key)
            .map(|a| (a.created_ms, self.node().to_owned()));
        // The same order as [`Core::recipient`]'s: (created_ms, node).
        let earliest = remote
            .into_iter()
            .map(|c| (c.created_ms, c.node))
            .chain(local)
            .min();
        match earliest {
            Some((_, holder)) if !holder.eq_ignore_ascii_case(node) => format!("{name}@{node}"),
            _ => name.to_owned(),
        }
    }

    /// Names in a listing as users see them, by [`Core::shown_name`].
    pub(super) fn show_names(&self, users: &mut [UserInfo]) {
        for user in users {
            user.name = self.shown_name(&user.name, &user.node);
        }
    }
}
