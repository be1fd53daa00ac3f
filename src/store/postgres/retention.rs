//! Retention on PostgreSQL: the same rule and the same batches as SQLite's
//! (`store/sqlite/retention.rs`), each statement a short transaction of its
//! own beside the writer's, which MVCC lets go on meanwhile.

use super::PostgresStore;
use crate::store::{Retention, StoreError};

impl PostgresStore {
    pub(super) async fn prune_batch(&self, rule: Retention, limit: u32) -> Result<u64, StoreError> {
        let limit = i64::from(limit);
        let mut gone = 0;
        if let Some(before) = rule.before_ms {
            let edge = self.first_id_from(before).await?;
            gone += self
                .change(
                    "DELETE FROM messages WHERE id IN (
                       SELECT id FROM messages m WHERE id < $1
                         AND NOT EXISTS (SELECT 1 FROM inbox i
                                          WHERE i.account_id = m.recipient_id AND i.message_id = m.id)
                       ORDER BY id LIMIT $2)",
                    &[&edge, &limit],
                )
                .await?;
        }
        if let Some(keep) = rule.keep_per_room {
            let keep = i64::from(keep);
            let rooms = self.rows("SELECT id FROM rooms", &[]).await?;
            for room in rooms.iter().map(|r| r.get::<_, i64>(0)) {
                let left = limit - gone as i64;
                if left <= 0 {
                    break;
                }
                let edge = self
                    .rows(
                        "SELECT id FROM messages WHERE room_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2",
                        &[&room, &keep],
                    )
                    .await?;
                if let Some(edge) = edge.first().map(|r| r.get::<_, i64>(0)) {
                    gone += self
                        .change(
                            "DELETE FROM messages WHERE id IN (
                               SELECT id FROM messages WHERE room_id = $1 AND id <= $2
                               ORDER BY id LIMIT $3)",
                            &[&room, &edge, &left],
                        )
                        .await?;
                }
            }
        }
        Ok(gone)
    }

    /// The id of the first message stored at or after `ms`, by bisecting
    /// the ids, as SQLite's retention does.
    async fn first_id_from(&self, ms: i64) -> Result<i64, StoreError> {
        let bounds = self
            .rows(
                "SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) + 1 FROM messages",
                &[],
            )
            .await?;
        let (mut lo, mut hi): (i64, i64) = bounds.first().map_or((0, 0), |r| (r.get(0), r.get(1)));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let next = self
                .rows(
                    "SELECT id, sent_ms FROM messages WHERE id >= $1 ORDER BY id LIMIT 1",
                    &[&mid],
                )
                .await?;
            match next
                .first()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
            {
                Some((id, sent)) if sent < ms => lo = id + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }
}
