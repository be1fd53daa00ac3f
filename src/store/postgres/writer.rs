//! The writer: one task, one connection, one transaction per batch of
//! whatever is waiting (group commit). An unbroken run of appends in a
//! batch costs a fixed number of statements however long it is: one
//! round trip for the earlier copies of retried messages and for the
//! recipients, one for the ids, one for the messages and their inbox rows
//! together. Committed batches go to an answering task, which runs their
//! hooks and answers their callers in commit order while the writer goes on.
//!
//! A transaction the database asks to retry (another node's commit
//! conflicted with it) is run again whole: nothing of it was answered yet.
//! A lost connection fails the batch it was running, whose callers were not
//! answered and may retry; the next batch connects again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement, Transaction};

use super::{ATTEMPTS, backend, connect, is_transient};
use crate::model::{AccountId, Message, RoomId};
use crate::store::{
    AccountHook, Appended, CommitHook, HookScope, MembershipHook, NewMessage, StoreError, Stored,
    hand_to_hook, message_target,
};

/// The most mutations one transaction takes.
const MAX_BATCH: usize = 4096;
/// Finished mutations whose hooks run in one call of the hook scope; well
/// under a receiver's queue, as for SQLite.
const WAKE_RUN: usize = 128;

/// A mutation for the writer: what to store, and what runs once it commits.
pub(super) struct Op {
    pub(super) work: Work,
    pub(super) done: Done,
}

/// What a mutation stores. Kept apart from its hook and answer, which only
/// the answering task touches.
pub(super) enum Work {
    CreateAccount {
        name: String,
        key: String,
        hash: String,
        lobby: RoomId,
    },
    Membership {
        account: AccountId,
        room: RoomId,
        join: bool,
    },
    Append(NewMessage),
}

/// What runs once a mutation's transaction is committed, or has failed.
pub(super) enum Done {
    Account {
        hook: AccountHook,
        reply: oneshot::Sender<Result<AccountId, StoreError>>,
    },
    Member {
        hook: MembershipHook,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Append {
        hook: Box<dyn CommitHook>,
        reply: oneshot::Sender<Result<Stored, StoreError>>,
    },
}

/// What one mutation did, known once its transaction commits.
enum Outcome {
    Account(Result<AccountId, StoreError>),
    Member(bool),
    Appended(Append),
}

enum Append {
    /// Stored under this id.
    New(u64),
    /// Stored before, under another request with its `client_msg_id`.
    Duplicate(Message),
    /// Its recipient's account was deleted before it could be stored.
    RecipientGone,
}

const EARLIER: &str = "
SELECT m.id, m.sender_name, m.recipient_name, m.room_name, m.body, m.sent_ms,
       m.client_msg_id, m.sender_id
  FROM messages m
  JOIN UNNEST($1::BIGINT[], $2::TEXT[]) AS u(sender_id, client_msg_id)
    ON m.sender_id = u.sender_id AND m.client_msg_id = u.client_msg_id";
const PRESENT: &str = "SELECT id FROM accounts WHERE id = ANY($1::BIGINT[])";
const TAKE_IDS: &str = "UPDATE message_ids SET last = last + $1 RETURNING last";
const INSERT_MESSAGES: &str = "
INSERT INTO messages (id, sender_id, sender_name, recipient_id, recipient_name,
                      room_id, room_name, body, client_msg_id, sent_ms)
SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[],
                     $6::BIGINT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[])";
const INSERT_INBOX: &str = "
INSERT INTO inbox (account_id, message_id)
SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[])";
const CREATE_ACCOUNT: &str = "
INSERT INTO accounts (name, name_key, password_hash, created_ms) VALUES ($1, $2, $3, $4)
    ON CONFLICT (name_key) DO NOTHING RETURNING id";
/// A member's cursor starts at the newest id, this transaction's own
/// messages included, so joining replays nothing. An account deleted
/// meanwhile (on another node) joins nothing.
const JOIN: &str = "
INSERT INTO memberships (account_id, room_id, acked_id)
SELECT $1, $2, last FROM message_ids WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1)
    ON CONFLICT (account_id, room_id) DO NOTHING";
const LEAVE: &str = "DELETE FROM memberships WHERE account_id = $1 AND room_id = $2";

/// The writer's statements, prepared once per connection.
struct Statements {
    earlier: Statement,
    present: Statement,
    take_ids: Statement,
    insert_messages: Statement,
    insert_inbox: Statement,
    create_account: Statement,
    join: Statement,
    leave: Statement,
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            earlier: c.prepare(EARLIER).await?,
            present: c.prepare(PRESENT).await?,
            take_ids: c.prepare(TAKE_IDS).await?,
            insert_messages: c.prepare(INSERT_MESSAGES).await?,
            insert_inbox: c.prepare(INSERT_INBOX).await?,
            create_account: c.prepare(CREATE_ACCOUNT).await?,
            join: c.prepare(JOIN).await?,
            leave: c.prepare(LEAVE).await?,
        })
    }
}

/// The writer's connection, made again after it is lost.
struct Connection {
    config: tokio_postgres::Config,
    live: Option<(Client, Statements)>,
}

impl Connection {
    async fn live(&mut self) -> Result<&mut (Client, Statements), StoreError> {
        if self.live.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.live = None;
        }
        if self.live.is_none() {
            let client = connect(&self.config).await?;
            let statements = Statements::prepare(&client).await.map_err(backend)?;
            self.live = Some((client, statements));
        }
        self.live
            .as_mut()
            .ok_or_else(|| StoreError::Backend("no PostgreSQL connection".into()))
    }
}

/// Starts the writer on `client`, the connection the schema was migrated on.
pub(super) async fn start(
    config: tokio_postgres::Config,
    client: Client,
    scope: Arc<OnceLock<HookScope>>,
) -> Result<(mpsc::UnboundedSender<Op>, JoinHandle<()>), StoreError> {
    let statements = Statements::prepare(&client).await.map_err(backend)?;
    let connection = Connection {
        config,
        live: Some((client, statements)),
    };
    let (jobs, queue) = mpsc::unbounded_channel();
    Ok((jobs, tokio::spawn(write_loop(connection, queue, scope))))
}

type Answers = (Vec<Work>, Vec<Done>, Result<Vec<Outcome>, StoreError>);

async fn write_loop(
    mut connection: Connection,
    mut queue: mpsc::UnboundedReceiver<Op>,
    scope: Arc<OnceLock<HookScope>>,
) {
    let (answers, to_answer) = mpsc::unbounded_channel::<Answers>();
    let answering = tokio::spawn(answer_loop(to_answer, scope));
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (work, done): (Vec<Work>, Vec<Done>) =
            batch.drain(..).map(|op| (op.work, op.done)).unzip();
        let outcomes = commit(&mut connection, &work).await;
        if answers.send((work, done, outcomes)).is_err() {
            break;
        }
    }
    drop(answers);
    let _ = answering.await;
}

/// Runs a batch in one transaction, again while the database asks for it.
async fn commit(connection: &mut Connection, ops: &[Work]) -> Result<Vec<Outcome>, StoreError> {
    let mut attempt = 1;
    let started = std::time::Instant::now();
    loop {
        let (client, statements) = connection.live().await?;
        match run(client, statements, ops).await {
            Ok(outcomes) => {
                crate::metrics::committed(ops.len(), started.elapsed());
                return Ok(outcomes);
            }
            Err(e) if is_transient(&e) && attempt < ATTEMPTS => attempt += 1,
            Err(e) => return Err(backend(e)),
        }
    }
}

async fn run(
    client: &mut Client,
    st: &Statements,
    ops: &[Work],
) -> Result<Vec<Outcome>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut rest = ops;
    while let Some(first) = rest.first() {
        let appends = rest.iter().take_while(|op| op.message().is_some()).count();
        let (now, later) = rest.split_at(appends.max(1));
        if appends > 0 {
            outcomes.extend(append_run(&tx, st, now).await?);
        } else {
            outcomes.push(other(&tx, st, first).await?);
        }
        rest = later;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// An account or a membership change.
async fn other(
    tx: &Transaction<'_>,
    st: &Statements,
    op: &Work,
) -> Result<Outcome, tokio_postgres::Error> {
    match op {
        Work::CreateAccount {
            name,
            key,
            hash,
            lobby,
        } => {
            let created = tx
                .query_opt(
                    &st.create_account,
                    &[name, key, hash, &crate::model::now_ms()],
                )
                .await?;
            let Some(row) = created else {
                return Ok(Outcome::Account(Err(StoreError::NameTaken)));
            };
            let id: i64 = row.get(0);
            tx.execute(&st.join, &[&id, &lobby.0]).await?;
            Ok(Outcome::Account(Ok(AccountId(id))))
        }
        Work::Membership {
            account,
            room,
            join,
        } => {
            let statement = if *join { &st.join } else { &st.leave };
            let changed = tx.execute(statement, &[&account.0, &room.0]).await?;
            Ok(Outcome::Member(changed == 1))
        }
        Work::Append(_) => unreachable!("appends are stored in runs"),
    }
}

/// How a run stores each of its messages.
enum Plan {
    /// The `n`th new message of the run.
    New(usize),
    Duplicate(Message),
    /// A second request in this run with an earlier one's `client_msg_id`.
    SameAs(usize),
    RecipientGone,
}

/// Stores a run of appends with a fixed number of statements.
async fn append_run(
    tx: &Transaction<'_>,
    st: &Statements,
    ops: &[Work],
) -> Result<Vec<Outcome>, tokio_postgres::Error> {
    let messages: Vec<&NewMessage> = ops.iter().filter_map(Work::message).collect();
    let (earlier, present) =
        tokio::try_join!(earlier(tx, st, &messages), present(tx, st, &messages))?;
    let (plans, new) = plan(&messages, earlier, &present);
    let first = if new.is_empty() {
        0
    } else {
        let last: i64 = tx
            .query_one(&st.take_ids, &[&(new.len() as i64)])
            .await?
            .get(0);
        last - new.len() as i64 + 1
    };
    insert(tx, st, &new, first).await?;
    Ok(plans
        .into_iter()
        .map(|plan| {
            Outcome::Appended(match plan {
                Plan::New(n) => Append::New((first + n as i64) as u64),
                Plan::Duplicate(message) => Append::Duplicate(message),
                Plan::SameAs(n) => Append::Duplicate(stored(new[n], (first + n as i64) as u64)),
                Plan::RecipientGone => Append::RecipientGone,
            })
        })
        .collect())
}

/// Messages stored before under the run's `client_msg_id`s, by sender and id.
async fn earlier(
    tx: &Transaction<'_>,
    st: &Statements,
    messages: &[&NewMessage],
) -> Result<HashMap<(i64, String), Message>, tokio_postgres::Error> {
    let (senders, ids): (Vec<i64>, Vec<&str>) = messages
        .iter()
        .filter_map(|m| Some((m.sender.0, m.client_msg_id.as_deref()?)))
        .unzip();
    if senders.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx.query(&st.earlier, &[&senders, &ids]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let message = super::queries::row_to_message(row);
            let sender: i64 = row.get(7);
            let key = (sender, message.client_msg_id.clone().unwrap_or_default());
            (key, message)
        })
        .collect())
}

/// The run's recipients whose accounts exist.
async fn present(
    tx: &Transaction<'_>,
    st: &Statements,
    messages: &[&NewMessage],
) -> Result<HashSet<i64>, tokio_postgres::Error> {
    let mut recipients: Vec<i64> = messages
        .iter()
        .filter_map(|m| m.recipient.as_ref().map(|(id, _)| id.0))
        .collect();
    if recipients.is_empty() {
        return Ok(HashSet::new());
    }
    recipients.sort_unstable();
    recipients.dedup();
    let rows = tx.query(&st.present, &[&recipients]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Which messages of a run are new, which were stored before, and which
/// cannot be stored; and the new ones, in order.
fn plan<'m>(
    messages: &[&'m NewMessage],
    mut earlier: HashMap<(i64, String), Message>,
    present: &HashSet<i64>,
) -> (Vec<Plan>, Vec<&'m NewMessage>) {
    let mut new = Vec::with_capacity(messages.len());
    let mut first_of: HashMap<(i64, &str), usize> = HashMap::new();
    let plans = messages
        .iter()
        .map(|&m| {
            if let Some(client_id) = m.client_msg_id.as_deref() {
                if let Some(before) = earlier.get(&(m.sender.0, client_id.to_owned())) {
                    return Plan::Duplicate(before.clone());
                }
                if let Some(&n) = first_of.get(&(m.sender.0, client_id)) {
                    return Plan::SameAs(n);
                }
            }
            if let Some((recipient, _)) = &m.recipient
                && !present.contains(&recipient.0)
            {
                return Plan::RecipientGone;
            }
            if let Some(client_id) = m.client_msg_id.as_deref() {
                first_of.insert((m.sender.0, client_id), new.len());
            }
            new.push(m);
            Plan::New(new.len() - 1)
        })
        .collect();
    earlier.clear();
    (plans, new)
}

/// Inserts the new messages under ids from `first` on, and their inbox rows,
/// in one pipelined round trip.
async fn insert(
    tx: &Transaction<'_>,
    st: &Statements,
    new: &[&NewMessage],
    first: i64,
) -> Result<(), tokio_postgres::Error> {
    if new.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = (first..first + new.len() as i64).collect();
    let senders: Vec<i64> = new.iter().map(|m| m.sender.0).collect();
    let sender_names: Vec<&str> = new.iter().map(|m| m.sender_name.as_str()).collect();
    let recipients: Vec<Option<i64>> = new
        .iter()
        .map(|m| m.recipient.as_ref().map(|r| r.0.0))
        .collect();
    let recipient_names: Vec<Option<&str>> = new
        .iter()
        .map(|m| m.recipient.as_ref().map(|r| r.1.as_str()))
        .collect();
    let rooms: Vec<Option<i64>> = new.iter().map(|m| m.room.as_ref().map(|r| r.0.0)).collect();
    let room_names: Vec<Option<&str>> = new
        .iter()
        .map(|m| m.room.as_ref().map(|r| r.1.as_str()))
        .collect();
    let bodies: Vec<&str> = new.iter().map(|m| m.body.as_str()).collect();
    let client_ids: Vec<Option<&str>> = new.iter().map(|m| m.client_msg_id.as_deref()).collect();
    let sent: Vec<i64> = new.iter().map(|m| m.sent_at_ms).collect();
    let (boxed, box_ids): (Vec<i64>, Vec<i64>) = recipients
        .iter()
        .zip(&ids)
        .filter_map(|(r, id)| Some(((*r)?, *id)))
        .unzip();
    let columns: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
        &ids,
        &senders,
        &sender_names,
        &recipients,
        &recipient_names,
        &rooms,
        &room_names,
        &bodies,
        &client_ids,
        &sent,
    ];
    let messages = tx.execute(&st.insert_messages, &columns);
    let inbox = async {
        if boxed.is_empty() {
            Ok(0)
        } else {
            tx.execute(&st.insert_inbox, &[&boxed, &box_ids]).await
        }
    };
    tokio::try_join!(messages, inbox)?;
    Ok(())
}

/// The message as stored under `id`.
fn stored(m: &NewMessage, id: u64) -> Message {
    Message {
        id,
        from: m.sender_name.clone(),
        to: message_target(
            m.recipient.as_ref().map(|r| r.1.clone()),
            m.room.as_ref().map(|r| r.1.clone()),
        ),
        body: m.body.clone(),
        sent_at_ms: m.sent_at_ms,
        client_msg_id: m.client_msg_id.clone(),
    }
}

impl Work {
    fn message(&self) -> Option<&NewMessage> {
        match self {
            Work::Append(message) => Some(message),
            _ => None,
        }
    }
}

impl Done {
    /// Runs the hook and answers the caller, once the batch is committed;
    /// answers with the error if it was not.
    fn finish(self, work: Work, outcome: Result<Outcome, StoreError>) {
        match (self, work, outcome) {
            (Done::Account { hook, reply }, _, Ok(Outcome::Account(created))) => {
                if let Ok(id) = &created {
                    hook(id);
                }
                let _ = reply.send(created);
            }
            (Done::Member { hook, reply }, _, Ok(Outcome::Member(changed))) => {
                hook(&changed);
                let _ = reply.send(Ok(changed));
            }
            (
                Done::Append { mut hook, reply },
                Work::Append(message),
                Ok(Outcome::Appended(append)),
            ) => {
                let _ = reply.send(appended(message, append).map(|a| {
                    let stored = hand_to_hook(a, &mut *hook);
                    hook.committed();
                    stored
                }));
            }
            (done, _, outcome) => {
                let e = match outcome {
                    Err(e) => e,
                    Ok(_) => StoreError::Backend("a mutation was answered for another".into()),
                };
                done.fail(e);
            }
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Done::Account { reply, .. } => drop(reply.send(Err(e))),
            Done::Member { reply, .. } => drop(reply.send(Err(e))),
            Done::Append { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

fn appended(message: NewMessage, append: Append) -> Result<Appended, StoreError> {
    match append {
        Append::New(id) => Ok(Appended {
            message: Message {
                id,
                from: message.sender_name,
                to: message_target(message.recipient.map(|r| r.1), message.room.map(|r| r.1)),
                body: message.body,
                sent_at_ms: message.sent_at_ms,
                client_msg_id: message.client_msg_id,
            },
            duplicate: false,
        }),
        Append::Duplicate(message) => Ok(Appended {
            message,
            duplicate: true,
        }),
        Append::RecipientGone => Err(StoreError::Backend(
            "the recipient's account was deleted before the message was stored".into(),
        )),
    }
}

/// Answers each committed batch in commit order, a run of mutations at a
/// time inside the hook scope.
async fn answer_loop(
    mut batches: mpsc::UnboundedReceiver<Answers>,
    scope: Arc<OnceLock<HookScope>>,
) {
    while let Some((work, done, outcomes)) = batches.recv().await {
        let scope = scope.get().copied().unwrap_or(unscoped);
        let outcomes: Box<dyn Iterator<Item = Result<Outcome, StoreError>> + Send> = match outcomes
        {
            Ok(outcomes) => Box::new(outcomes.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::repeat_with(move || Err(e.clone()))),
        };
        let mut finished = done.into_iter().zip(work).zip(outcomes).peekable();
        while finished.peek().is_some() {
            scope(&mut || {
                for ((done, work), outcome) in finished.by_ref().take(WAKE_RUN) {
                    done.finish(work, outcome);
                }
            });
        }
    }
}

fn unscoped(run: &mut dyn FnMut()) {
    run()
}
