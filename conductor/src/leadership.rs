//! Exactly one acting conductor per store.
//!
//! Before a conductor opens its store, connects to the broker or listens for the API, it
//! takes the store's leadership: with the SQLite store, an exclusive `flock` on
//! `tandem.lock` beside the database, held by the kernel for the life of the process
//! (released when it exits, however it dies). A second conductor started on the same
//! data directory waits as a standby, says so once, and neither reads the store nor
//! sends anything until the first one is gone.
//!
//! Each acquisition takes the next *term* from the store (a fencing number, logged).
//!
//! With the shared PostgreSQL store the rule is a lease ([`acquire_lease`]): a leader
//! row with an expiry on the database's clock, taken with the next term in one
//! transaction and renewed four times per lease by a thread of its own. A standby
//! takes it once it has expired: after the acting conductor's process died or froze,
//! within about a lease. Every write transaction checks that its term is still the
//! store's, so a deposed conductor's write fails instead of landing; and a conductor
//! that cannot renew in time (frozen, cut off, or overtaken) stops acting on its own
//! clock, before the database's lease runs out.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

/// How often a standby tries again.
const STANDBY_RETRY: Duration = Duration::from_millis(500);

/// The store's leadership, held until dropped.
pub enum Leadership {
    /// The SQLite store's lock file.
    Lock { _lock: Flock<File>, path: PathBuf },
    /// The shared store's lease, kept by its own thread.
    Lease(LeaseKeeper),
}

impl Leadership {
    /// What the log says of it.
    pub fn describe(&self) -> String {
        match self {
            Leadership::Lock { path, .. } => format!("lock {}", path.display()),
            Leadership::Lease(k) => format!("lease of term {} as {}", k.term, k.holder),
        }
    }

    /// Whether the leadership was lost while acting (the conductor must stop).
    pub fn lost(&self) -> bool {
        match self {
            Leadership::Lock { .. } => false,
            Leadership::Lease(k) => k.lost.load(Ordering::SeqCst),
        }
    }
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
                return Ok(Some(Leadership::Lock { _lock: lock, path }));
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

/// Keeps a lease: renews it, and says when it was lost.
pub struct LeaseKeeper {
    pub term: u64,
    holder: String,
    lost: Arc<AtomicBool>,
    /// Set when the conductor stops: the keeper gives the lease up.
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Takes the shared store's lease as `holder`, standing by while another conductor
/// holds it; `None` when `shutdown` came first. The lease is then renewed until the
/// returned keeper is dropped; when it cannot be, `shutdown` is cancelled and
/// [`Leadership::lost`] says so.
pub async fn acquire_lease(
    url: &str,
    lease: Duration,
    holder: String,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Leadership>> {
    use crate::store::postgres::Lease;
    let mut said: Option<String> = None;
    // The lease's connection, kept while standing by (made again after an error).
    let mut held: Option<Lease> = None;
    let (mut conn, term) = loop {
        let (url, name, kept) = (url.to_owned(), holder.clone(), held.take());
        let tried = tokio::task::spawn_blocking(move || {
            let mut conn = match kept {
                Some(conn) => conn,
                None => Lease::connect(&url)?,
            };
            let taken = conn.try_take(&name, lease)?;
            Ok::<_, crate::store::StoreError>((conn, taken))
        })
        .await?;
        match tried {
            Ok((conn, Ok(term))) => break (conn, term),
            Ok((conn, Err(acting))) => {
                held = Some(conn);
                let now = acting.to_string();
                if said.as_deref() != Some(&now) {
                    tracing::warn!(
                        acting = %now,
                        "standby: another conductor holds the store's lease; this one reads \
                         nothing, sends nothing and serves nothing until it expires"
                    );
                    said = Some(now);
                }
            }
            Err(e) => tracing::warn!("standby: cannot reach the store to take its lease: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(LEASE_RETRY) => {}
        }
    };
    if said.is_some() {
        tracing::warn!(term, "the lease expired: this conductor takes over");
    }
    let lost = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    // Counted from before the request that took the lease, and then from before each
    // renewal that succeeded: the database's expiry is always later than this.
    let deadline = Arc::new(std::sync::Mutex::new(std::time::Instant::now() + lease));
    let give_up = {
        let (lost, shutdown) = (lost.clone(), shutdown.clone());
        move |why: &str| {
            if !lost.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    term,
                    "this conductor lost the store's lease ({why}): it stops acting"
                );
            }
            shutdown.cancel();
        }
    };
    let thread = {
        let (done, deadline, give_up) = (done.clone(), deadline.clone(), give_up.clone());
        std::thread::Builder::new()
            .name("tandem-lease".into())
            .spawn(move || loop {
                std::thread::park_timeout(lease / 4);
                if done.load(Ordering::SeqCst) {
                    if let Err(e) = conn.release(term) {
                        tracing::warn!("could not give the lease up: {e}");
                    }
                    return;
                }
                let asked = std::time::Instant::now();
                match conn.renew(term, lease) {
                    Ok(true) => *deadline.lock().expect("poisoned") = asked + lease,
                    Ok(false) => {
                        give_up("it expired and another term may hold it");
                        return;
                    }
                    Err(e) => tracing::warn!("could not renew the lease (trying again): {e}"),
                }
            })?
    };
    // A renewal that hangs (the database unreachable) must not keep this conductor
    // acting past its lease: the deadline is watched apart from the renewals.
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                if std::time::Instant::now() >= *deadline.lock().expect("poisoned") {
                    give_up("it could not be renewed in time");
                    return;
                }
            }
        });
    }
    Ok(Some(Leadership::Lease(LeaseKeeper {
        term,
        holder,
        lost,
        done,
        thread: Some(thread),
    })))
}

/// How often a standby asks for the lease.
const LEASE_RETRY: Duration = Duration::from_millis(200);

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
