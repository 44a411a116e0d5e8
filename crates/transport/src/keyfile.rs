//! Key files: made once, private (0600), written atomically, and kept.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::signing::SigningKey;

/// The bytes in `path`, or new ones from `make`, written there first (0600,
/// atomically: a crash leaves either no file or the whole one). When two processes
/// make it at once (the agent starting while `tandem-agent public-key` runs), one file
/// wins and both return its bytes: each writes a file of its own and links it into
/// place, which fails for the second, who then reads the first's.
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
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path)
            .map_err(|e| format!("read {} (made by another process): {e}", path.display())),
        Err(e) => Err(format!("write {}: {e}", path.display())),
    }
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
    fn keys_made_at_once_by_two_makers_are_one_key() {
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.key");
            let made: Vec<Vec<u8>> = std::thread::scope(|s| {
                let makers: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| super::load_or_make(&path, super::SigningKey::generate).unwrap())
                    })
                    .collect();
                makers.into_iter().map(|m| m.join().unwrap()).collect()
            });
            assert!(made.windows(2).all(|w| w[0] == w[1]), "two keys were made");
            assert_eq!(std::fs::read(&path).unwrap(), made[0]);
            // Nothing left behind but the key.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

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
