//! Accounts over gRPC: register, log in, log out, delete, list users, and
//! every way a caller can get them wrong.

mod common;

use common::{PASSWORD, TestServer};
use meshtalk::client::{ClientError, To};
use meshtalk::proto;
use tonic::Code;

fn rpc_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Code, String) {
    match result {
        Err(ClientError::Rpc(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[tokio::test]
async fn register_login_logout_delete() {
    let t = TestServer::start().await;
    let c = t.client().await;
    assert_eq!(c.register("Evelyn", PASSWORD).await.unwrap(), "Evelyn");

    // Names compare case-insensitively and keep their registered case.
    let (session, login) = c.login("eVeLyN", PASSWORD).await.unwrap();
    assert_eq!(login.name, "Evelyn");
    assert!(login.token.len() >= 32, "token carries at least 128 bits");
    let (_, second) = c.login("evelyn", PASSWORD).await.unwrap();
    assert_ne!(login.token, second.token, "every login gets a fresh token");

    let rooms = session.rooms().await.unwrap();
    assert!(
        rooms.iter().any(|r| r.name == "lobby" && r.joined),
        "every account is in lobby: {rooms:?}"
    );

    session.logout().await.unwrap();
    let (code, message) = rpc_error(session.rooms().await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("logged-out"), "{message}");

    let (session, _) = c.login("evelyn", PASSWORD).await.unwrap();
    let (code, _) = rpc_error(
        session
            .accounts()
            .delete_account(session.request(proto::DeleteAccountRequest {
                password: "wrong".into(),
            }))
            .await
            .map_err(ClientError::from),
    );
    assert_eq!(code, Code::PermissionDenied, "deleting needs the password");
    session
        .accounts()
        .delete_account(session.request(proto::DeleteAccountRequest {
            password: PASSWORD.into(),
        }))
        .await
        .unwrap();
    assert_eq!(rpc_error(session.rooms().await).0, Code::Unauthenticated);
    assert_eq!(
        rpc_error(c.login("evelyn", PASSWORD).await).0,
        Code::Unauthenticated
    );
    // The name is free again.
    c.register("evelyn", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn bad_names_passwords_and_duplicates_are_refused() {
    let t = TestServer::start().await;
    let c = t.client().await;
    for (name, why) in [
        ("", "empty"),
        ("bob smith", "not allowed"),
        ("bøb", "not allowed"),
        (&"a".repeat(33), "33 characters"),
    ] {
        let (code, message) = rpc_error(c.register(name, PASSWORD).await);
        assert_eq!(code, Code::InvalidArgument, "{name:?}");
        assert!(message.contains(why), "{name:?}: {message}");
    }
    c.register(&"a".repeat(32), PASSWORD).await.unwrap();
    assert_eq!(
        rpc_error(c.register("x", "").await).0,
        Code::InvalidArgument
    );

    c.register("Bob", PASSWORD).await.unwrap();
    let (code, message) = rpc_error(c.register("bOB", PASSWORD).await);
    assert_eq!(code, Code::AlreadyExists);
    assert!(message.contains("already taken"), "{message}");

    let (code, message) = rpc_error(c.login("bob", "wrong password").await);
    assert_eq!(code, Code::Unauthenticated);
    assert_eq!(message, "wrong name or password");
    assert_eq!(
        rpc_error(c.login("nobody", PASSWORD).await).1,
        "wrong name or password",
        "an unknown name looks like a wrong password"
    );
}

#[tokio::test]
async fn missing_garbage_and_logged_out_tokens_are_unauthenticated() {
    let t = TestServer::start().await;
    let c = t.client().await;
    let (code, message) = rpc_error(c.rooms().await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("missing authorization"), "{message}");

    let garbage = c.with_token("not-a-token").unwrap();
    let (code, message) = rpc_error(garbage.rooms().await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("malformed token"), "{message}");

    let unknown = c.with_token(&"ab".repeat(32)).unwrap();
    assert_eq!(rpc_error(unknown.rooms().await).0, Code::Unauthenticated);

    let mut bad_scheme = c.chat();
    let mut request = tonic::Request::new(proto::ListRoomsRequest {});
    request
        .metadata_mut()
        .insert("authorization", "Basic Ym9iOnB3".parse().unwrap());
    let status = bad_scheme.list_rooms(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("Bearer"), "{}", status.message());

    let alice = t.user("alice").await;
    alice.logout().await.unwrap();
    let (code, message) = rpc_error(alice.send(&To::Room("lobby".into()), "hi", None).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("logged-out"), "{message}");
}

#[tokio::test]
async fn list_users_matches_globs_with_online_state() {
    let t = TestServer::start().await;
    let eve = t.user("eve").await;
    t.user("Evan").await;
    t.user("bob").await;
    t.user("rob").await;
    t.user("robert").await;

    let names = |users: Vec<proto::User>| users.into_iter().map(|u| u.name).collect::<Vec<_>>();
    assert_eq!(names(eve.users("ev*").await.unwrap()), ["Evan", "eve"]);
    assert_eq!(names(eve.users("EV*").await.unwrap()), ["Evan", "eve"]);
    assert_eq!(names(eve.users("?ob").await.unwrap()), ["bob", "rob"]);
    assert_eq!(eve.users("*").await.unwrap().len(), 5);
    assert_eq!(eve.users("").await.unwrap().len(), 5, "empty means *");
    assert!(eve.users("zz*").await.unwrap().is_empty());
    assert_eq!(
        rpc_error(eve.users(&"*".repeat(65)).await).0,
        Code::InvalidArgument
    );

    // Online means a live stream.
    assert!(eve.users("eve").await.unwrap().iter().all(|u| !u.online));
    let _stream = eve.subscribe().await.unwrap();
    let users = eve.users("ev*").await.unwrap();
    let eve_row = users.iter().find(|u| u.name == "eve").unwrap();
    assert!(eve_row.online);
    assert_eq!(eve_row.node, "test-node");
    assert!(!users.iter().find(|u| u.name == "Evan").unwrap().online);
}

#[tokio::test]
async fn a_login_past_the_session_cap_ends_the_oldest_session() {
    let t = TestServer::start().await;
    let c = t.client().await;
    c.register("busy", PASSWORD).await.unwrap();
    let (oldest, _) = c.login("busy", PASSWORD).await.unwrap();
    let mut stream = oldest.subscribe().await.unwrap();
    let (second, _) = c.login("busy", PASSWORD).await.unwrap();
    for _ in 0..63 {
        c.login("busy", PASSWORD).await.unwrap();
    }
    let (code, message) = rpc_error(oldest.rooms().await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("logged-out"), "{message}");
    let ending = stream.message().await.unwrap_err();
    assert_eq!(ending.code(), Code::Unauthenticated, "{ending:?}");
    second.rooms().await.unwrap();
}
