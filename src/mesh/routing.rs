//! What goes to one node: routed messages travel hop by hop along the
//! shortest paths of the graph every node holds, each hop counting down
//! `hops` so that no message circles for ever.

use futures::future::BoxFuture;

use super::Mesh;
use super::frame::{self, PeerMessage, Routed, RoutedBody};
use crate::core::Topology;

impl Mesh {
    /// Every node known and every link both of whose ends report it.
    pub fn topology(&self) -> Topology {
        let state = self.state();
        Topology {
            nodes: state.nodes(),
            links: state.links(),
        }
    }

    /// Sends a routed message to its first hop towards its destination;
    /// false if there is no route.
    pub(super) fn route(&self, routed: Routed) -> bool {
        let hop = self.state().next_hop(&routed.dst).map(str::to_owned);
        match hop {
            Some(hop) => self.send_to(&hop, &PeerMessage::Routed(routed)),
            None => false,
        }
    }

    /// Routes `body` from this node to `dst`; dropped, and logged, if
    /// there is no route.
    pub(super) fn route_to(&self, dst: &str, body: RoutedBody) {
        let routed = Routed {
            src: self.inner.me.clone(),
            dst: dst.to_owned(),
            hops: frame::MAX_HOPS,
            body,
        };
        if !self.route(routed) {
            tracing::debug!(node = dst, "no route to {dst}: message dropped");
        }
    }

    /// Handles a routed message from `peer`: this node's own is taken in
    /// (returning what is left to do), another node's passed on.
    pub(super) fn received_routed(
        &self,
        peer: &str,
        mut routed: Routed,
    ) -> Option<BoxFuture<'static, ()>> {
        if routed.dst == self.inner.me {
            return self.arrived(routed.src, routed.body);
        }
        if routed.hops > 1 {
            routed.hops -= 1;
            if !self.route(routed) {
                tracing::debug!(peer, "no route onward for a routed message: dropped");
            }
        }
        None
    }
}
