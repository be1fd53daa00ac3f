//! What arrives: deliveries printed as they come, each acknowledged once
//! shown, and shown once even when the server delivers it again.
//!
//! Delivery is at least once: an acknowledgement still on its way when a
//! node dies is lost with it, and the next node replays that message. The
//! ids are the store's, the same on every node of a shared store, so the
//! client recognises the repeat and only acknowledges it again.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::time::Duration;

use tonic::Code;

use super::{Servers, is_unreachable, render_event};
use crate::client::{Client, ClientError};

/// How many of the latest shown ids are remembered: far more than can be
/// in flight unacknowledged when a node dies.
pub const REMEMBERED: usize = 4096;

/// The ids of the latest messages shown.
#[derive(Debug, Default)]
pub struct ShownIds {
    ids: HashSet<u64>,
    order: VecDeque<u64>,
}

impl ShownIds {
    /// Records `id` as shown; false if it was shown already.
    pub fn first_showing(&mut self, id: u64) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

/// First wait before subscribing again after the connection dropped;
/// it doubles up to [`MOST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MOST_BACKOFF: Duration = Duration::from_secs(8);

/// Prints deliveries as they come and acknowledges each once shown. When
/// the stream drops it says so once, subscribes again with backoff (at the
/// next server when the one in use is gone), and says so once it is back;
/// the server then replays what was not acknowledged. Returns when the
/// session is over: with the operator's notice when one ended it (a kick
/// or a suspension), for the client to end with.
pub async fn show_incoming(
    mut client: Client,
    servers: Servers,
    mut out: impl Write,
) -> Option<String> {
    let mut shown = ShownIds::default();
    let mut down = false;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match client.subscribe().await {
            Ok(mut stream) => {
                if down {
                    let _ = writeln!(out, "* reconnected to {}", servers.current());
                    down = false;
                }
                backoff = FIRST_BACKOFF;
                match show_stream(&mut stream, &client, &mut shown, &mut out).await {
                    Ended::LoggedOut => return None,
                    Ended::Removed(notice) => return Some(notice),
                    Ended::Dropped => {}
                }
            }
            Err(e) if is_unreachable(&e) => {
                let gone = servers.current().to_owned();
                if let Ok(moved) = servers.fail_over(&client, &gone).await {
                    client = moved;
                    continue;
                }
            }
            Err(ClientError::Rpc(status)) if status.code() == Code::Unauthenticated => {
                let _ = writeln!(out, "* {}", status.message());
                return None;
            }
            Err(_) => {}
        }
        if !down {
            let _ = writeln!(
                out,
                "* connection to {} lost; reconnecting",
                servers.current()
            );
            down = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MOST_BACKOFF);
    }
}

/// How a stream of deliveries ended.
enum Ended {
    /// The session is over: nothing to subscribe again for.
    LoggedOut,
    /// An operator ended it, with this notice.
    Removed(String),
    Dropped,
}

/// Shows one stream's deliveries until it ends.
async fn show_stream(
    stream: &mut tonic::Streaming<crate::proto::Event>,
    client: &Client,
    shown: &mut ShownIds,
    out: &mut impl Write,
) -> Ended {
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                let Some((line, id)) = render_event(&event) else {
                    continue;
                };
                if id.is_none_or(|id| shown.first_showing(id)) {
                    let _ = writeln!(out, "{line}");
                }
                if let Some(id) = id {
                    let _ = client.ack(vec![id]).await;
                }
            }
            Ok(None) => return Ended::Dropped,
            Err(status) if status.code() == Code::Unauthenticated => {
                let _ = writeln!(out, "* {}", status.message());
                return Ended::LoggedOut;
            }
            Err(status) if status.code() == Code::PermissionDenied => {
                return Ended::Removed(status.message().to_owned());
            }
            Err(_) => return Ended::Dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Within the last [`REMEMBERED`] distinct ids, each is shown once.
        #[test]
        fn a_repeat_of_a_recent_id_is_not_shown(ids in prop::collection::vec(0u64..500, 0..2000)) {
            let mut shown = ShownIds::default();
            let mut seen = HashSet::new();
            for id in ids {
                prop_assert_eq!(shown.first_showing(id), seen.insert(id));
            }
        }
    }

    #[test]
    fn memory_is_bounded() {
        let mut shown = ShownIds::default();
        for id in 0..(REMEMBERED as u64 * 3) {
            assert!(shown.first_showing(id));
        }
        assert_eq!(shown.ids.len(), REMEMBERED);
        assert!(shown.first_showing(0), "the oldest is forgotten");
    }
}
