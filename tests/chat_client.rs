//! `meshtalk chat` through its library layer: what a user types, and what
//! the user sees, against a real server.

mod common;

use common::{PASSWORD, TestServer, next_message, shown};
use meshtalk::client::chat::{ChatSession, Outcome, render_event, render_message};
use meshtalk::proto;

#[tokio::test]
async fn two_users_talk_through_the_chat_client() {
    let t = TestServer::start().await;
    let mut alice = ChatSession::start(&t.url, "alice", PASSWORD, true)
        .await
        .unwrap();
    let mut bob = ChatSession::start(&t.url, "bob", PASSWORD, true)
        .await
        .unwrap();
    let mut bob_events = bob.client().subscribe().await.unwrap();
    let mut alice_events = alice.client().subscribe().await.unwrap();
    assert_eq!(alice.prompt(), "[#lobby] alice> ");

    // Plain lines speak in the current room.
    assert!(shown(&mut alice, "hi all").await.is_empty());
    assert_eq!(
        render_message(&next_message(&mut bob_events).await),
        "#lobby alice: hi all"
    );
    assert_eq!(shown(&mut alice, "/join #Rust").await, ["* now in #Rust"]);
    assert_eq!(alice.prompt(), "[#Rust] alice> ");
    shown(&mut bob, "/join rust").await;
    shown(&mut alice, "//slash at the start").await;
    assert_eq!(
        render_message(&next_message(&mut bob_events).await),
        "#Rust alice: /slash at the start"
    );

    assert_eq!(
        shown(&mut bob, "/tell alice lunch?").await,
        ["-> @alice: lunch?"]
    );
    let event = alice_events.message().await.unwrap().unwrap();
    let (line, id) = render_event(&event).unwrap();
    assert_eq!(line, "@bob: lunch?");
    assert!(id.is_some(), "messages are acked once shown");

    let rooms = shown(&mut alice, "/rooms").await;
    assert_eq!(
        rooms,
        ["* #lobby 2 members (joined)", "* #Rust 2 members (joined)"]
    );
    assert_eq!(
        shown(&mut alice, "/users b*").await,
        ["* bob online on test-node"]
    );
    assert_eq!(
        shown(&mut alice, "/users z*").await,
        ["* nobody matches z*"]
    );
    assert_eq!(
        shown(&mut alice, "/history 5").await,
        ["#Rust alice: /slash at the start"]
    );
    assert_eq!(
        shown(&mut alice, "/who").await,
        ["* alice on test-node", "* bob on test-node"]
    );
    let stats = shown(&mut alice, "/stats").await;
    assert!(
        stats[0].starts_with("* node test-node: 3 messages, 2 accounts"),
        "{stats:?}"
    );
    assert!(shown(&mut alice, "/help").await.len() > 5);
    assert_eq!(shown(&mut alice, "/leave rust").await, ["* left #rust"]);
    assert_eq!(alice.prompt(), "[#lobby] alice> ");

    // Mistakes are shown, and the session goes on.
    assert_eq!(
        shown(&mut alice, "/tell nobody hi").await,
        ["! no such user: nobody"]
    );
    assert_eq!(
        shown(&mut alice, "/tell").await,
        ["! usage: /tell NAME TEXT"]
    );
    assert_eq!(
        shown(&mut alice, "/dance").await,
        ["! no such command /dance: try /help"]
    );
    assert!(shown(&mut alice, "").await.is_empty());
    assert_eq!(alice.handle("/quit").await, Outcome::Quit);
}

#[tokio::test]
async fn logging_in_with_a_wrong_password_says_so() {
    let t = TestServer::start().await;
    ChatSession::start(&t.url, "alice", PASSWORD, true)
        .await
        .unwrap();
    let err = ChatSession::start(&t.url, "alice", "nope", false)
        .await
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "wrong name or password");
    let err = ChatSession::start(&t.url, "alice", PASSWORD, true)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("already taken"), "{err}");
}

#[test]
fn notices_render_with_a_star() {
    let event = proto::Event {
        kind: Some(proto::event::Kind::Notice(proto::Notice {
            text: "ack failed".into(),
        })),
    };
    assert_eq!(render_event(&event), Some(("* ack failed".into(), None)));
}
