//! Operators' powers over other people's accounts: a kick ends every
//! session of an account, with a notice saying who and why; a suspension
//! does the same and refuses its log-ins until an operator restores it.
//!
//! An account lives in one store: its home node's, shared with that node's
//! siblings. An operator anywhere in the mesh acts through the home node,
//! which records the change, ends the sessions it holds and tells its
//! siblings to end theirs; a peer that proved the mesh secret is trusted to
//! have checked that its operator is one, as it is trusted to relay speech.

use std::future::Future;

use super::directory::Recipient;
use super::{Closed, Core, CoreError, Identity, names, now_ms};
use crate::model::{AccountId, Moderated, Moderation, ModerationRequest};
use crate::store::Suspension;

/// Longest reason an operator may give, in bytes.
pub const MAX_REASON: usize = 300;

impl Core {
    /// Operators: kicks, suspends or restores the account `name`, wherever
    /// in the mesh it lives. `reason` is shown to its sessions as they end.
    pub fn moderate(
        &self,
        who: &Identity,
        action: Moderation,
        name: &str,
        reason: &str,
    ) -> impl Future<Output = Result<Moderated, CoreError>> + Send + use<> {
        let target = (|| -> Result<Recipient, CoreError> {
            self.require_operator(who)?;
            check_reason(reason)?;
            self.recipient(name)
        })();
        let (core, by, reason) = (self.clone(), who.name.clone(), reason.to_owned());
        let own = who.account;
        async move {
            let request = |name| ModerationRequest {
                action,
                name,
                by,
                reason,
            };
            match target? {
                Recipient::Local(account, _) if account == own && action != Moderation::Restore => {
                    Err(CoreError::invalid(
                        "name",
                        format!("you cannot {} yourself", action.name()),
                    ))
                }
                Recipient::Local(account, name) => core.moderate_here(account, request(name)).await,
                Recipient::Remote(claim) => {
                    let remote = core
                        .remote()
                        .ok_or_else(|| CoreError::NoSuchUser(claim.name.clone()))?;
                    remote.moderate(claim.node, request(claim.name)).await
                }
            }
        }
    }

    /// Another node's operator acts on an account homed here: `by` is
    /// their account on `src`.
    pub async fn moderate_for_node(
        &self,
        src: &str,
        request: ModerationRequest,
    ) -> Result<Moderated, CoreError> {
        check_reason(&request.reason)?;
        names::account_key(&request.by)
            .map_err(|_| CoreError::invalid("by", "it is not a valid account name"))?;
        let no_such = || CoreError::NoSuchUser(request.name.clone());
        let key = names::account_key(&request.name).map_err(|_| no_such())?;
        let account = self
            .directory_read()
            .get(&key)
            .cloned()
            .ok_or_else(no_such)?;
        let request = ModerationRequest {
            name: account.name,
            by: self.shown_name(&request.by, src),
            ..request
        };
        self.moderate_here(account.id, request).await
    }

    /// Records the act in the store, then ends the sessions here and on
    /// the siblings.
    async fn moderate_here(
        &self,
        account: AccountId,
        request: ModerationRequest,
    ) -> Result<Moderated, CoreError> {
        let ModerationRequest {
            action,
            name,
            by,
            reason,
        } = request;
        self.check_running()?;
        let store = &self.inner.store;
        let (ended, changed) = match action {
            Moderation::Kick => (store.end_sessions(account).await?, true),
            Moderation::Suspend => {
                let suspension = Suspension {
                    by: by.clone(),
                    reason: reason.clone(),
                    since_ms: now_ms(),
                };
                (store.suspend(account, suspension).await?, true)
            }
            Moderation::Restore => (Vec::new(), store.restore(account).await?),
        };
        if action != Moderation::Restore {
            let notice = notice(action, &by, &reason);
            self.removed(account, &notice);
            if let Some(siblings) = self.siblings() {
                siblings.sessions_removed(account, &notice);
            }
        }
        tracing::info!(action = action.name(), account = %name, by = %by, reason = %reason, "moderation");
        crate::metrics::moderated(action.name());
        Ok(Moderated {
            name,
            node: self.node().to_owned(),
            sessions_ended: ended.len() as u32,
            changed,
        })
    }

    /// Ends every session of an account here: tokens stop working, live
    /// streams close with `notice`.
    pub(super) fn removed(&self, account: AccountId, notice: &str) {
        self.revoke(|a, _| a == account);
        self.inner
            .hub
            .close_account(account, Closed::Removed(notice.into()));
    }

    /// A sibling ended an account's sessions in the shared store (a kick or
    /// a suspension): end them here too.
    pub fn sessions_removed_elsewhere(&self, account: AccountId, notice: &str) {
        let notice = if check_reason(notice).is_ok() {
            notice
        } else {
            "your sessions were ended by an operator"
        };
        self.removed(account, notice);
    }
}

/// What the account's sessions are told as they end.
fn notice(action: Moderation, by: &str, reason: &str) -> String {
    let what = match action {
        Moderation::Suspend => "your account was suspended",
        Moderation::Kick | Moderation::Restore => "you were kicked",
    };
    if reason.is_empty() {
        format!("{what} by {by}")
    } else {
        format!("{what} by {by}: {reason}")
    }
}

/// A reason travels into other users' lines and frames: bounded, one line,
/// and read as written (no control characters, no line or paragraph
/// separators, no marks that reorder the text around them).
fn check_reason(reason: &str) -> Result<(), CoreError> {
    if reason.len() > MAX_REASON {
        return Err(CoreError::invalid(
            "reason",
            format!("it is {} bytes; the most is {MAX_REASON}", reason.len()),
        ));
    }
    if let Some(c) = reason.chars().find(|&c| c.is_control() || reorders(c)) {
        return Err(CoreError::invalid(
            "reason",
            format!("it holds the character U+{:04X}", u32::from(c)),
        ));
    }
    Ok(())
}

/// Line and paragraph separators, and the bidirectional marks, embeddings,
/// overrides and isolates.
fn reorders(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_name_the_operator_and_the_reason() {
        assert_eq!(
            notice(Moderation::Kick, "root", "spam"),
            "you were kicked by root: spam"
        );
        assert_eq!(
            notice(Moderation::Suspend, "root@a", ""),
            "your account was suspended by root@a"
        );
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        assert!(check_reason("flooding #lobby").is_ok());
        assert!(check_reason("").is_ok());
        assert!(check_reason("a\r\n+OK forged").is_err());
        assert!(check_reason("spam \u{202E}live").is_err());
        assert!(check_reason("one\u{2028}two").is_err());
        assert!(check_reason("флуд, 洪水, שטף").is_ok());
        assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
    }
}
