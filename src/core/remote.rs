//! The core's view of other nodes.
//!
//! The core knows nothing of sockets or peer frames: it talks to the mesh
//! through [`Remote`], which the mesh module implements, and the mesh calls
//! back into the core through the methods here to store and deliver what
//! other nodes send. A core with no `Remote` attached (the server always
//! attaches its mesh) behaves as a node with no peers.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::chat::{Stats, UserInfo};
use super::{Core, CoreError, Delivery, Identity, Message, Sent, now_ms};
use crate::model::AccountId;
use crate::store::NewMessage;

/// The account id stored as the sender of messages from other nodes: no
/// local account has it, and it keeps their `client_msg_id`s apart from
/// local ones.
const REMOTE_SENDER: AccountId = AccountId(0);

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
    fn flood(&self, message: &Message);
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

    pub(super) fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.inner.remote.get()
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
        let key = super::names::account_key(bare).map_err(|_| no_such())?;
        let local = self.directory_read().get(&key).cloned();
        let remote = self.remote().map(|r| r.claims(&key)).unwrap_or_default();
        if let Some(node) = node {
            if node.eq_ignore_ascii_case(self.node()) {
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
        let Ok(key) = super::names::account_key(name) else {
            return name.to_owned();
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

    /// Names of the accounts online on this node.
    pub fn local_online(&self) -> Vec<String> {
        self.who_here().into_iter().map(|u| u.name).collect()
    }

    /// Accounts homed on this node: (name, created_ms).
    pub fn local_accounts(&self) -> Vec<(String, i64)> {
        let mut accounts: Vec<(String, i64)> = self
            .directory_read()
            .values()
            .map(|a| (a.name.clone(), a.created_ms))
            .collect();
        accounts.sort();
        accounts
    }

    /// Resolves when this node's accounts or who is online may have changed.
    pub async fn local_changed(&self) {
        self.inner.changed.notified().await
    }

    /// Stores room speech from another node and delivers it to this node's
    /// members, from `from` as [`Core::shown_name`] shows the account of
    /// that name on `origin`; resolves once it is stored. `key` identifies the message
    /// mesh-wide, so a replay is stored once. Speech for a room this node
    /// does not hold has nobody to reach here and is dropped, as is speech
    /// this node would not accept from a local user.
    pub fn deliver_remote_speech(
        &self,
        key: String,
        room: &str,
        from: &str,
        origin: &str,
        body: &str,
        sent_ms: i64,
    ) -> impl Future<Output = ()> + Send + use<> {
        let record = self.room(room).ok();
        let acceptable = self.check_body(body).is_ok()
            && super::names::account_key(from).is_ok()
            && key.len() <= 2 * super::chat::MAX_CLIENT_MSG_ID;
        let pending = record.filter(|_| acceptable).map(|record| {
            let message = NewMessage {
                sender: REMOTE_SENDER,
                sender_name: self.shown_name(from, origin),
                recipient: None,
                room: Some((record.id, record.name)),
                body: body.to_owned(),
                client_msg_id: Some(key),
                sent_at_ms: sent_ms,
            };
            let core = self.clone();
            let room_id = record.id;
            self.inner.store.append(
                message,
                Box::new(move |appended| {
                    if appended.duplicate {
                        return;
                    }
                    core.fan_out_room(&Delivery::new(appended.message.clone()), room_id, None);
                }),
            )
        });
        async move {
            if let Some(pending) = pending
                && let Err(e) = pending.await
            {
                tracing::warn!(error = %e, "could not store speech from another node");
            }
        }
    }

    /// Stores a direct message from another node for an account homed here
    /// and delivers it to that account's live sessions, from `from` as
    /// [`Core::shown_name`] shows the account of that name on `from_node`. Queued before it
    /// returns, so messages handed over in order are stored in order.
    pub fn deliver_remote_direct(
        &self,
        from: &str,
        from_node: &str,
        to: &str,
        body: &str,
        client_msg_id: Option<&str>,
        sent_ms: i64,
    ) -> impl Future<Output = Result<Sent, CoreError>> + Send + use<> {
        let queued = (|| -> Result<_, CoreError> {
            self.check_running()?;
            self.check_body(body)?;
            // A peer is trusted with the secret, not with well-formed input.
            super::names::account_key(from)
                .map_err(|_| CoreError::invalid("from", "it is not a valid account name"))?;
            if client_msg_id.is_some_and(|id| id.len() > super::chat::MAX_CLIENT_MSG_ID) {
                return Err(CoreError::invalid(
                    "client_msg_id",
                    format!("it is longer than {} bytes", super::chat::MAX_CLIENT_MSG_ID),
                ));
            }
            let key =
                super::names::account_key(to).map_err(|_| CoreError::NoSuchUser(to.to_owned()))?;
            let account = self
                .directory_read()
                .get(&key)
                .cloned()
                .ok_or_else(|| CoreError::NoSuchUser(to.to_owned()))?;
            let message = NewMessage {
                sender: REMOTE_SENDER,
                sender_name: self.shown_name(from, from_node),
                recipient: Some((account.id, account.name)),
                room: None,
                body: body.to_owned(),
                // Scoped by the sender, as a local client_msg_id is.
                client_msg_id: client_msg_id
                    .filter(|id| !id.is_empty())
                    .map(|id| format!("{from}@{from_node}/{id}")),
                sent_at_ms: if sent_ms > 0 { sent_ms } else { now_ms() },
            };
            let core = self.clone();
            let recipient = account.id;
            Ok(self.inner.store.append(
                message,
                Box::new(move |appended| {
                    if !appended.duplicate {
                        core.inner.hub.fan_out(
                            &Delivery::new(appended.message.clone()),
                            [&recipient],
                            None,
                        );
                    }
                }),
            ))
        })();
        async move {
            let appended = queued?.await?;
            Ok(Sent {
                id: appended.message.id,
                sent_at_ms: appended.message.sent_at_ms,
                duplicate: appended.duplicate,
            })
        }
    }

    fn operator(&self, who: &Identity) -> Result<&Arc<dyn Remote>, CoreError> {
        if !self.is_operator(who) {
            return Err(CoreError::NotOperator);
        }
        self.remote()
            .ok_or_else(|| CoreError::Unreachable("this node has no mesh".into()))
    }

    /// Operators: accept peer links on `host:port`.
    pub async fn peer_listen(
        &self,
        who: &Identity,
        host: &str,
        port: u16,
    ) -> Result<String, CoreError> {
        self.operator(who)?.listen(join_host_port(host, port)).await
    }

    /// Operators: link to the node at `host:port`.
    pub async fn peer_connect(
        &self,
        who: &Identity,
        host: &str,
        port: u16,
    ) -> Result<String, CoreError> {
        self.operator(who)?
            .connect(join_host_port(host, port))
            .await
    }

    /// Operators: drop the link to a node.
    pub fn peer_kill(&self, who: &Identity, node: &str) -> Result<(), CoreError> {
        self.operator(who)?.kill(node)
    }

    /// Operators: this node's direct links.
    pub fn peers(&self, who: &Identity) -> Result<Vec<PeerLink>, CoreError> {
        Ok(self.operator(who)?.peers())
    }

    /// Operators: the whole mesh as this node sees it.
    pub fn topology(&self, who: &Identity) -> Result<Topology, CoreError> {
        Ok(self.operator(who)?.topology())
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
