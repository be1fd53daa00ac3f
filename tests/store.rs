//! The store contract, checked on both backends through the `Store` trait:
//! every test runs once on a SQLite file and once on a PostgreSQL database
//! of its own. What only PostgreSQL has (several nodes on one database,
//! migrations raced by nodes starting together) is at the end.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use meshtalk::model::{AccountId, Message, RoomId, Target};
use meshtalk::store::{
    AccountAcks, Conversation, NewMessage, PostgresStore, Retention, SqliteStore, Store,
    StoreError, Suspension, after_commit,
};

/// `pending`'s `up_to` for everything stored: ids are positive `i64`s.
const ALL: u64 = i64::MAX as u64;

/// A store of the given kind, empty; the temp dir holds SQLite's file.
async fn open(kind: &str) -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = match kind {
        "sqlite" => Arc::new(SqliteStore::open(&dir.path().join("meshtalk.db")).expect("sqlite")),
        _ => Arc::new(
            PostgresStore::open(&common::postgres::fresh_database())
                .await
                .expect("postgres"),
        ),
    };
    (store, dir)
}

/// Each test, once per store.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                let (store, _dir) = super::open("sqlite").await;
                super::$name(store).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                let (store, _dir) = super::open("postgres").await;
                super::$name(store).await;
            })*
        }
    };
}

on_both!(
    accounts_are_unique_by_key_and_deletion_takes_what_is_theirs,
    sessions_beyond_the_cap_end_oldest_first,
    a_direct_message_waits_in_the_inbox_until_acknowledged,
    room_speech_waits_after_the_cursor_and_joining_replays_nothing,
    a_retried_client_msg_id_is_stored_once,
    hooks_run_in_commit_order_with_ids_that_increase,
    history_pages_from_either_end,
    counts_follow_what_is_stored,
    retention_takes_old_and_surplus_messages_but_no_waiting_direct_one,
    a_suspension_ends_sessions_and_refuses_new_ones_until_restored,
);

async fn account(store: &Arc<dyn Store>, name: &str, lobby: RoomId) -> AccountId {
    store
        .create_account(name, &name.to_lowercase(), "hash", lobby, Box::new(|_| {}))
        .await
        .expect("account")
}

async fn lobby(store: &Arc<dyn Store>) -> RoomId {
    store.ensure_room("lobby", "lobby").await.expect("lobby").id
}

fn dm(from: (AccountId, &str), to: (AccountId, &str), body: &str) -> NewMessage {
    NewMessage {
        sender: from.0,
        sender_name: from.1.into(),
        recipient: Some((to.0, to.1.into())),
        room: None,
        body: body.into(),
        client_msg_id: None,
        sent_at_ms: 1,
    }
}

fn said(from: (AccountId, &str), room: (RoomId, &str), body: &str) -> NewMessage {
    NewMessage {
        sender: from.0,
        sender_name: from.1.into(),
        recipient: None,
        room: Some((room.0, room.1.into())),
        body: body.into(),
        client_msg_id: None,
        sent_at_ms: 1,
    }
}

async fn append(store: &Arc<dyn Store>, m: NewMessage) -> u64 {
    store
        .append(m, after_commit(|_| {}))
        .await
        .expect("append")
        .id
}

fn bodies(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

async fn accounts_are_unique_by_key_and_deletion_takes_what_is_theirs(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ann = account(&store, "Ann", lobby).await;
    let taken = store
        .create_account("ANN", "ann", "hash", lobby, Box::new(|_| {}))
        .await;
    assert!(matches!(taken, Err(StoreError::NameTaken)), "{taken:?}");
    let found = store.account_by_key("ann").await.unwrap().expect("by key");
    assert_eq!((found.id, found.name.as_str()), (ann, "Ann"));
    assert_eq!(store.account_by_id(ann).await.unwrap().unwrap().name, "Ann");
    let bob = account(&store, "Bob", lobby).await;
    store.grant_operator(ann).await.unwrap();
    store.create_session([7; 32], ann, 5).await.unwrap();
    append(&store, dm((bob, "Bob"), (ann, "Ann"), "for ann")).await;

    store.delete_account(ann).await.unwrap();
    assert!(store.account_by_key("ann").await.unwrap().is_none());
    assert!(store.session_by_token([7; 32]).await.unwrap().is_none());
    assert!(store.operators().await.unwrap().is_empty());
    assert_eq!(
        store.memberships().await.unwrap(),
        vec![(lobby, bob)],
        "the deleted account's membership goes"
    );
    assert!(store.pending(ann, 0, ALL, 10).await.unwrap().is_empty());
    let names: Vec<String> = store
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, vec!["Bob"]);
}

async fn sessions_beyond_the_cap_end_oldest_first(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ann = account(&store, "ann", lobby).await;
    let mut opened = Vec::new();
    for n in 0..3u8 {
        let (id, evicted) = store.create_session([n; 32], ann, 2).await.unwrap();
        opened.push(id);
        if n < 2 {
            assert!(evicted.is_empty());
        } else {
            assert_eq!(evicted, vec![opened[0]], "the oldest goes");
        }
    }
    assert!(store.session_by_token([0; 32]).await.unwrap().is_none());
    let live = store
        .session_by_token([2; 32])
        .await
        .unwrap()
        .expect("newest");
    assert_eq!(
        (live.id, live.account_id, live.name.as_str()),
        (opened[2], ann, "ann")
    );
    assert_eq!(
        store.sessions_alive(opened.clone()).await.unwrap(),
        opened[1..],
        "the evicted one is gone, the others are there"
    );
    store.delete_session(opened[2]).await.unwrap();
    assert!(store.session_by_token([2; 32]).await.unwrap().is_none());
    assert_eq!(
        store.sessions_alive(opened.clone()).await.unwrap(),
        [opened[1]]
    );
}

async fn a_direct_message_waits_in_the_inbox_until_acknowledged(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ann = account(&store, "ann", lobby).await;
    let bob = account(&store, "bob", lobby).await;
    let first = append(&store, dm((ann, "ann"), (bob, "bob"), "one")).await;
    let second = append(&store, dm((ann, "ann"), (bob, "bob"), "two")).await;
    assert!(second > first);
    let waiting = store.pending(bob, 0, ALL, 10).await.unwrap();
    assert_eq!(bodies(&waiting), ["one", "two"]);
    assert_eq!(waiting[0].from, "ann");
    assert!(matches!(&waiting[0].to, Target::User(u) if u == "bob"));
    assert!(store.pending(ann, 0, ALL, 10).await.unwrap().is_empty());
    store
        .ack(vec![AccountAcks {
            account: bob,
            ids: vec![first],
            rooms: vec![],
        }])
        .await
        .unwrap();
    let waiting = store.pending(bob, 0, ALL, 10).await.unwrap();
    assert_eq!(bodies(&waiting), ["two"]);
    // Paging: `after` and `up_to` bound the ids, `limit` the count.
    assert!(
        store
            .pending(bob, second, ALL, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.pending(bob, 0, first, 10).await.unwrap().is_empty());
}

async fn room_speech_waits_after_the_cursor_and_joining_replays_nothing(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ann = account(&store, "ann", lobby).await;
    let rust = store.ensure_room("rust", "rust").await.unwrap();
    assert_eq!(store.ensure_room("Rust", "rust").await.unwrap().id, rust.id);
    let joined = Arc::new(Mutex::new(None));
    let seen = joined.clone();
    assert!(
        store
            .join(
                ann,
                rust.id,
                Box::new(move |j| *seen.lock().unwrap() = Some(*j))
            )
            .await
            .unwrap()
    );
    assert_eq!(*joined.lock().unwrap(), Some(true), "the hook saw the join");
    append(&store, said((ann, "ann"), (rust.id, "rust"), "before bob")).await;
    let bob = account(&store, "bob", lobby).await;
    assert!(store.join(bob, rust.id, Box::new(|_| {})).await.unwrap());
    assert!(
        !store.join(bob, rust.id, Box::new(|_| {})).await.unwrap(),
        "already a member"
    );
    assert!(
        store.pending(bob, 0, ALL, 10).await.unwrap().is_empty(),
        "joining replays nothing"
    );
    let one = append(&store, said((ann, "ann"), (rust.id, "rust"), "one")).await;
    append(&store, said((ann, "ann"), (rust.id, "rust"), "two")).await;
    append(&store, said((bob, "bob"), (rust.id, "rust"), "bob's own")).await;
    let waiting = store.pending(bob, 0, ALL, 10).await.unwrap();
    assert_eq!(bodies(&waiting), ["one", "two"], "not its own speech");
    // An id that was in no inbox counts for its room's cursor.
    store
        .ack(vec![AccountAcks {
            account: bob,
            ids: vec![one],
            rooms: vec![],
        }])
        .await
        .unwrap();
    assert_eq!(
        bodies(&store.pending(bob, 0, ALL, 10).await.unwrap()),
        ["two"]
    );
    assert!(store.leave(bob, rust.id, Box::new(|_| {})).await.unwrap());
    assert!(!store.leave(bob, rust.id, Box::new(|_| {})).await.unwrap());
    assert!(store.pending(bob, 0, ALL, 10).await.unwrap().is_empty());
}

async fn a_retried_client_msg_id_is_stored_once(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ann = account(&store, "ann", lobby).await;
    let bob = account(&store, "bob", lobby).await;
    let with_id = |body: &str| NewMessage {
        client_msg_id: Some("c-1".into()),
        ..dm((ann, "ann"), (bob, "bob"), body)
    };
    // Two in one batch, and one after it committed.
    let (a, b) = tokio::join!(
        store.append(with_id("first"), after_commit(|_| {})),
        store.append(with_id("retry"), after_commit(|_| {}))
    );
    let later = store
        .append(with_id("late retry"), after_commit(|_| {}))
        .await
        .unwrap();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(!a.duplicate && b.duplicate && later.duplicate);
    assert_eq!((b.id, later.id), (a.id, a.id));
    let waiting = store.pending(bob, 0, ALL, 10).await.unwrap();
    assert_eq!(bodies(&waiting), ["first"]);
}

async fn hooks_run_in_commit_order_with_ids_that_increase(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ann = account(&store, "ann", lobby).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut pending = Vec::new();
    for n in 0..200 {
        let order = order.clone();
        pending.push(store.append(
            said((ann, "ann"), (lobby, "lobby"), &n.to_string()),
            after_commit(move |appended| order.lock().unwrap().push(appended.message.id)),
        ));
    }
    let mut answered = Vec::new();
    for p in pending {
        answered.push(p.await.unwrap().id);
    }
    let hooked = order.lock().unwrap().clone();
    assert_eq!(
        hooked, answered,
        "hooks ran in the order the appends were queued"
    );
    assert!(answered.windows(2).all(|w| w[0] < w[1]), "{answered:?}");
    assert_eq!(
        store.last_message_id().await.unwrap(),
        *answered.last().unwrap()
    );
}

async fn history_pages_from_either_end(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ann = account(&store, "ann", lobby).await;
    let bob = account(&store, "bob", lobby).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            append(
                &store,
                said((ann, "ann"), (lobby, "lobby"), &format!("r{n}")),
            )
            .await,
        );
        append(&store, dm((bob, "bob"), (ann, "ann"), &format!("d{n}"))).await;
    }
    let room = Conversation::Room(lobby);
    assert_eq!(
        bodies(&store.history(room, 0, 2, false).await.unwrap()),
        ["r0", "r1"]
    );
    assert_eq!(
        bodies(&store.history(room, 0, 2, true).await.unwrap()),
        ["r3", "r4"]
    );
    assert_eq!(
        bodies(&store.history(room, ids[3], 10, false).await.unwrap()),
        ["r4"]
    );
    let direct = Conversation::Direct(ann, bob);
    assert_eq!(
        bodies(&store.history(direct, 0, 10, false).await.unwrap()).len(),
        5
    );
    assert_eq!(store.nth_newest(room, 0, 2).await.unwrap(), Some(ids[3]));
    assert_eq!(store.nth_newest(room, 0, 6).await.unwrap(), None);
    assert_eq!(store.nth_newest(room, 0, 0).await.unwrap(), None);
}

async fn counts_follow_what_is_stored(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ann = account(&store, "ann", lobby).await;
    store.ensure_room("rust", "rust").await.unwrap();
    for n in 0..3 {
        append(&store, said((ann, "ann"), (lobby, "lobby"), &n.to_string())).await;
    }
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.messages, counts.accounts, counts.rooms), (3, 1, 2));
}

/// Two nodes on one database, sending into one room at once, while a
/// reader pages through the room's history the way a catching-up client
/// does: by the newest id it has seen. Were ids handed out in an order
/// other than commit order, a message committed after the reader passed
/// its id would never be read.
#[tokio::test(flavor = "multi_thread")]
async fn ids_follow_commit_order_across_nodes_on_one_database() {
    let url = common::postgres::fresh_database();
    let a: Arc<dyn Store> = Arc::new(PostgresStore::open(&url).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(PostgresStore::open(&url).await.unwrap());
    let lobby = lobby(&a).await;
    let ann = account(&a, "ann", lobby).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (a.clone(), done.clone());
        tokio::spawn(async move {
            let (mut cursor, mut read) = (0, BTreeSet::new());
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = store
                    .history(Conversation::Room(lobby), cursor, 1000, false)
                    .await
                    .unwrap();
                for m in &page {
                    read.insert(m.id);
                    cursor = cursor.max(m.id);
                }
                if finished && page.is_empty() {
                    return read;
                }
            }
        })
    };
    let mut senders = Vec::new();
    for (n, node) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for round in 0..50 {
                let batch: Vec<_> = (0..20)
                    .map(|i| {
                        node.append(
                            said((ann, "ann"), (lobby, "lobby"), &format!("{n}-{round}-{i}")),
                            after_commit(|_| {}),
                        )
                    })
                    .collect();
                for pending in batch {
                    ids.push(pending.await.unwrap().id);
                }
            }
            ids
        }));
    }
    let mut sent = BTreeSet::new();
    for s in senders {
        sent.extend(s.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let read = reader.await.unwrap();
    assert_eq!(sent.len(), 4000);
    let missed: Vec<_> = sent.difference(&read).collect();
    assert!(
        missed.is_empty(),
        "the reader passed {} ids before they committed",
        missed.len()
    );
}

/// Nodes started together on an empty database: one migrates, the others
/// wait for it and find the schema made; all serve the same data.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_starting_together_on_an_empty_database_migrate_once() {
    let url = common::postgres::fresh_database();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("every node opens"));
    }
    let first: Arc<dyn Store> = Arc::new(stores.remove(0));
    let lobby = lobby(&first).await;
    account(&first, "ann", lobby).await;
    for other in &stores {
        assert_eq!(other.accounts().await.unwrap().len(), 1);
    }
}

/// A database a newer meshtalk migrated further is refused, not misread.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_is_refused() {
    let url = common::postgres::fresh_database();
    PostgresStore::open(&url).await.unwrap().close().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("UPDATE meshtalk_schema SET version = 99")
        .await
        .unwrap();
    let refused = PostgresStore::open(&url).await.err().expect("refused");
    assert!(
        matches!(refused, StoreError::UnknownSchema { found: 99, .. }),
        "{refused}"
    );
}

/// Runs `rule` to the end in batches of `limit`; how many went.
async fn prune_all(store: &Arc<dyn Store>, rule: Retention, limit: u32) -> u64 {
    let mut gone = 0;
    loop {
        let batch = store.prune(rule, limit).await.unwrap();
        assert!(batch <= u64::from(limit), "a batch keeps to its limit");
        gone += batch;
        if batch < u64::from(limit) {
            return gone;
        }
    }
}

async fn retention_takes_old_and_surplus_messages_but_no_waiting_direct_one(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let ops = store.ensure_room("ops", "ops").await.unwrap().id;
    let ann = account(&store, "ann", lobby).await;
    let bob = account(&store, "bob", lobby).await;
    let at = |mut m: NewMessage, ms: i64| {
        m.sent_at_ms = ms;
        m
    };
    // Old: four in the lobby, two DMs bob has seen and one he has not.
    for n in 0..4 {
        append(
            &store,
            at(
                said((ann, "ann"), (lobby, "lobby"), &format!("old {n}")),
                1_000 + n,
            ),
        )
        .await;
    }
    let seen = [
        append(&store, at(dm((ann, "ann"), (bob, "bob"), "seen 1"), 1_010)).await,
        append(&store, at(dm((ann, "ann"), (bob, "bob"), "seen 2"), 1_011)).await,
    ];
    append(&store, at(dm((ann, "ann"), (bob, "bob"), "unseen"), 1_012)).await;
    store
        .ack(vec![AccountAcks {
            account: bob,
            ids: seen.to_vec(),
            rooms: vec![],
        }])
        .await
        .unwrap();
    // New: three in each room.
    for n in 0..3 {
        append(
            &store,
            at(
                said((ann, "ann"), (lobby, "lobby"), &format!("new {n}")),
                9_000 + n,
            ),
        )
        .await;
        append(
            &store,
            at(
                said((ann, "ann"), (ops, "ops"), &format!("ops {n}")),
                9_000 + n,
            ),
        )
        .await;
    }

    let by_age = Retention {
        before_ms: Some(5_000),
        keep_per_room: None,
    };
    assert_eq!(prune_all(&store, by_age, 2).await, 6, "four old, two seen");
    let lobby_left = store
        .history(Conversation::Room(lobby), 0, 100, false)
        .await
        .unwrap();
    assert_eq!(bodies(&lobby_left), ["new 0", "new 1", "new 2"]);
    let direct = store
        .history(Conversation::Direct(ann, bob), 0, 100, false)
        .await
        .unwrap();
    assert_eq!(bodies(&direct), ["unseen"], "a waiting DM is never dropped");
    // Bob is owed the waiting DM, then the lobby's speech after his cursor.
    assert_eq!(
        bodies(&store.pending(bob, 0, ALL, 10).await.unwrap()),
        ["unseen", "new 0", "new 1", "new 2"]
    );
    assert_eq!(prune_all(&store, by_age, 2).await, 0, "nothing more is old");

    let by_count = Retention {
        before_ms: None,
        keep_per_room: Some(2),
    };
    assert_eq!(
        prune_all(&store, by_count, 10).await,
        2,
        "one from each room"
    );
    for (room, newest) in [(lobby, ["new 1", "new 2"]), (ops, ["ops 1", "ops 2"])] {
        let left = store
            .history(Conversation::Room(room), 0, 100, false)
            .await
            .unwrap();
        assert_eq!(bodies(&left), newest);
    }
    let direct = store
        .history(Conversation::Direct(ann, bob), 0, 100, false)
        .await
        .unwrap();
    assert_eq!(bodies(&direct), ["unseen"], "room caps leave DMs be");
}

async fn a_suspension_ends_sessions_and_refuses_new_ones_until_restored(store: Arc<dyn Store>) {
    let lobby = lobby(&store).await;
    let (bob, carol) = (
        account(&store, "bob", lobby).await,
        account(&store, "carol", lobby).await,
    );
    let (first, _) = store.create_session([1; 32], bob, 8).await.unwrap();
    let (second, _) = store.create_session([2; 32], bob, 8).await.unwrap();
    store.create_session([3; 32], carol, 8).await.unwrap();

    let suspension = Suspension {
        by: "root".into(),
        reason: "spam".into(),
        since_ms: 1234,
    };
    let mut ended = store.suspend(bob, suspension.clone()).await.unwrap();
    ended.sort_by_key(|s| s.0);
    assert_eq!(ended, [first, second]);
    assert!(store.session_by_token([1; 32]).await.unwrap().is_none());
    assert!(
        store.session_by_token([3; 32]).await.unwrap().is_some(),
        "carol is untouched"
    );
    let record = store.account_by_key("bob").await.unwrap().unwrap();
    assert_eq!(record.suspended, Some(suspension));
    assert_eq!(
        store.account_by_id(carol).await.unwrap().unwrap().suspended,
        None
    );
    assert!(matches!(
        store.create_session([4; 32], bob, 8).await,
        Err(StoreError::Suspended)
    ));

    // Suspending again replaces the reason.
    let again = Suspension {
        by: "ops".into(),
        reason: "still spam".into(),
        since_ms: 5678,
    };
    assert!(store.suspend(bob, again.clone()).await.unwrap().is_empty());
    assert_eq!(
        store.account_by_id(bob).await.unwrap().unwrap().suspended,
        Some(again)
    );

    assert!(store.restore(bob).await.unwrap());
    assert!(!store.restore(bob).await.unwrap(), "nothing left to lift");
    assert_eq!(
        store.account_by_id(bob).await.unwrap().unwrap().suspended,
        None
    );
    store.create_session([4; 32], bob, 8).await.unwrap();

    // A kick: every session goes, and new ones may open.
    let ended = store.end_sessions(carol).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert!(store.session_by_token([3; 32]).await.unwrap().is_none());
    store.create_session([5; 32], carol, 8).await.unwrap();

    // The suspension goes with the account.
    store
        .suspend(
            carol,
            Suspension {
                by: "root".into(),
                reason: String::new(),
                since_ms: 1,
            },
        )
        .await
        .unwrap();
    store.delete_account(carol).await.unwrap();
    let again = account(&store, "carol", lobby).await;
    assert_eq!(
        store.account_by_id(again).await.unwrap().unwrap().suspended,
        None
    );
}
