//! What the core hands back for a send, and a committed message on its
//! way to live sessions.

use std::sync::Arc;

use crate::model::Message;
use crate::store::CommitHook;

/// The answer to a send: the stored id, once the message is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub id: u64,
    pub sent_at_ms: i64,
    /// The send repeated an earlier `client_msg_id`; nothing new was stored.
    pub duplicate: bool,
}

/// The protocols a delivery is encoded for. Each has one slot in a
/// [`Delivery`], so a message fanned out to a thousand line connections is
/// turned into its line once, not a thousand times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Line = 0,
    Wire = 1,
}

const ENCODINGS: usize = 2;

/// A committed message on its way to live sessions: shared by every
/// receiver, carrying each protocol's encoding once the first receiver on
/// that protocol has made it.
#[derive(Debug, Clone)]
pub struct Delivery(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    message: Message,
    encoded: [std::sync::OnceLock<Box<[u8]>>; ENCODINGS],
}

impl Delivery {
    pub fn new(message: Message) -> Delivery {
        Delivery(Arc::new(Shared {
            message,
            encoded: Default::default(),
        }))
    }

    /// The message in `encoding`'s form, made by `encode` on first use.
    pub fn encoded(&self, encoding: Encoding, encode: impl FnOnce(&Message) -> Vec<u8>) -> &[u8] {
        self.0.encoded[encoding as usize].get_or_init(|| encode(&self.0.message).into_boxed_slice())
    }
}

impl std::ops::Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.0.message
    }
}

/// The commit hook of a send: the stored message becomes its [`Delivery`]
/// on the store's writer, and `then` gets it, with whether it repeated an
/// earlier message, once the commit stands.
pub(super) fn on_commit(
    then: impl FnOnce(&Delivery, bool) + Send + 'static,
) -> Box<dyn CommitHook> {
    crate::store::commit_hook(
        |appended| (Delivery::new(appended.message), appended.duplicate),
        move |(delivery, duplicate)| then(&delivery, duplicate),
    )
}
