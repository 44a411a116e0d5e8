//! The conductor's own secrets on disk, in its data directory, each made once (0600)
//! and kept: `secret.key` (seed tokens and failsafe keys are derived from it) and
//! `conductor.key` (the Ed25519 key every command is signed with; agents trust its
//! public half, printed by `tandem-conductor public-key`).

use std::path::Path;

use tandem_transport::keyfile::load_or_make;
use tandem_transport::signing::SigningKey;

/// The 32-byte secret in `data_dir/secret.key`.
pub fn load_secret(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = data_dir.join("secret.key");
    let bytes = load_or_make(&path, || Ok(rand::random::<[u8; 32]>().to_vec()))
        .map_err(|e| anyhow::anyhow!(e))?;
    bytes.try_into().map_err(|_| {
        anyhow::anyhow!(
            "{} is not 32 bytes; remove it to make a new one",
            path.display()
        )
    })
}

/// The command-signing key in `data_dir/conductor.key`.
pub fn signing_key(data_dir: &Path) -> anyhow::Result<SigningKey> {
    let path = data_dir.join("conductor.key");
    SigningKey::load_or_generate(&path)
        .map_err(|e| anyhow::anyhow!("{e}; restore it from a backup (agents trust its public key)"))
}
