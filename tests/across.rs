//! One core, three doors: a conversation between a binary-protocol user, a
//! gRPC user and a line-protocol (netcat-style) user.

mod common;

use common::{PASSWORD, TestServer, next_message, room_of};
use meshtalk::client::To;
use meshtalk::client::line::LineClient;
use meshtalk::client::wire::WireClient;
use meshtalk::codec::line::ServerLine;
use meshtalk::core::Target;

#[tokio::test]
async fn a_dm_goes_round_all_three_protocols_and_a_room_spans_them() {
    let t = TestServer::start().await;
    let wanda = t.wire_user("wanda").await;
    let greta = t.user("greta").await;
    let mut nick = t.line_user("nick").await;
    let mut greta_events = greta.subscribe().await.unwrap();

    // binary → gRPC → line → binary
    let sent = wanda
        .send_dm("greta", "from the binary door", "")
        .await
        .unwrap();
    let m = next_message(&mut greta_events).await;
    assert_eq!(
        (m.id, m.sender.as_str(), m.body.as_str()),
        (sent.id, "wanda", "from the binary door")
    );
    greta
        .send(&To::User("nick".into()), "from the gRPC door", None)
        .await
        .unwrap();
    assert_eq!(
        nick.next_delivery().await.unwrap(),
        ServerLine::Direct {
            from: "greta".into(),
            text: "from the gRPC door".into()
        }
    );
    let reply = nick
        .request("/tell wanda from the line door")
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let m = wanda.next_message().await.unwrap();
    assert_eq!(
        (m.from.as_str(), m.body.as_str(), m.to),
        ("nick", "from the line door", Target::User("wanda".into()))
    );

    // A room with a member behind each door; each speaks, the others hear.
    wanda.join("agora").await.unwrap();
    greta.join("agora").await.unwrap();
    assert!(nick.request("/join agora").await.unwrap().is_ok());
    nick.send_line("hello from nc").await.unwrap();
    let m = wanda.next_message().await.unwrap();
    assert_eq!(
        (m.body.as_str(), m.to),
        ("hello from nc", Target::Room("agora".into()))
    );
    let m = next_message(&mut greta_events).await;
    assert_eq!(
        (room_of(&m), m.body.as_str()),
        (Some("agora"), "hello from nc")
    );
    greta
        .send(&To::Room("agora".into()), "hello from gRPC", None)
        .await
        .unwrap();
    assert_eq!(wanda.next_message().await.unwrap().body, "hello from gRPC");
    assert_eq!(
        nick.next_delivery().await.unwrap().to_string(),
        "#agora greta: hello from gRPC"
    );
    wanda
        .send_room("agora", "hello from binary", "")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut greta_events).await.body,
        "hello from binary"
    );
    assert_eq!(
        nick.next_delivery().await.unwrap().to_string(),
        "#agora wanda: hello from binary"
    );
    let history = nick.request("/history 3").await.unwrap();
    assert!(history.is_ok());
}

#[tokio::test]
async fn offline_messages_wait_for_a_login_on_another_protocol() {
    let t = TestServer::start().await;
    let greta = t.user("greta").await;
    let registrar = t.client().await;
    registrar.register("olly", PASSWORD).await.unwrap();
    registrar.register("wendy", PASSWORD).await.unwrap();
    registrar.register("gil", PASSWORD).await.unwrap();

    // Sent over gRPC, received over the line protocol.
    greta
        .send(&To::User("olly".into()), "sent by gRPC", None)
        .await
        .unwrap();
    let mut olly = LineClient::connect(t.server.talk_addr()).await.unwrap();
    assert!(
        olly.request(&format!("/login olly {PASSWORD}"))
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        olly.next_delivery().await.unwrap().to_string(),
        "@greta: sent by gRPC"
    );

    // Sent over the line protocol, received over the binary protocol.
    assert!(
        olly.request("/tell wendy sent by line")
            .await
            .unwrap()
            .is_ok()
    );
    let wendy = WireClient::connect(t.server.wire_addr()).await.unwrap();
    wendy.login("wendy", PASSWORD).await.unwrap();
    let m = wendy.next_message().await.unwrap();
    assert_eq!((m.from.as_str(), m.body.as_str()), ("olly", "sent by line"));

    // Sent over the binary protocol, received over gRPC.
    wendy.send_dm("gil", "sent by binary", "").await.unwrap();
    let gil = t.session("gil").await;
    let mut events = gil.subscribe().await.unwrap();
    let m = next_message(&mut events).await;
    assert_eq!(
        (m.sender.as_str(), m.body.as_str()),
        ("wendy", "sent by binary")
    );
}
