//! What goes to every node: this node's records (its links, accounts and
//! presence) and room speech. Each node passes what it has not seen before
//! to every peer but the one it came from, so loops in the graph are
//! harmless: records are kept by version, speech by (origin, instance, seq).

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;

use super::frame::{Facts, NodeState, PeerMessage, Speech, StoredSpeech, to_bytes};
use super::state::Offer;
use super::{Mesh, lock};
use crate::core::{Message, Target};
use crate::model::RoomId;

/// How long a burst of local changes gathers before it is published.
const CHANGE_BURST: Duration = Duration::from_millis(20);

/// Accounts and presence as last published.
type Published = (Vec<(String, i64)>, Vec<String>);

impl Mesh {
    fn next_version(&self) -> u64 {
        self.inner.version.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Publishes this node's current links to every node.
    pub(super) fn publish_links(&self) {
        // Reading the links and numbering the record happen as one step, or
        // two link changes at once could publish the older list last.
        let _publishing = lock(&self.inner.publishing);
        let mut peers: Vec<String> = lock(&self.inner.peers).keys().cloned().collect();
        peers.sort();
        let store = self.inner.store.clone();
        self.publish(Facts::Links { peers, store });
    }

    /// Publishes a record about this node to every node.
    pub(super) fn publish(&self, facts: Facts) {
        let record = NodeState {
            node: self.inner.me.clone(),
            instance: self.inner.instance,
            version: self.next_version(),
            facts,
        };
        self.state().publish(record.clone());
        self.flood(&PeerMessage::State(record), None);
    }

    /// Publishes accounts and presence if they differ from `last`.
    fn publish_local(&self, last: &mut Published) {
        let accounts = self.inner.core.local_accounts();
        if accounts != last.0 {
            last.0 = accounts.clone();
            self.publish(Facts::Accounts { accounts });
        }
        let online = self.inner.core.local_online();
        if online != last.1 {
            last.1 = online.clone();
            self.publish(Facts::Presence { online });
        }
    }

    /// Tells the mesh about account and presence changes, a burst at a time.
    pub(super) async fn publish_changes(self, mut last: Published) {
        let mut stop = self.inner.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = self.inner.core.local_changed() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            // A login storm becomes one record, not thousands.
            tokio::time::sleep(CHANGE_BURST).await;
            self.publish_local(&mut last);
        }
    }

    /// Sends `message` to every peer but `except`.
    pub(super) fn flood(&self, message: &PeerMessage, except: Option<&str>) {
        let Some(bytes) = to_bytes(message) else {
            return;
        };
        let peers = lock(&self.inner.peers);
        for (node, peer) in peers.iter() {
            if Some(node.as_str()) != except {
                peer.offer(node, &bytes);
            }
        }
    }

    /// Floods room speech committed here, stamped with this node's next
    /// sequence number.
    pub(super) fn flood_speech(&self, message: &Message, room_id: RoomId) {
        let Target::Room(room) = &message.to else {
            return;
        };
        // This runs on the commit path of every room message: a node with
        // no peers does no mesh work at all.
        if lock(&self.inner.peers).is_empty() {
            return;
        }
        let speech = Speech {
            origin: self.inner.me.clone(),
            instance: self.inner.instance,
            seq: self.inner.speech_seq.fetch_add(1, Ordering::Relaxed) + 1,
            room: room.clone(),
            // Peers get the account's name: each shows it as its own view
            // of the claims on that name says.
            from: message
                .from
                .split_once('@')
                .map_or(message.from.as_str(), |(name, _)| name)
                .to_owned(),
            body: message.body.clone(),
            sent_ms: message.sent_at_ms,
            stored: self.inner.store.as_ref().map(|store| StoredSpeech {
                store: store.clone(),
                id: message.id,
                room_id: room_id.0,
                shown: message.from.clone(),
            }),
        };
        self.flood(&PeerMessage::Speech(speech), None);
    }

    /// Has the core catch its directory up with a sibling's account list.
    /// One catch-up runs at a time, with the newest list waiting behind it,
    /// so however fast records come, a node reads the store for one list
    /// at a time and none piles up.
    fn sync_accounts(&self, names: Vec<String>) {
        *lock(&self.inner.accounts_waiting) = Some(names);
        if self.inner.accounts_syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        let mesh = self.clone();
        tokio::spawn(async move {
            loop {
                let next = lock(&mesh.inner.accounts_waiting).take();
                match next {
                    Some(names) => mesh.inner.core.clone().sibling_accounts(names).await,
                    None => {
                        mesh.inner.accounts_syncing.store(false, Ordering::SeqCst);
                        // A list that came between the take and the store
                        // would wait for the next one: take it now.
                        let again = lock(&mesh.inner.accounts_waiting).is_some();
                        if !again || mesh.inner.accounts_syncing.swap(true, Ordering::SeqCst) {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Takes a record from `peer` if it is news, and passes it on.
    pub(super) fn received_record(&self, peer: &str, record: NodeState) {
        let (offer, sibling) = {
            let mut state = self.state();
            let offer = state.offer(record.clone());
            (offer, state.is_sibling(&record.node))
        };
        match offer {
            Offer::Accepted => {
                // A sibling's accounts are in the store this node reads:
                // the directory catches up with the ones it lists or dropped.
                if let (true, Facts::Accounts { accounts }) = (sibling, &record.facts) {
                    let names = accounts.iter().map(|(name, _)| name.clone()).collect();
                    self.sync_accounts(names);
                }
                self.flood(&PeerMessage::State(record), Some(peer))
            }
            Offer::Forged => {
                tracing::debug!(peer, "dropped a record about this node from {peer}")
            }
            Offer::Full => tracing::warn!(peer, "too many nodes: dropped a record"),
            Offer::Stale => {}
        }
    }

    /// Passes speech from `peer` on if it is news; returns the storing and
    /// delivering of it here, for the link to run under its bound.
    pub(super) fn received_speech(
        &self,
        peer: &str,
        speech: Speech,
    ) -> Option<BoxFuture<'static, ()>> {
        if !self.state().first_sight(&speech) {
            return None;
        }
        // Only a sibling's word that the speech is in this store counts.
        if let Some(stored) = speech.stored.as_ref().filter(|s| {
            Some(&s.store) == self.inner.store.as_ref() && self.state().is_sibling(&speech.origin)
        }) {
            self.inner.core.deliver_stored_speech(
                stored.id,
                &stored.shown,
                &speech.room,
                RoomId(stored.room_id),
                &speech.body,
                speech.sent_ms,
            );
            self.flood(&PeerMessage::Speech(speech), Some(peer));
            return None;
        }
        let stored = self.inner.core.deliver_remote_speech(
            format!("{}/{}/{}", speech.origin, speech.instance, speech.seq),
            &speech.room,
            &speech.from,
            &speech.origin,
            &speech.body,
            speech.sent_ms,
        );
        self.flood(&PeerMessage::Speech(speech), Some(peer));
        Some(Box::pin(stored))
    }
}
