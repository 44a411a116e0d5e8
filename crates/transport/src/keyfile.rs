//! Key files: made once, private (0600), written atomically, and kept.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::signing::SigningKey;

/// The bytes in `path`, or new ones from `make`, written there first (0600,
/// atomically: a crash leaves either no file or the whole one).
pub fn load_or_make(
    path: &Path,
    make: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("read {}: {e}", path.display()))
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let bytes = make()?;
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(bytes)
}

impl SigningKey {
    /// The key in `path` (PKCS#8), made there at first use.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, String> {
        let bytes = load_or_make(path, SigningKey::generate)?;
        SigningKey::from_pkcs8(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.key");
        let first = super::SigningKey::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = super::SigningKey::load_or_generate(&path).unwrap();
        assert_eq!(first.public_hex(), again.public_hex());
        std::fs::write(&path, b"junk").unwrap();
        let e = super::SigningKey::load_or_generate(&path).unwrap_err();
        assert!(e.contains("agent.key"), "{e}");
    }
}
