//! What a line or binary connection knows of its session, and the moves
//! between logged out and logged in, which both doors make the same way.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::pace::{Pace, Pacer};
use crate::core::{Core, CoreError, Identity, Inbox};

/// A connection's place in a session: who is logged in on it, its live
/// inbox, when it must have logged in by, and its sending allowance.
pub struct Seat {
    core: Core,
    pub who: Option<Identity>,
    pub inbox: Option<Inbox>,
    /// When a connection that is not logged in is closed.
    pub login_by: Option<Instant>,
    /// The connection's, not the login's: logging in again earns no new
    /// burst. `None` when sends are not limited.
    pacer: Option<Pacer>,
    login_timeout: Duration,
}

impl Seat {
    /// A connection just accepted: nobody logged in, the deadline running.
    pub fn new(core: &Core, login_timeout: Duration) -> Seat {
        Seat {
            pacer: core.limits().send_rate.map(Pacer::new),
            core: core.clone(),
            who: None,
            inbox: None,
            login_by: Some(Instant::now() + login_timeout),
            login_timeout,
        }
    }

    /// Logs in with the new session's inbox attached; the name as
    /// registered.
    pub async fn log_in(
        &mut self,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<String, CoreError> {
        let (login, inbox) = self.core.login_attached(name, password, Some(from)).await?;
        self.inbox = Some(inbox);
        self.login_by = None;
        let name = login.identity.name.clone();
        self.who = Some(login.identity);
        Ok(name)
    }

    /// Forgets the session (logged out or deleted): pushes stop and the
    /// login deadline runs again.
    pub fn vacate(&mut self) {
        self.inbox = None;
        self.who = None;
        self.login_by = Some(Instant::now() + self.login_timeout);
    }

    /// The connection is closing: its session ends with it.
    pub async fn close(&mut self) {
        self.inbox = None;
        if let Some(who) = self.who.take() {
            let _ = self.core.logout(&who).await;
        }
    }

    /// Whether a send may go now, must wait, or floods.
    pub fn pace(&mut self) -> Pace {
        match &mut self.pacer {
            Some(pacer) => pacer.admit(std::time::Instant::now()),
            None => Pace::Go,
        }
    }
}
