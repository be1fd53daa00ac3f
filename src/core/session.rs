//! What a session carries from one request to the next, kept in the core so
//! that doors only translate: the room it speaks in, and the pairing of a
//! log-in with its live inbox.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{Core, CoreError, Identity, Inbox, Login, names};
use crate::model::{AccountId, SessionId};

/// The room each session speaks in, for sessions that joined one since
/// logging in; every other session speaks in the lobby.
#[derive(Default)]
pub(super) struct Places {
    rooms: HashMap<SessionId, (AccountId, String)>,
    /// How many times places were forgotten: a join that began before a
    /// session ended must not give it a place back.
    forgets: u64,
}

impl Core {
    /// Logs in and attaches the new session's live inbox. A session whose
    /// inbox cannot be attached is logged out again, so a failed log-in
    /// leaves no session behind.
    pub async fn login_attached(
        &self,
        name: &str,
        password: &str,
        from: Option<IpAddr>,
    ) -> Result<(Login, Inbox), CoreError> {
        let login = self.login(name, password, from).await?;
        match self.attach(&login.identity).await {
            Ok(inbox) => Ok((login, inbox)),
            Err(e) => {
                let _ = self.logout(&login.identity).await;
                Err(e)
            }
        }
    }

    /// The room `who` speaks in: the last one it joined, or the lobby.
    pub fn current_room(&self, who: &Identity) -> String {
        match self.places().rooms.get(&who.session) {
            Some((_, room)) => room.clone(),
            None => names::LOBBY.to_owned(),
        }
    }

    /// Where places stand before a join: pass it to [`Core::enter_room`].
    pub(super) fn places_seen(&self) -> u64 {
        self.places().forgets
    }

    /// Makes `room`, just joined, the one `who` speaks in, unless the
    /// session ended since `seen` ([`Core::places_seen`]).
    pub(super) fn enter_room(&self, who: &Identity, room: &str, seen: u64) {
        let mut places = self.places();
        if places.forgets != seen && !self.is_live(who) {
            return;
        }
        if room.eq_ignore_ascii_case(names::LOBBY) {
            places.rooms.remove(&who.session);
        } else {
            let place = (who.account, room.to_owned());
            places.rooms.insert(who.session, place);
        }
    }

    /// After `who` left `room`: if it spoke there, it speaks in the lobby.
    pub(super) fn left_room(&self, who: &Identity, room: &str) {
        let mut places = self.places();
        if let Some((_, current)) = places.rooms.get(&who.session)
            && names::room_after_leaving(current, room) == names::LOBBY
        {
            places.rooms.remove(&who.session);
        }
    }

    /// Forgets the places of sessions that ended.
    pub(super) fn forget_places(&self, ended: impl Fn(AccountId, SessionId) -> bool) {
        let mut places = self.places();
        places.forgets += 1;
        places
            .rooms
            .retain(|&session, (account, _)| !ended(*account, session));
    }

    /// Whether `who`'s session is still logged in.
    fn is_live(&self, who: &Identity) -> bool {
        self.sessions().values().any(|s| s.session == who.session)
    }

    fn places(&self) -> std::sync::MutexGuard<'_, Places> {
        self.inner.places.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{CoreConfig, Limits};
    use super::*;
    use crate::store::SqliteStore;

    async fn core(dir: &tempfile::TempDir) -> Core {
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let config = CoreConfig {
            node: "n".into(),
            operators: vec![],
            limits: Limits::default(),
        };
        Core::open(Arc::new(store), config).await.unwrap()
    }

    fn held(core: &Core) -> usize {
        core.places().rooms.len()
    }

    /// A place lives as long as its session: logging out, being evicted or
    /// deleting the account leaves nothing behind, however often repeated.
    #[tokio::test]
    async fn places_end_with_their_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(&dir).await;
        core.register("ann", "pw-ann-1", None).await.unwrap();
        for _ in 0..3 {
            let (login, _inbox) = core.login_attached("ann", "pw-ann-1", None).await.unwrap();
            core.join_room(&login.identity, "den").await.unwrap();
            assert_eq!(core.current_room(&login.identity), "den");
            assert_eq!(held(&core), 1);
            core.logout(&login.identity).await.unwrap();
            assert_eq!(held(&core), 0);
        }
        let (login, _inbox) = core.login_attached("ann", "pw-ann-1", None).await.unwrap();
        core.join_room(&login.identity, "den").await.unwrap();
        core.delete_account(&login.identity, "pw-ann-1")
            .await
            .unwrap();
        assert_eq!(held(&core), 0);
    }

    /// A join whose session ended while it was being stored gives the
    /// session no place back.
    #[tokio::test]
    async fn a_join_that_outlives_its_session_leaves_no_place() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(&dir).await;
        core.register("bob", "pw-bob-1", None).await.unwrap();
        let (login, _inbox) = core.login_attached("bob", "pw-bob-1", None).await.unwrap();
        let seen = core.places_seen();
        core.logout(&login.identity).await.unwrap();
        core.enter_room(&login.identity, "den", seen);
        assert_eq!(held(&core), 0);
        // Unchanged places: the join stands.
        let (login, _inbox) = core.login_attached("bob", "pw-bob-1", None).await.unwrap();
        core.enter_room(&login.identity, "den", core.places_seen());
        assert_eq!(held(&core), 1);
    }
}
