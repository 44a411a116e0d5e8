//! API tokens: who may read and who may change. A token is 32 random bytes (written
//! `tdm_` + hex); the store keeps only its SHA-256 (a random 256-bit secret needs no
//! slow hash: there is nothing to guess), with a name (what the audit log shows) and a
//! role.
//!
//! On its first start the conductor makes one operator token, `admin`, and writes it to
//! `data_dir/admin.token` (0600), so that the operator on the conductor's host can act
//! at once; more are made with `tandem-conductor token create NAME --role ROLE`.

use std::path::Path;

use sha2::{Digest, Sha256};

pub use crate::access::{Caller, Role, TokenRecord};
use crate::store::{Store, StoreError};

/// The hash a token is stored and looked up by.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

fn fresh() -> String {
    format!("tdm_{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// Names are what the audit log shows: short, plain.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    ok.then_some(())
        .ok_or_else(|| format!("token name {name:?} must be 1 to 64 of [A-Za-z0-9-_.@]"))
}

/// Makes a token named `name` with `role`; returns it (shown once, never stored).
pub fn create(store: &dyn Store, name: &str, role: Role) -> Result<String, StoreError> {
    check_name(name).map_err(StoreError::Conflict)?;
    let token = fresh();
    store.add_token(name, role, &hash(&token))?;
    Ok(token)
}

/// Who holds `token`, if anyone.
pub fn caller(store: &dyn Store, token: &str) -> Result<Option<Caller>, StoreError> {
    store.token_by_hash(&hash(token))
}

/// On a store with no token at all, makes the `admin` operator token and writes it to
/// `data_dir/admin.token` (0600). Returns the file when it made one.
pub fn bootstrap(store: &dyn Store, data_dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    if !store.tokens()?.is_empty() {
        return Ok(None);
    }
    let path = data_dir.join("admin.token");
    let token = fresh();
    tandem_transport::keyfile::load_or_make(&path, || Ok(format!("{token}\n").into_bytes()))
        .map_err(|e| anyhow::anyhow!(e))?;
    // The file may hold an older token (a store rebuilt beside it): that one is trusted.
    let held = std::fs::read_to_string(&path)?;
    store.add_token("admin", Role::Operator, &hash(&held))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_names() {
        assert_eq!(Role::parse("reader"), Ok(Role::Reader));
        assert!(Role::parse("admin").is_err());
        assert!(!Role::Reader.may_change());
        assert!(Role::Operator.may_change());
        assert!(check_name("ci-bot@ops").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        let t = fresh();
        assert!(t.starts_with("tdm_") && t.len() == 68);
        assert_eq!(hash(&t), hash(&format!("{t}\n")));
        assert_ne!(hash(&t), hash(&fresh()));
    }
}
