//! Messages: appends, what waits for an account, acknowledgements, history
//! and counts.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Statement, params};

use super::backend;
use super::writer::Writer;
use crate::model::{AccountId, Message, RoomId};
use crate::store::{
    AccountAcks, Appended, Conversation, Counts, NewMessage, StoreError, message_target,
};

const MESSAGE_COLUMNS: &str =
    "id, sender_name, recipient_name, room_name, body, sent_ms, client_msg_id";

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: row.get::<_, i64>(0)? as u64,
        from: row.get(1)?,
        to: message_target(row.get(2)?, row.get(3)?),
        body: row.get(4)?,
        sent_at_ms: row.get(5)?,
        client_msg_id: row.get(6)?,
    })
}

/// Stores a message and, for a direct message, its recipient's inbox row;
/// a retried message (same sender and `client_msg_id`) is found, not
/// stored again. Runs without a savepoint: a failed statement is undone by
/// SQLite, and a message whose inbox row failed is deleted here.
pub(super) fn append(c: &Writer<'_>, m: NewMessage) -> rusqlite::Result<Appended> {
    if let Some(message) = earlier(c, &m)? {
        return Ok(Appended {
            message,
            duplicate: true,
        });
    }
    let (recipient_id, recipient_name) = m.recipient.unzip();
    let (room_id, room_name) = m.room.unzip();
    c.insert_message.execute(
        c.conn,
        params![
            m.sender,
            m.sender_name,
            recipient_id,
            recipient_name,
            room_id,
            room_name,
            m.body,
            m.client_msg_id,
            m.sent_at_ms
        ],
    )?;
    let id = c.last_insert_rowid();
    if let Some(recipient) = recipient_id {
        let boxed = c.insert_inbox.execute(c.conn, params![recipient, id]);
        if let Err(e) = boxed {
            give_back(c, id);
            return Err(e);
        }
    }
    Ok(Appended {
        message: Message {
            id: id as u64,
            from: m.sender_name,
            to: message_target(recipient_name, room_name),
            body: m.body,
            sent_at_ms: m.sent_at_ms,
            client_msg_id: m.client_msg_id,
        },
        duplicate: false,
    })
}

/// The message stored before with this one's sender and `client_msg_id`.
fn earlier(c: &Connection, m: &NewMessage) -> rusqlite::Result<Option<Message>> {
    let Some(client_id) = &m.client_msg_id else {
        return Ok(None);
    };
    c.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2"
    ))?
    .query_row(params![m.sender, client_id], row_to_message)
    .optional()
}

/// Deletes a message whose inbox row failed: a message nobody's inbox holds
/// must not be stored either. SQLite undid only the failed statement, so the
/// message, and the id it took, are given back here; if even that fails, the
/// whole transaction goes, and every job in it is answered with the error.
fn give_back(c: &Connection, id: i64) {
    let undone = c
        .prepare_cached("DELETE FROM messages WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .and_then(|_| {
            c.prepare_cached(
                "UPDATE sqlite_sequence SET seq = ?1 - 1 WHERE name = 'messages' AND seq = ?1",
            )?
            .execute([id])
        });
    if undone.is_err() && !c.is_autocommit() {
        let _ = c.execute_batch("ROLLBACK");
    }
}

/// What waits for an account with `after < id <= up_to`, oldest first, at
/// most `limit`. Each source (the inbox, each room's speech since the
/// account's cursor) is read as an index range with its own limit, then
/// merged: a page costs `limit` rows per source, however far behind the
/// account is.
pub(super) fn pending(
    c: &Connection,
    account: AccountId,
    after: u64,
    up_to: u64,
    limit: u32,
) -> rusqlite::Result<Vec<Message>> {
    let (after, up_to) = (after as i64, up_to as i64);
    let mut page: Vec<Message> = c
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN (
                 SELECT message_id FROM inbox
                  WHERE account_id = ?1 AND message_id > ?2 AND message_id <= ?3
                  ORDER BY message_id LIMIT ?4)"
        ))?
        .query_map(params![account, after, up_to, limit], row_to_message)?
        .collect::<rusqlite::Result<_>>()?;
    let cursors: Vec<(RoomId, i64)> = c
        .prepare_cached("SELECT room_id, acked_id FROM memberships WHERE account_id = ?1")?
        .query_map([account], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut room_page = c.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
          WHERE room_id = ?1 AND id > ?2 AND id <= ?3 AND sender_id != ?4
          ORDER BY id LIMIT ?5"
    ))?;
    for (room, acked) in cursors {
        let rows = room_page.query_map(
            params![room, acked.max(after), up_to, account, limit],
            row_to_message,
        )?;
        for row in rows {
            page.push(row?);
        }
    }
    page.sort_by_key(|m| m.id);
    page.truncate(limit as usize);
    Ok(page)
}

pub(super) fn last_id(c: &Connection) -> rusqlite::Result<u64> {
    c.query_row("SELECT IFNULL(MAX(id), 0) FROM messages", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|id| id as u64)
}

/// Marks messages as shown for each account: removes them from its inbox
/// and moves its room cursors forward, one update per room however many of
/// its messages were acknowledged.
pub(super) fn ack(c: &Connection, acks: Vec<AccountAcks>) -> Result<(), StoreError> {
    let mut unbox = c
        .prepare_cached("DELETE FROM inbox WHERE account_id = ?1 AND message_id = ?2")
        .map_err(backend)?;
    let mut room_of = c
        .prepare_cached("SELECT room_id FROM messages WHERE id = ?1")
        .map_err(backend)?;
    let mut advance = c
        .prepare_cached(
            "UPDATE memberships SET acked_id = MAX(acked_id, ?3)
              WHERE account_id = ?1 AND room_id = ?2",
        )
        .map_err(backend)?;
    for acks in acks {
        let account = acks.account;
        for (room, id) in unbox_ids(&mut unbox, &mut room_of, acks)? {
            advance
                .execute(params![account, room, id])
                .map_err(backend)?;
        }
    }
    Ok(())
}

/// Removes an account's acknowledged ids from its inbox; an id that was
/// not there counts for its room. Returns the newest id per room.
fn unbox_ids(
    unbox: &mut Statement<'_>,
    room_of: &mut Statement<'_>,
    acks: AccountAcks,
) -> Result<HashMap<RoomId, i64>, StoreError> {
    let AccountAcks {
        account,
        ids,
        rooms,
    } = acks;
    let mut cursors: HashMap<RoomId, i64> = rooms
        .into_iter()
        .map(|(room, id)| (room, id as i64))
        .collect();
    for id in ids {
        let id = id as i64;
        if unbox.execute(params![account, id]).map_err(backend)? > 0 {
            continue;
        }
        let room: Option<Option<RoomId>> = room_of
            .query_row([id], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        if let Some(Some(room)) = room {
            let cursor = cursors.entry(room).or_insert(id);
            *cursor = (*cursor).max(id);
        }
    }
    Ok(cursors)
}

/// A conversation's messages after a cursor, oldest first; with `newest`,
/// the last `limit` of them.
pub(super) fn history(
    c: &Connection,
    conversation: Conversation,
    after: u64,
    limit: u32,
    newest: bool,
) -> rusqlite::Result<Vec<Message>> {
    let (filter, mut args) = conversation_filter(conversation);
    let (after_at, limit_at) = (args.len() + 1, args.len() + 2);
    args.extend([after as i64, i64::from(limit)]);
    let order = if newest { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages
          WHERE {filter} AND id > ?{after_at} ORDER BY id {order} LIMIT ?{limit_at})
         ORDER BY id"
    );
    c.prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), row_to_message)?
        .collect()
}

/// The id of the `n`th newest message (from 1) of a conversation after a
/// cursor, if it has that many.
pub(super) fn nth_newest(
    c: &Connection,
    conversation: Conversation,
    after: u64,
    n: u32,
) -> rusqlite::Result<Option<u64>> {
    let (filter, mut args) = conversation_filter(conversation);
    let (after_at, offset_at) = (args.len() + 1, args.len() + 2);
    args.extend([after as i64, i64::from(n) - 1]);
    let sql = format!(
        "SELECT id FROM messages WHERE {filter} AND id > ?{after_at}
         ORDER BY id DESC LIMIT 1 OFFSET ?{offset_at}"
    );
    c.prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))
        .optional()
        .map(|id| id.map(|id| id as u64))
}

/// The `WHERE` condition selecting a conversation's messages, and its
/// arguments (numbered from 1).
fn conversation_filter(conversation: Conversation) -> (&'static str, Vec<i64>) {
    match conversation {
        Conversation::Room(room) => ("room_id = ?1", vec![room.0]),
        Conversation::Direct(x, y) => (
            "((sender_id = ?1 AND recipient_id = ?2) OR (sender_id = ?2 AND recipient_id = ?1))",
            vec![x.0, y.0],
        ),
    }
}

pub(super) fn counts(c: &Connection) -> rusqlite::Result<Counts> {
    c.query_row(
        "SELECT (SELECT IFNULL(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'messages'),
                (SELECT COUNT(*) FROM accounts),
                (SELECT COUNT(*) FROM rooms)",
        [],
        |r| {
            Ok(Counts {
                messages: r.get::<_, i64>(0)? as u64,
                accounts: r.get::<_, i64>(1)? as u64,
                rooms: r.get::<_, i64>(2)? as u64,
            })
        },
    )
}
