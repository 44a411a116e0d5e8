//! Exactly one acting conductor per store.
//!
//! Before a conductor opens its store, connects to the broker or listens for the API, it
//! takes the store's leadership: with the SQLite store, an exclusive `flock` on
//! `tandem.lock` beside the database, held by the kernel for the life of the process
//! (released when it exits, however it dies). A second conductor started on the same
//! data directory waits as a standby, says so once, and neither reads the store nor
//! sends anything until the first one is gone.
//!
//! Each acquisition takes the next *term* from the store (a fencing number, logged). With a shared store (PostgreSQL) the same rule becomes a leader row
//! with an expiry, renewed by the acting conductor, and every write transaction checks
//! that the term it started under is still the store's: a deposed conductor's write
//! fails instead of landing. The flock makes that check unnecessary here: two processes
//! never hold the SQLite store at once.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

/// How often a standby tries again.
const STANDBY_RETRY: Duration = Duration::from_millis(500);

/// The store's leadership, held until dropped.
pub struct Leadership {
    _lock: Flock<File>,
    pub path: PathBuf,
}

/// Takes the leadership of the store in `data_dir`, waiting as a standby while another
/// conductor holds it; `None` when `shutdown` came first.
pub async fn acquire(
    data_dir: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Leadership>> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        anyhow::anyhow!(
            "field `data_dir`: cannot create {}: {e}",
            data_dir.display()
        )
    })?;
    let path = data_dir.join("tandem.lock");
    let mut said = false;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("open the store lock {}: {e}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if said {
                    tracing::warn!(lock = %path.display(), "the acting conductor is gone: this one takes over");
                }
                return Ok(Some(Leadership { _lock: lock, path }));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                if !said {
                    tracing::warn!(
                        lock = %path.display(),
                        "standby: another conductor acts on this store; this one reads nothing, \
                         sends nothing and serves nothing until it is gone"
                    );
                    said = true;
                }
            }
            Err((_, e)) => {
                anyhow::bail!("lock the store {}: {e}", path.display())
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(STANDBY_RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let first = acquire(dir.path(), &stop).await.unwrap().unwrap();
        let second = {
            let path = dir.path().to_owned();
            let stop = stop.clone();
            tokio::spawn(async move { acquire(&path, &stop).await })
        };
        tokio::time::sleep(STANDBY_RETRY * 3).await;
        assert!(!second.is_finished(), "two conductors held the store");
        drop(first);
        let second = tokio::time::timeout(STANDBY_RETRY * 4, second)
            .await
            .expect("the standby took over")
            .unwrap()
            .unwrap();
        assert!(second.is_some());

        // A standby stops when told to.
        let third = {
            let path = dir.path().to_owned();
            let stop = stop.clone();
            tokio::spawn(async move { acquire(&path, &stop).await })
        };
        stop.cancel();
        assert!(third.await.unwrap().unwrap().is_none());
    }
}
