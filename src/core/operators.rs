//! Operator rights belong to accounts, never to names.
//!
//! A right held by a name would pass to whoever registers that name next:
//! after the account is deleted, or before it was ever made. So a name given
//! with `--operator` counts only if its account exists when the server
//! starts, and grants made with [`Core::grant_operator`] or
//! `meshtalk operator NAME` (`server::grant_operator_offline`) are stored
//! by account id, and go with the
//! account when it is deleted.

use std::collections::{HashMap, HashSet};

use super::{Core, CoreError, names};
use crate::model::AccountId;
use crate::store::{AccountSummary, Store};

/// The operators at start: the stored grants, and the accounts that the
/// configured names have now.
pub(super) async fn resolve(
    store: &dyn Store,
    directory: &HashMap<String, AccountSummary>,
    configured: &[String],
) -> Result<HashSet<AccountId>, CoreError> {
    let mut operators: HashSet<AccountId> = store.operators().await?.into_iter().collect();
    for name in configured {
        match directory.get(&name.to_ascii_lowercase()) {
            Some(account) => {
                operators.insert(account.id);
            }
            None => tracing::warn!(
                operator = %name,
                "the operator {name} has no account, so nobody gets its rights: register it, \
                 then restart, or grant it with `meshtalk operator {name}`"
            ),
        }
    }
    Ok(operators)
}

impl Core {
    /// Makes the account NAME an operator, for good (until it is deleted).
    pub async fn grant_operator(&self, name: &str) -> Result<(), CoreError> {
        let key = names::account_key(name)?;
        let account = self
            .directory_read()
            .get(&key)
            .map(|a| a.id)
            .ok_or_else(|| CoreError::NoSuchUser(name.to_owned()))?;
        self.inner.store.grant_operator(account).await?;
        self.operators_write().insert(account);
        Ok(())
    }
}
