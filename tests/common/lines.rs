//! Line-protocol steps the multi-node tests share.

use std::time::Duration;

use meshtalk::client::line::{LineClient, Reply};
use meshtalk::codec::line::ServerLine;

pub async fn request(c: &mut LineClient, line: &str) -> Reply {
    c.request(line).await.expect("request")
}

/// The next room line or DM, within 10 s.
pub async fn next(c: &mut LineClient) -> ServerLine {
    tokio::time::timeout(Duration::from_secs(10), c.next_delivery())
        .await
        .expect("a delivery in time")
        .expect("delivery")
}

/// Nothing more arrives for a while: catches repeats.
pub async fn quiet(c: &mut LineClient) {
    let extra = tokio::time::timeout(Duration::from_millis(500), c.next_delivery()).await;
    assert!(extra.is_err(), "unexpected delivery: {extra:?}");
}

/// Repeats `line` until its reply satisfies `done`, and returns that
/// reply; panics after 15 s, saying it was waiting until `what`.
pub async fn until(
    c: &mut LineClient,
    line: &str,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = request(c, line).await;
        if done(&reply) {
            return reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}; last reply {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn direct(from: &str, text: &str) -> ServerLine {
    ServerLine::Direct {
        from: from.into(),
        text: text.into(),
    }
}
