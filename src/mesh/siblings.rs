//! What nodes on one shared store tell each other. A commit made on one
//! node is the others' to show too: a direct message for the recipient's
//! sessions there, a room membership, a deleted account, a session that
//! ended or was removed. The committing node routes each to every reachable
//! sibling after the commit; a sibling takes it in here, and only from a
//! node that really shares its store.

use super::frame::RoutedBody;
use super::{Mesh, lock};
use crate::core::{Message, Target};
use crate::model::{AccountId, RoomId, SessionId};

impl Mesh {
    /// Hands a direct message committed to the shared store to every
    /// reachable sibling, for the recipient's sessions there.
    pub(super) fn deliver_to_siblings(&self, message: &Message, recipient: AccountId) {
        let Target::User(to) = &message.to else {
            return;
        };
        self.to_each_sibling(|| RoutedBody::Deliver {
            id: message.id,
            from: message.from.clone(),
            to: to.clone(),
            account: recipient.0,
            body: message.body.clone(),
            sent_ms: message.sent_at_ms,
        });
    }

    /// Routes what `body` makes to every reachable sibling. Cheap when this
    /// node has no peers, since it runs on the commit path.
    pub(super) fn to_each_sibling(&self, body: impl Fn() -> RoutedBody) {
        if lock(&self.inner.peers).is_empty() {
            return;
        }
        let siblings = self.state().siblings();
        for node in siblings {
            self.route_to(&node, body());
        }
    }

    /// Takes in what a sibling committed. Anything else that reaches here
    /// was answered by [`Mesh::arrived`].
    pub(super) fn sibling_committed(&self, src: &str, body: RoutedBody) {
        if !self.state().is_sibling(src) {
            tracing::debug!(src, "a node on another store sent what only siblings send");
            return;
        }
        let core = &self.inner.core;
        match body {
            RoutedBody::Deliver {
                id,
                from,
                to,
                account,
                body,
                sent_ms,
            } => {
                let message = Message {
                    id,
                    from,
                    to: Target::User(to),
                    body,
                    sent_at_ms: sent_ms,
                    client_msg_id: None,
                };
                core.deliver_stored_direct(message, AccountId(account));
            }
            RoutedBody::Member {
                room_id,
                room,
                account,
                joined,
            } => {
                if crate::core::names::room_key(&room).is_ok() {
                    core.sibling_membership(RoomId(room_id), room, AccountId(account), joined);
                }
            }
            RoutedBody::Deleted { account } => core.sibling_deleted(AccountId(account)),
            RoutedBody::Ended { session } => core.session_ended_elsewhere(SessionId(session)),
            RoutedBody::Removed { account, notice } => {
                core.sessions_removed_elsewhere(AccountId(account), &notice);
            }
            RoutedBody::Direct { .. }
            | RoutedBody::DirectAck { .. }
            | RoutedBody::Moderate { .. }
            | RoutedBody::Moderated { .. }
            | RoutedBody::Query { .. }
            | RoutedBody::Answer { .. } => {}
        }
    }
}
