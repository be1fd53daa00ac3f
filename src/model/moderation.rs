//! What an operator may do to an account, as every door and the mesh name
//! it.

/// What an operator does to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moderation {
    /// End every session; the account may log in again.
    Kick,
    /// End every session and refuse log-ins until restored.
    Suspend,
    /// Lift a suspension.
    Restore,
}

impl Moderation {
    /// The act's one name: the line command, the mesh's `action`.
    pub fn name(self) -> &'static str {
        match self {
            Moderation::Kick => "kick",
            Moderation::Suspend => "suspend",
            Moderation::Restore => "restore",
        }
    }

    pub fn from_name(name: &str) -> Option<Moderation> {
        [Moderation::Kick, Moderation::Suspend, Moderation::Restore]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

/// An operator's act on one account: what, to whom, by whom and why. It
/// travels as it is from the operator's node to the account's home node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModerationRequest {
    pub action: Moderation,
    /// The account, by its name on its home node.
    pub name: String,
    /// The operator, by their account's name.
    pub by: String,
    /// Shown to the account's sessions as they end; may be empty.
    pub reason: String,
}

/// What a moderation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moderated {
    /// The account, as its home node names it.
    pub name: String,
    /// Its home node.
    pub node: String,
    /// Sessions ended there (not counting its siblings').
    pub sessions_ended: u32,
    /// False when a restore found nothing to lift.
    pub changed: bool,
}

impl Moderated {
    /// What was done, in a sentence for the operator.
    pub fn summary(&self, action: Moderation) -> String {
        let sessions = match self.sessions_ended {
            1 => "1 session ended".to_owned(),
            n => format!("{n} sessions ended"),
        };
        let who = format!("{} on {}", self.name, self.node);
        match action {
            Moderation::Restore if !self.changed => format!("{who} was not suspended"),
            Moderation::Restore => format!("restored {who}"),
            Moderation::Kick => format!("kicked {who} ({sessions})"),
            Moderation::Suspend => format!("suspended {who} ({sessions})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_back_from_their_names() {
        for action in [Moderation::Kick, Moderation::Suspend, Moderation::Restore] {
            assert_eq!(Moderation::from_name(action.name()), Some(action));
        }
        assert_eq!(Moderation::from_name("ban"), None);
    }

    #[test]
    fn summaries_count_sessions_and_name_the_node() {
        let done = Moderated {
            name: "bob".into(),
            node: "b".into(),
            sessions_ended: 1,
            changed: true,
        };
        assert_eq!(
            done.summary(Moderation::Kick),
            "kicked bob on b (1 session ended)"
        );
        let none = Moderated {
            sessions_ended: 0,
            changed: false,
            ..done
        };
        assert_eq!(
            none.summary(Moderation::Suspend),
            "suspended bob on b (0 sessions ended)"
        );
        assert_eq!(
            none.summary(Moderation::Restore),
            "bob on b was not suspended"
        );
    }
}
