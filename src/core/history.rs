//! History read a page at a time, as its reader takes it.
//!
//! A reply of a thousand 4 KiB messages is 4 MiB. Read whole before the
//! client has taken any of it, every unread request would hold that much:
//! a client opening hundreds of history streams and never reading them held
//! gigabytes. Read in pages as the reply is consumed, a stream whose client
//! does not read holds one page at most, and the store is not asked for the
//! next until the client has taken the last.

use futures::{Stream, TryStreamExt};

use super::chat::history_limit;
use super::{Core, CoreError, Identity, Message, Target};

/// Messages read from the store at a time for a history stream.
pub const HISTORY_PAGE: u32 = 16;
/// The most message text a history reply written in one piece (a line
/// protocol `/history`, a binary HISTORY reply) carries: the reply waits in
/// memory until the client reads it, so it is kept small, and a client
/// pages on with the cursor for more.
pub const HISTORY_REPLY_BYTES: usize = 256 * 1024;

impl Core {
    /// Like [`Core::history`], but no more messages than fit in
    /// [`HISTORY_REPLY_BYTES`] of text: the oldest of those asked for, or
    /// with `newest` the newest. At least one is kept, whatever its size.
    pub async fn history_reply(
        &self,
        who: &Identity,
        of: &Target,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<Message>, CoreError> {
        let mut messages = self.history(who, of, after, limit, newest).await?;
        let size = |m: &Message| m.body.len() + m.from.len() + 64;
        let mut total = 0;
        let mut fits = |m: &Message| {
            total += size(m);
            total <= HISTORY_REPLY_BYTES
        };
        let keep = if newest {
            messages.iter().rev().take_while(|m| fits(m)).count()
        } else {
            messages.iter().take_while(|m| fits(m)).count()
        }
        .max(1)
        .min(messages.len());
        if newest {
            messages.drain(..messages.len() - keep);
        } else {
            messages.truncate(keep);
        }
        Ok(messages)
    }

    /// Like [`Core::history`], but as a stream that reads the store one page
    /// at a time, only as fast as it is consumed.
    pub async fn history_stream(
        &self,
        who: &Identity,
        of: &Target,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<impl Stream<Item = Result<Message, CoreError>> + Send + 'static, CoreError> {
        let conversation = self.conversation(who, of)?;
        let limit = history_limit(limit);
        let store = self.inner.store.clone();
        // The newest `limit` are the ones after the one just older than them.
        let after = match newest {
            true => store
                .nth_newest(conversation, after, limit)
                .await?
                .map_or(after, |id| id - 1),
            false => after,
        };
        let pages = futures::stream::try_unfold((after, limit), move |(after, left)| {
            let store = store.clone();
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let page = store
                    .history(conversation, after, left.min(HISTORY_PAGE), false)
                    .await?;
                let Some(last) = page.last().map(|m| m.id) else {
                    return Ok(None);
                };
                let left = left.saturating_sub(page.len() as u32);
                Ok::<_, CoreError>(Some((page, (last, left))))
            }
        });
        Ok(pages
            .map_ok(|page| futures::stream::iter(page.into_iter().map(Ok)))
            .try_flatten())
    }
}
