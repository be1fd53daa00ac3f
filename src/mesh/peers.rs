//! This node's links together: listening for peers, dialling them and
//! keeping them dialled, dropping them, the table of live peers, and
//! queueing frames for one of them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::frame::{self, PeerMessage};
use super::{Mesh, MeshError, link, lock, valid_node_name};
use crate::accept::accept_loop;
use crate::core::PeerLink;

/// How long `/peer-connect` waits for its first attempt: a TCP connect and
/// a handshake, each bounded by 5 s.
const FIRST_ATTEMPT: Duration = Duration::from_secs(11);
/// Connections that may be in their handshake at once; more are dropped.
const MAX_HANDSHAKES: usize = 64;
/// A standing wish to be linked to an address, kept by `/peer-connect` and
/// `--peer` and retried with backoff until `/peer-kill`.
pub(super) struct Dialer {
    pub id: u64,
    pub address: String,
    /// The node last reached at this address.
    pub node: Arc<Mutex<Option<String>>>,
    pub task: JoinHandle<()>,
}

impl Mesh {
    /// Accepts peer links on `addr`. Returns the address bound.
    pub async fn listen(&self, addr: &str) -> Result<SocketAddr, MeshError> {
        if self.inner.secret.is_none() {
            return Err(MeshError::NoSecret);
        }
        let listen_error = |source| MeshError::Listen {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        let mut stop = self.inner.shutdown.subscribe();
        let stop = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let mesh = self.clone();
        let task = tokio::spawn(accept_loop(listener, stop, move |stream, from| {
            mesh.accepted(stream, from, &handshakes)
        }));
        tracing::info!(address = %local, "listening for peers");
        lock(&self.inner.listeners).push((local, task));
        Ok(local)
    }

    /// Serves a connection a peer opened, on a task of its own.
    fn accepted(&self, stream: TcpStream, from: SocketAddr, handshakes: &Arc<Semaphore>) {
        // Strangers get a bounded share of the node until they prove the
        // secret.
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(peer = %from, "too many peer handshakes at once: dropped {from}");
            return;
        };
        let mesh = self.clone();
        tokio::spawn(async move {
            if let Err(e) = link::run(mesh, stream, from.to_string(), false, permit).await {
                tracing::warn!(peer = %from, "mesh link from {from} ended: {e}");
            }
        });
    }

    /// Links to the node at `addr` and keeps the link up, retrying with
    /// backoff when it drops. With `persist`, a failed first attempt is
    /// retried too (a `--peer` given at start may not be up yet);
    /// otherwise its error is returned and nothing more is tried.
    pub async fn connect(&self, addr: &str, persist: bool) -> Result<String, MeshError> {
        if self.inner.secret.is_none() {
            return Err(MeshError::NoSecret);
        }
        let (first_tx, first_rx) = oneshot::channel();
        let node = Arc::new(Mutex::new(None));
        let id = self.next_id();
        let task = tokio::spawn(link::dial(
            self.clone(),
            id,
            addr.to_owned(),
            node.clone(),
            first_tx,
            persist,
        ));
        lock(&self.inner.dialers).push(Dialer {
            id,
            address: addr.to_owned(),
            node,
            task,
        });
        let outcome = match tokio::time::timeout(FIRST_ATTEMPT, first_rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err("the link attempt was abandoned".to_owned()),
            Err(_) => Err(format!("no link within {FIRST_ATTEMPT:?}")),
        };
        match outcome {
            Ok(node) => {
                lock(&self.inner.killed).remove(&node);
                Ok(node)
            }
            Err(why) => {
                if !persist {
                    self.stop_dialer(|d| d.id == id);
                }
                Err(MeshError::Link {
                    addr: addr.to_owned(),
                    why,
                })
            }
        }
    }

    /// Stops the diallers that match; returns whether there were any.
    pub(super) fn stop_dialer(&self, matches: impl Fn(&Dialer) -> bool) -> bool {
        let mut dialers = lock(&self.inner.dialers);
        let before = dialers.len();
        dialers.retain(|d| {
            let stop = matches(d);
            if stop {
                d.task.abort();
            }
            !stop
        });
        dialers.len() != before
    }

    /// Drops the link to `node` (a node name, or the address of a dialler
    /// that has not reached its node yet), stops redialling it, and refuses
    /// its links until an operator links to it again.
    pub fn kill(&self, node: &str) -> Result<(), MeshError> {
        // A dialler that never reached its node is known by its address.
        let stopped = self.stop_dialer(|d| {
            d.address == node || lock(&d.node).as_deref().is_some_and(|n| n == node)
        });
        let cut = lock(&self.inner.peers).get(node).map(|p| p.cut.clone());
        if let Some(cut) = &cut {
            cut.notify_one();
        }
        if cut.is_none() && !stopped {
            return Err(MeshError::NoSuchPeer(node.to_owned()));
        }
        // An address is not a node: there is nothing to refuse by it.
        if valid_node_name(node) {
            lock(&self.inner.killed).insert(node.to_owned());
        }
        tracing::info!(peer = node, "operator dropped the link to {node}");
        Ok(())
    }

    /// The direct links of this node, sorted by node.
    pub fn peers(&self) -> Vec<PeerLink> {
        let mut peers: Vec<PeerLink> = lock(&self.inner.peers)
            .iter()
            .map(|(node, p)| PeerLink {
                node: node.clone(),
                address: p.address.clone(),
                outbound: p.outbound,
            })
            .collect();
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        peers
    }

    /// Closes listeners and links, and stops redialling.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        for (_, task) in lock(&self.inner.listeners).drain(..) {
            task.abort();
        }
        self.stop_dialer(|_| true);
        for peer in lock(&self.inner.peers).values() {
            peer.cut.notify_one();
        }
    }

    /// Sends `message` to one linked peer.
    pub(super) fn send_to(&self, peer: &str, message: &PeerMessage) -> bool {
        let Some(bytes) = frame::to_bytes(message) else {
            return false;
        };
        match lock(&self.inner.peers).get(peer) {
            Some(p) => p.offer(peer, &bytes),
            None => false,
        }
    }
}
