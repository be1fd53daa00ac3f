//! Reads, and the writes that need no commit hook, each on a pooled
//! connection: accounts, sessions, rooms, what waits for an account,
//! acknowledgements, history and counts. The SQL mirrors SQLite's.

use std::collections::{BTreeMap, HashSet};

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{ATTEMPTS, PostgresStore, backend, is_transient, pool_error};
use crate::model::{AccountId, Message, RoomId, SessionId, now_ms};
use crate::store::{
    AccountAcks, AccountRecord, AccountSummary, Conversation, Counts, RoomRecord, SessionRecord,
    StoreError, Suspension, message_target,
};

/// An account's columns with its suspension, if any.
const ACCOUNT: &str = "SELECT a.id, a.name, a.password_hash, a.created_ms,
        s.by_name, s.reason, s.since_ms
    FROM accounts a LEFT JOIN suspensions s ON s.account_id = a.id";

const MESSAGE_COLUMNS: &str =
    "id, sender_name, recipient_name, room_name, body, sent_ms, client_msg_id";

pub(super) fn row_to_message(row: &Row) -> Message {
    Message {
        id: row.get::<_, i64>(0) as u64,
        from: row.get(1),
        to: message_target(row.get(2), row.get(3)),
        body: row.get(4),
        sent_at_ms: row.get(5),
        client_msg_id: row.get(6),
    }
}

impl PostgresStore {
    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `sql` with `params` and returns its rows.
    pub(super) async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(backend)?;
        client.query(&statement, params).await.map_err(backend)
    }

    /// Runs `sql` with `params` and returns how many rows it changed,
    /// again while the database asks for a retry.
    pub(super) async fn change(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(backend)?;
        let mut attempt = 1;
        loop {
            match client.execute(&statement, params).await {
                Ok(n) => return Ok(n),
                Err(e) if is_transient(&e) && attempt < ATTEMPTS => attempt += 1,
                Err(e) => return Err(backend(e)),
            }
        }
    }

    pub(super) async fn account_by_key(
        &self,
        key: &str,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let rows = self
            .rows(&format!("{ACCOUNT} WHERE a.name_key = $1"), &[&key])
            .await?;
        Ok(rows.first().map(account_record))
    }

    pub(super) async fn account_by_id(
        &self,
        id: AccountId,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let rows = self
            .rows(&format!("{ACCOUNT} WHERE a.id = $1"), &[&id.0])
            .await?;
        Ok(rows.first().map(account_record))
    }

    pub(super) async fn all_accounts(&self) -> Result<Vec<AccountSummary>, StoreError> {
        let rows = self
            .rows(
                "SELECT id, name, created_ms FROM accounts ORDER BY name_key",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AccountSummary {
                id: AccountId(r.get(0)),
                name: r.get(1),
                created_ms: r.get(2),
            })
            .collect())
    }

    pub(super) async fn all_operators(&self) -> Result<Vec<AccountId>, StoreError> {
        let rows = self
            .rows("SELECT account_id FROM operators ORDER BY account_id", &[])
            .await?;
        Ok(rows.iter().map(|r| AccountId(r.get(0))).collect())
    }

    /// Opens a session and ends the account's oldest beyond `keep`, in one
    /// transaction. The account row is share-locked first, and
    /// [`suspend`](Self::suspend_account) locks it for update: the one
    /// waits for the other, so the check for a suspension, made in a
    /// statement after the lock, sees any suspension committed before it,
    /// and a suspension committed after it ends this session too.
    pub(super) async fn open_session(
        &self,
        token_hash: &[u8; 32],
        account: AccountId,
        keep: usize,
    ) -> Result<(SessionId, Vec<SessionId>), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute(
            "SELECT 1 FROM accounts WHERE id = $1 FOR SHARE",
            &[&account.0],
        )
        .await
        .map_err(backend)?;
        let suspended = tx
            .query_opt(
                "SELECT 1 FROM suspensions WHERE account_id = $1",
                &[&account.0],
            )
            .await
            .map_err(backend)?;
        if suspended.is_some() {
            return Err(StoreError::Suspended);
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO sessions (token_hash, account_id, created_ms)
                 VALUES ($1, $2, $3) RETURNING id",
                &[&&token_hash[..], &account.0, &now_ms()],
            )
            .await
            .map_err(backend)?
            .get(0);
        let evicted = tx
            .query(
                "DELETE FROM sessions WHERE account_id = $1 AND id NOT IN (
                     SELECT id FROM sessions WHERE account_id = $1 ORDER BY id DESC LIMIT $2)
                 RETURNING id",
                &[&account.0, &(keep as i64)],
            )
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let mut evicted: Vec<SessionId> = evicted.iter().map(|r| SessionId(r.get(0))).collect();
        evicted.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        Ok((SessionId(id), evicted))
    }

    /// Records the suspension and ends the account's sessions, in one
    /// transaction under the account row's lock (see
    /// [`open_session`](Self::open_session)).
    pub(super) async fn suspend_account(
        &self,
        account: AccountId,
        s: &Suspension,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute(
            "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE",
            &[&account.0],
        )
        .await
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO suspensions (account_id, by_name, reason, since_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (account_id) DO UPDATE
                 SET by_name = EXCLUDED.by_name, reason = EXCLUDED.reason,
                     since_ms = EXCLUDED.since_ms",
            &[&account.0, &s.by, &s.reason, &s.since_ms],
        )
        .await
        .map_err(backend)?;
        let ended = tx
            .query(
                "DELETE FROM sessions WHERE account_id = $1 RETURNING id",
                &[&account.0],
            )
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(ended.iter().map(|r| SessionId(r.get(0))).collect())
    }

    pub(super) async fn session(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<SessionRecord>, StoreError> {
        let rows = self
            .rows(
                "SELECT s.id, a.id, a.name FROM sessions s JOIN accounts a ON a.id = s.account_id
                  WHERE s.token_hash = $1",
                &[&&token_hash[..]],
            )
            .await?;
        Ok(rows.first().map(|r| SessionRecord {
            id: SessionId(r.get(0)),
            account_id: AccountId(r.get(1)),
            name: r.get(2),
        }))
    }

    pub(super) async fn room(&self, name: &str, key: &str) -> Result<RoomRecord, StoreError> {
        self.change(
            "INSERT INTO rooms (name, name_key, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (name_key) DO NOTHING",
            &[&name, &key, &now_ms()],
        )
        .await?;
        let rows = self
            .rows("SELECT id, name FROM rooms WHERE name_key = $1", &[&key])
            .await?;
        rows.first()
            .map(room_record)
            .ok_or_else(|| StoreError::Backend(format!("room {name} was deleted as it was made")))
    }

    pub(super) async fn all_rooms(&self) -> Result<Vec<RoomRecord>, StoreError> {
        let rows = self
            .rows("SELECT id, name FROM rooms ORDER BY name_key", &[])
            .await?;
        Ok(rows.iter().map(room_record).collect())
    }

    pub(super) async fn rooms_of_account(
        &self,
        account: AccountId,
    ) -> Result<Vec<RoomRecord>, StoreError> {
        let rows = self
            .rows(
                "SELECT r.id, r.name FROM memberships m JOIN rooms r ON r.id = m.room_id
                  WHERE m.account_id = $1 ORDER BY r.name_key",
                &[&account.0],
            )
            .await?;
        Ok(rows.iter().map(room_record).collect())
    }

    pub(super) async fn all_memberships(&self) -> Result<Vec<(RoomId, AccountId)>, StoreError> {
        let rows = self
            .rows("SELECT room_id, account_id FROM memberships", &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| (RoomId(r.get(0)), AccountId(r.get(1))))
            .collect())
    }

    /// What waits for an account with `after < id <= up_to`, oldest first,
    /// at most `limit`: as for SQLite, each source read as an index range
    /// with its own limit, then merged.
    pub(super) async fn waiting(
        &self,
        account: AccountId,
        after: u64,
        up_to: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let (after, up_to, limit) = (after as i64, up_to as i64, i64::from(limit));
        let client = self.client().await?;
        let inbox = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN (
                     SELECT message_id FROM inbox
                      WHERE account_id = $1 AND message_id > $2 AND message_id <= $3
                      ORDER BY message_id LIMIT $4)"
            ))
            .await
            .map_err(backend)?;
        let cursors = client
            .prepare_cached("SELECT room_id, acked_id FROM memberships WHERE account_id = $1")
            .await
            .map_err(backend)?;
        let room_page = client
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                  WHERE room_id = $1 AND id > $2 AND id <= $3 AND sender_id != $4
                  ORDER BY id LIMIT $5"
            ))
            .await
            .map_err(backend)?;
        let mut page: Vec<Message> = client
            .query(&inbox, &[&account.0, &after, &up_to, &limit])
            .await
            .map_err(backend)?
            .iter()
            .map(row_to_message)
            .collect();
        let cursors = client
            .query(&cursors, &[&account.0])
            .await
            .map_err(backend)?;
        for cursor in cursors {
            let (room, acked): (i64, i64) = (cursor.get(0), cursor.get(1));
            let rows = client
                .query(
                    &room_page,
                    &[&room, &acked.max(after), &up_to, &account.0, &limit],
                )
                .await
                .map_err(backend)?;
            page.extend(rows.iter().map(row_to_message));
        }
        page.sort_by_key(|m| m.id);
        page.truncate(limit as usize);
        Ok(page)
    }

    /// The newest committed message id: the counter, which moves only when
    /// messages commit.
    pub(super) async fn last_id(&self) -> Result<u64, StoreError> {
        let rows = self.rows("SELECT last FROM message_ids", &[]).await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    /// Marks messages as shown, for many accounts, in one transaction of
    /// three statements: inbox rows go; ids that were not in an inbox count
    /// for their rooms; each room cursor moves to the newest.
    pub(super) async fn mark_shown(&self, acks: &[AccountAcks]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let mut attempt = 1;
        loop {
            match mark_shown_once(&mut client, acks).await {
                Ok(()) => return Ok(()),
                Err(e) if is_transient(&e) && attempt < ATTEMPTS => attempt += 1,
                Err(e) => return Err(backend(e)),
            }
        }
    }

    pub(super) async fn conversation(
        &self,
        conversation: Conversation,
        after: u64,
        limit: u32,
        newest: bool,
    ) -> Result<Vec<Message>, StoreError> {
        let (filter, mut args) = conversation_filter(conversation);
        let (after_at, limit_at) = (args.len() + 1, args.len() + 2);
        args.extend([after as i64, i64::from(limit)]);
        let order = if newest { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages
              WHERE {filter} AND id > ${after_at} ORDER BY id {order} LIMIT ${limit_at}) page
             ORDER BY id"
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let rows = self.rows(&sql, &params).await?;
        Ok(rows.iter().map(row_to_message).collect())
    }

    pub(super) async fn nth(
        &self,
        conversation: Conversation,
        after: u64,
        n: u32,
    ) -> Result<Option<u64>, StoreError> {
        let (filter, mut args) = conversation_filter(conversation);
        let (after_at, offset_at) = (args.len() + 1, args.len() + 2);
        args.extend([after as i64, i64::from(n) - 1]);
        let sql = format!(
            "SELECT id FROM messages WHERE {filter} AND id > ${after_at}
             ORDER BY id DESC LIMIT 1 OFFSET ${offset_at}"
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let rows = self.rows(&sql, &params).await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0) as u64))
    }

    pub(super) async fn count(&self) -> Result<Counts, StoreError> {
        let rows = self
            .rows(
                "SELECT (SELECT last FROM message_ids),
                        (SELECT COUNT(*) FROM accounts),
                        (SELECT COUNT(*) FROM rooms)",
                &[],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Backend("no counts".into()))?;
        Ok(Counts {
            messages: row.get::<_, i64>(0) as u64,
            accounts: row.get::<_, i64>(1) as u64,
            rooms: row.get::<_, i64>(2) as u64,
        })
    }
}

fn account_record(r: &Row) -> AccountRecord {
    AccountRecord {
        id: AccountId(r.get(0)),
        name: r.get(1),
        password_hash: r.get(2),
        created_ms: r.get(3),
        suspended: r.get::<_, Option<String>>(4).map(|by| Suspension {
            by,
            reason: r.get(5),
            since_ms: r.get(6),
        }),
    }
}

fn room_record(r: &Row) -> RoomRecord {
    RoomRecord {
        id: RoomId(r.get(0)),
        name: r.get(1),
    }
}

async fn mark_shown_once(
    client: &mut Object,
    acks: &[AccountAcks],
) -> Result<(), tokio_postgres::Error> {
    // Rows are taken in one order on every node, so two nodes acknowledging
    // for one account cannot deadlock.
    let mut shown: Vec<(i64, i64)> = acks
        .iter()
        .flat_map(|a| a.ids.iter().map(|&id| (a.account.0, id as i64)))
        .collect();
    shown.sort_unstable();
    shown.dedup();
    let (accounts, ids): (Vec<i64>, Vec<i64>) = shown.iter().copied().unzip();
    let tx = client.transaction().await?;
    let unboxed: HashSet<(i64, i64)> = tx
        .query(
            "DELETE FROM inbox i USING UNNEST($1::BIGINT[], $2::BIGINT[]) AS u(account_id, message_id)
              WHERE i.account_id = u.account_id AND i.message_id = u.message_id
              RETURNING i.account_id, i.message_id",
            &[&accounts, &ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let rest: Vec<(i64, i64)> = shown.into_iter().filter(|s| !unboxed.contains(s)).collect();
    let mut cursors: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for a in acks {
        for &(room, id) in &a.rooms {
            let cursor = cursors.entry((a.account.0, room.0)).or_insert(id as i64);
            *cursor = (*cursor).max(id as i64);
        }
    }
    if !rest.is_empty() {
        let rest_ids: Vec<i64> = rest.iter().map(|&(_, id)| id).collect();
        let rooms: std::collections::HashMap<i64, i64> = tx
            .query(
                "SELECT id, room_id FROM messages WHERE id = ANY($1::BIGINT[]) AND room_id IS NOT NULL",
                &[&rest_ids],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (account, id) in rest {
            if let Some(&room) = rooms.get(&id) {
                let cursor = cursors.entry((account, room)).or_insert(id);
                *cursor = (*cursor).max(id);
            }
        }
    }
    if !cursors.is_empty() {
        let mut columns: (Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
        for ((account, room), id) in cursors {
            columns.0.push(account);
            columns.1.push(room);
            columns.2.push(id);
        }
        tx.execute(
            "UPDATE memberships m SET acked_id = GREATEST(m.acked_id, u.id)
               FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS u(account_id, room_id, id)
              WHERE m.account_id = u.account_id AND m.room_id = u.room_id",
            &[&columns.0, &columns.1, &columns.2],
        )
        .await?;
    }
    tx.commit().await
}

/// The `WHERE` condition selecting a conversation's messages, and its
/// arguments (numbered from 1).
fn conversation_filter(conversation: Conversation) -> (&'static str, Vec<i64>) {
    match conversation {
        Conversation::Room(room) => ("room_id = $1", vec![room.0]),
        Conversation::Direct(x, y) => (
            "((sender_id = $1 AND recipient_id = $2) OR (sender_id = $2 AND recipient_id = $1))",
            vec![x.0, y.0],
        ),
    }
}
