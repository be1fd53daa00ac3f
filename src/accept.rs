//! Accepting TCP connections, shared by the client doors and the mesh: a
//! failed accept (out of file descriptors and the like) waits longer each
//! time instead of spinning, keeps serving, and is logged once in a while,
//! not per try.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on `listener` until `stop` resolves, handing each to
/// `take`, which must not block: it spawns whatever serves the connection.
pub async fn accept_loop(
    listener: TcpListener,
    stop: impl Future<Output = ()>,
    mut take: impl FnMut(TcpStream, SocketAddr),
) {
    let mut stop = std::pin::pin!(stop);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.succeeded();
                take(tcp, peer);
            }
            Err(e) => {
                let wait = backoff.failed(&e);
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// How long the accept loop waits after a failed accept: doubling from
/// 5 ms to 1 s while accepts keep failing, with one log line per second at
/// most (saying how many failed).
#[derive(Default)]
struct AcceptBackoff {
    wait: Duration,
    failures: u64,
    last_said: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MOST: Duration = Duration::from_secs(1);

    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.failures += 1;
        self.wait = (self.wait * 2).clamp(Self::FIRST, Self::MOST);
        if self
            .last_said
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(error = %e, failures = self.failures, "accept failed; backing off");
            self.last_said = Some(Instant::now());
            self.failures = 0;
        }
        self.wait
    }

    fn succeeded(&mut self) {
        self.wait = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_to_a_ceiling_and_a_success_resets_it() {
        let mut backoff = AcceptBackoff::default();
        let e = std::io::Error::other("no descriptors");
        assert_eq!(backoff.failed(&e), AcceptBackoff::FIRST);
        assert_eq!(backoff.failed(&e), AcceptBackoff::FIRST * 2);
        for _ in 0..20 {
            backoff.failed(&e);
        }
        assert_eq!(backoff.failed(&e), AcceptBackoff::MOST);
        backoff.succeeded();
        assert_eq!(backoff.failed(&e), AcceptBackoff::FIRST);
    }
}
