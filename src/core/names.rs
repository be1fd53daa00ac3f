//! The rules for account and room names. Names keep the case they were
//! created with, but compare by their lower-case *key*, so `Alice` and
//! `alice` are one account.

use super::CoreError;

pub const MAX_NAME_LEN: usize = 32;
pub const MAX_PASSWORD_LEN: usize = 1024;
pub const LOBBY: &str = "lobby";

/// Checks an account name and returns its comparison key.
pub fn account_key(name: &str) -> Result<String, CoreError> {
    check(name, "name")?;
    Ok(name.to_ascii_lowercase())
}

/// Checks a room name (a leading `#` is allowed and dropped) and returns the
/// bare name and its comparison key.
pub fn room_key(name: &str) -> Result<(&str, String), CoreError> {
    let bare = name.strip_prefix('#').unwrap_or(name);
    check(bare, "room name")?;
    Ok((bare, bare.to_ascii_lowercase()))
}

/// The room a session speaks in after leaving `left` while it spoke in
/// `current`: the lobby if it left that very room, else where it was.
pub fn room_after_leaving<'a>(current: &'a str, left: &str) -> &'a str {
    let left = left.strip_prefix('#').unwrap_or(left);
    if current.eq_ignore_ascii_case(left) {
        LOBBY
    } else {
        current
    }
}

pub fn check_password(password: &str) -> Result<(), CoreError> {
    if password.is_empty() {
        return Err(CoreError::invalid("password", "it is empty"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(CoreError::invalid(
            "password",
            format!("it is longer than {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    Ok(())
}

fn check(name: &str, what: &'static str) -> Result<(), CoreError> {
    if name.is_empty() {
        return Err(CoreError::invalid(what, "it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(CoreError::invalid(
            what,
            format!(
                "{} characters is over the limit of {MAX_NAME_LEN}",
                name.chars().count()
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(CoreError::invalid(
            what,
            format!("{bad:?} is not allowed (use A-Z a-z 0-9 _ . -)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert_eq!(account_key("Alice_1.x-y").unwrap(), "alice_1.x-y");
        assert!(account_key("").is_err());
        assert!(account_key(&"a".repeat(32)).is_ok());
        assert!(account_key(&"a".repeat(33)).is_err());
        assert!(account_key("bob smith").is_err());
        assert!(account_key("bøb").is_err());
        assert_eq!(room_key("#Rust").unwrap(), ("Rust", "rust".to_string()));
        assert!(room_key("#").is_err());
    }
}
