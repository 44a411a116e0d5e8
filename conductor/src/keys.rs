//! The conductor's own secrets on disk, in its data directory, each made once (0600)
//! and kept: `secret.key` (seed tokens and failsafe keys are derived from it) and
//! `conductor.key` (the Ed25519 key every command is signed with; agents trust its
//! public half, printed by `tandem-conductor public-key`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tandem_transport::signing::SigningKey;

/// The 32-byte secret in `data_dir/secret.key`.
pub fn load_secret(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = data_dir.join("secret.key");
    let bytes = load_or_make(&path, || Ok(rand::random::<[u8; 32]>().to_vec()))?;
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
    let bytes = load_or_make(&path, || {
        SigningKey::generate().map_err(|e| anyhow::anyhow!(e))
    })?;
    SigningKey::from_pkcs8(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; restore it from a backup (agents trust its public key)",
            path.display()
        )
    })
}

/// The bytes in `path`, or new ones from `make` written there first (0600, atomically).
fn load_or_make(
    path: &Path,
    make: impl FnOnce() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    if let Ok(bytes) = std::fs::read(path) {
        return Ok(bytes);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
    }
    let bytes = make()?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("create {}: {e}", tmp.display()))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(bytes)
}
