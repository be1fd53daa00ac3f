//! What the mesh asks of the core: storing and delivering what other nodes
//! send, the local facts it publishes to them, and the operators' peer
//! commands.
//!
//! The core knows nothing of sockets or peer frames: it talks to the mesh
//! through [`Remote`](super::Remote), and the mesh calls back into the core
//! through the methods here. A core with no `Remote` attached (the server
//! always attaches its mesh) behaves as a node with no peers.

use std::future::Future;
use std::sync::Arc;

use super::chat::MAX_CLIENT_MSG_ID;
use super::message::on_commit;
use super::{Core, CoreError, Identity, PeerLink, Remote, Sent, Topology, names, now_ms};
use crate::model::AccountId;
use crate::store::NewMessage;

/// The account id stored as the sender of messages from other nodes: no
/// local account has it, and it keeps their `client_msg_id`s apart from
/// local ones.
const REMOTE_SENDER: AccountId = AccountId(0);

impl Core {
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
            && names::account_key(from).is_ok()
            && key.len() <= 2 * MAX_CLIENT_MSG_ID;
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
                on_commit(move |delivery, duplicate| {
                    // On a shared store a sibling may have stored it first;
                    // this node's members still get it, from this node.
                    if !duplicate {
                        crate::metrics::messages_stored(1);
                    } else if core.inner.shared.is_none() {
                        return;
                    }
                    core.fan_out_room(delivery, room_id, None);
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
            self.check_send(body, client_msg_id)?;
            // A peer is trusted with the secret, not with well-formed input.
            names::account_key(from)
                .map_err(|_| CoreError::invalid("from", "it is not a valid account name"))?;
            let key = names::account_key(to).map_err(|_| CoreError::NoSuchUser(to.to_owned()))?;
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
                on_commit(move |delivery, duplicate| {
                    if !duplicate {
                        crate::metrics::messages_stored(1);
                        core.inner.hub.fan_out(delivery, [&recipient], None);
                        if let Some(siblings) = core.siblings() {
                            siblings.to_siblings(delivery, recipient);
                        }
                    }
                }),
            ))
        })();
        async move {
            let appended = queued?.await?;
            Ok(Sent {
                id: appended.id,
                sent_at_ms: appended.sent_at_ms,
                duplicate: appended.duplicate,
            })
        }
    }

    /// Refuses anyone but an operator: the one check every door's operator
    /// commands go through.
    pub fn require_operator(&self, who: &Identity) -> Result<(), CoreError> {
        if self.is_operator(who) {
            Ok(())
        } else {
            Err(CoreError::NotOperator)
        }
    }

    /// The mesh, for an operator's peer command.
    fn operator(&self, who: &Identity) -> Result<&Arc<dyn Remote>, CoreError> {
        self.require_operator(who)?;
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
