//! Operator rights belong to accounts, never to names.
//!
//! A right held by a name would pass to whoever registers that name next:
//! after the account is deleted, or before it was ever made. So a name given
//! with `--operator` counts only if its account exists when the server
//! starts, and grants made with [`Core::grant_operator`] or
//! `meshtalk operator NAME` are stored by account id, and go with the
//! account when it is deleted.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{Core, CoreError, names};
use crate::store::{AccountId, AccountSummary, DataDirLock, SqliteStore, Store};

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

/// Grants NAME operator rights in the database at `db_path`, whose server
/// must be stopped (its lock says so otherwise); returns the name as
/// registered. A running server reads grants when it starts.
pub async fn grant_operator_offline(db_path: &Path, name: &str) -> Result<String, CoreError> {
    let key = names::account_key(name)?;
    let _lock = DataDirLock::acquire(db_path)?;
    let store = SqliteStore::open(db_path)?;
    let granted = async {
        let account = store
            .account_by_key(&key)
            .await?
            .ok_or_else(|| CoreError::NoSuchUser(name.to_owned()))?;
        store.grant_operator(account.id).await?;
        Ok(account.name)
    }
    .await;
    store.close().await;
    granted
}
