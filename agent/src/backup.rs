//! Backups, restores and seeding, for any engine: the engine supplies the primitives
//! (a copy stream, unpack, prepare, install); this module chains them, with the rule
//! that nothing touches the data directory until a complete, verified, prepared copy
//! is ready beside it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;

use tandem_proto::{
    BackupId, BackupInfo, BackupKind, BackupRequest, CommandError, ErrorKind, Position, Timestamp,
};

use crate::backup_store::BackupStore;
use crate::engine::{Engine, EngineError};
use crate::operations::{Phase, Progress};
use crate::Agent;

/// Removes staging directories and files whichever way an operation ends.
pub(crate) struct Scratch(Vec<PathBuf>);

impl Scratch {
    pub fn new() -> Self {
        Scratch(Vec::new())
    }
    /// Registers `path` for removal and clears whatever an earlier attempt left there.
    pub fn add(&mut self, path: PathBuf) -> PathBuf {
        remove(&path);
        self.0.push(path.clone());
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            remove(p);
        }
    }
}

fn remove(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
    let _ = std::fs::remove_file(p);
}

impl<E: Engine> Agent<E> {
    async fn store(&self) -> Result<BackupStore, EngineError> {
        BackupStore::open(&self.settings.backup_store).await
    }

    /// A full or incremental backup, compressed with zstd, into the store.
    pub(crate) async fn take_backup(
        &self,
        request: &BackupRequest,
        progress: &Progress,
    ) -> Result<BackupInfo, CommandError> {
        let id = &request.backup_id;
        let store = self.store().await?;
        if store.exists(id).await? {
            return Err(CommandError::bad_request(format!(
                "backup {id} already exists in {}",
                store.name()
            )));
        }
        let me = &self.settings.instance_id;
        let since = match &request.kind {
            BackupKind::Full => None,
            BackupKind::Incremental { parent } => {
                let parent_info = store.info(parent, self.engine.kind()).await?;
                if &parent_info.instance != me {
                    return Err(CommandError::bad_request(format!(
                        "backup {parent} was taken on {}; an incremental must continue a \
                         backup of this server ({me})",
                        parent_info.instance
                    )));
                }
                Some(parent_info.checkpoint.ok_or_else(|| {
                    CommandError::bad_request(format!(
                        "backup {parent} has no checkpoint to continue from"
                    ))
                })?)
            }
        };
        let mut scratch = Scratch::new();
        let work = scratch.add(self.settings.engine.backup_dir.join(format!(".work-{id}")));
        progress.set_phase(Phase::Copying);
        let data_bytes = since.is_none().then(|| self.engine.copy_size());
        if let Some(bytes) = data_bytes {
            progress.bytes_total.store(bytes, Ordering::Relaxed);
        }
        // Recorded before the first byte goes to the store: if this backup does not
        // commit (it fails, is stopped, or the agent dies), what it wrote is removed.
        self.update_state(|s| s.unfinished_backups.push(id.clone()))?;
        let stream = self.engine.backup_stream(&work, since.as_deref()).await?;
        let output: Stdio = stream
            .output
            .try_into()
            .map_err(|e| internal(format!("hand the copy to zstd: {e}")))?;
        let mut zstd = crate::host::pipeline_stage("zstd")
            .args(["-q", "-3", "-T0", "-c"])
            .stdin(output)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| internal(format!("run zstd (is zstd installed?): {e}")))?;
        let mut compressed = zstd.stdout.take().expect("piped");
        let stored = store.put_data(id, &mut compressed, progress).await;
        // Our end of zstd's output goes first: a store that gave up must not leave zstd
        // (and mariabackup behind it) blocked on a pipe nobody reads.
        drop(compressed);
        if stored.is_err() {
            let _ = zstd.start_kill();
        }
        let end = stream.finish.await;
        let zstd_end = zstd
            .wait_with_output()
            .await
            .map_err(|e| internal(e.to_string()))?;
        // The first real cause wins, from the end of the pipeline back: a stage that
        // failed breaks the pipe of the one before it, never the other way round.
        let (size_bytes, sha256) = stored?;
        if !zstd_end.status.success() {
            return Err(EngineError::Refused(format!(
                "zstd failed while compressing the copy ({}): {}",
                zstd_end.status,
                String::from_utf8_lossy(&zstd_end.stderr).trim()
            ))
            .into());
        }
        let end = end?;
        let info = BackupInfo {
            backup_id: id.clone(),
            kind: request.kind.clone(),
            instance: me.clone(),
            engine: self.engine.kind(),
            engine_version: end.engine_version,
            position: end.position,
            size_bytes,
            sha256,
            created_at: Timestamp::now(),
            location: store.location(id),
            checkpoint: end.checkpoint,
            data_bytes,
        };
        store.commit(&info).await?;
        self.update_state(|s| s.unfinished_backups.retain(|b| b != id))?;
        progress.set_phase(Phase::Done);
        Ok(info)
    }

    /// Replaces this server's data with a backup (a full, or an incremental and the
    /// chain below it). Every link is verified before anything is unpacked, and the
    /// data directory is only swapped once the copy is prepared.
    pub(crate) async fn restore(
        &self,
        backup_id: &BackupId,
        progress: &Progress,
    ) -> Result<Position, CommandError> {
        let store = self.store().await?;
        let chain = self.chain(&store, backup_id).await?;
        let mut scratch = Scratch::new();
        let downloads = scratch.add(self.engine.staging_dir("tandem-download"));

        // Room for the copy beside the data directory (and for the downloads, from a
        // remote store), or nothing starts.
        let downloads_bytes = if store.is_local() {
            0
        } else {
            chain.iter().map(|b| b.size_bytes).sum()
        };
        let data_bytes = chain.first().and_then(|b| b.data_bytes).unwrap_or(0);
        ensure_room(
            &self.engine.staging_dir("tandem-restore"),
            data_bytes + downloads_bytes,
            &format!("restoring backup {backup_id}"),
        )?;
        progress.set_phase(Phase::Verifying);
        progress
            .bytes_total
            .store(chain.iter().map(|b| b.size_bytes).sum(), Ordering::Relaxed);
        let mut files = Vec::new();
        for info in &chain {
            files.push(store.fetch_verified(info, &downloads, progress).await?);
        }

        progress.set_phase(Phase::Unpacking);
        progress.bytes_done.store(0, Ordering::Relaxed);
        progress.bytes_total.store(0, Ordering::Relaxed);
        let full = scratch.add(self.engine.staging_dir("tandem-restore"));
        let mut incrementals = Vec::new();
        for (n, file) in files.iter().enumerate() {
            let dir = if n == 0 {
                full.clone()
            } else {
                let d = scratch.add(self.engine.staging_dir(&format!("tandem-restore-inc{n}")));
                incrementals.push(d.clone());
                d
            };
            self.unpack_compressed(file, &dir, progress).await?;
        }
        drop(files);
        self.prepare_and_install(&full, &incrementals, progress)
            .await
    }

    /// The backup and its parents, full first; every link checked to exist, belong to
    /// the same server and be of this engine.
    async fn chain(
        &self,
        store: &BackupStore,
        backup_id: &BackupId,
    ) -> Result<Vec<BackupInfo>, CommandError> {
        let mut chain = vec![store.info(backup_id, self.engine.kind()).await?];
        while let BackupKind::Incremental { parent } = &chain.last().expect("non-empty").kind {
            if chain.len() > 64 {
                return Err(CommandError::bad_request(format!(
                    "the chain of backup {backup_id} is longer than 64 links (or loops)"
                )));
            }
            let child = chain.last().expect("non-empty");
            let parent_info = store.info(parent, self.engine.kind()).await.map_err(|e| {
                CommandError::new(
                    ErrorKind::EngineRefused,
                    format!(
                        "the chain of backup {backup_id} is broken at {}: its parent: {e}",
                        child.backup_id
                    ),
                )
            })?;
            if parent_info.instance != child.instance {
                return Err(CommandError::new(
                    ErrorKind::EngineRefused,
                    format!(
                        "the chain of backup {backup_id} is broken: {} ({}) names parent {} \
                         of another server ({})",
                        child.backup_id, child.instance, parent, parent_info.instance
                    ),
                ));
            }
            chain.push(parent_info);
        }
        chain.reverse();
        Ok(chain)
    }

    async fn unpack_compressed(
        &self,
        file: &Path,
        dir: &Path,
        progress: &Progress,
    ) -> Result<(), EngineError> {
        let mut zstd = crate::host::pipeline_stage("zstd")
            .args(["-d", "-c", "-q"])
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| internal(format!("run zstd: {e}")))?;
        let mut out = zstd.stdout.take().expect("piped");
        let unpacked = self.engine.unpack(&mut out, dir, progress).await;
        // Our end of zstd's output goes before we wait for it: a zstd still writing
        // into a pipe nobody reads would never exit (and the restore would hang). When
        // the unpack failed, zstd's remaining output is of no use: end it.
        drop(out);
        if unpacked.is_err() {
            let _ = zstd.start_kill();
        }
        let status = zstd
            .wait_with_output()
            .await
            .map_err(|e| internal(e.to_string()))?;
        unpacked?;
        if !status.status.success() {
            return Err(EngineError::Refused(format!(
                "zstd could not decompress {}: {}",
                file.display(),
                String::from_utf8_lossy(&status.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Prepares an unpacked copy, swaps it in, and leaves the server a read-only
    /// standalone with no memory of an old source.
    pub(crate) async fn prepare_and_install(
        &self,
        full: &Path,
        incrementals: &[PathBuf],
        progress: &Progress,
    ) -> Result<Position, CommandError> {
        progress.set_phase(Phase::Preparing);
        let position = self.engine.prepare(full, incrementals).await?;
        progress.set_phase(Phase::Installing);
        {
            // Nothing else may run against the engine while it is swapped.
            let _one_at_a_time = self.exec_lock.lock().await;
            self.engine.install(full).await?;
            self.update_state(|s| {
                s.source = None;
                s.master = false;
            })?;
            // The engine just restarted: give it a moment to take statements again.
            let mut last = None;
            for _ in 0..50 {
                match self.engine.set_writable(false).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            if let Some(e) = last {
                return Err(e.into());
            }
        }
        *self.changed_at.lock().expect("poisoned") = std::time::Instant::now();
        self.status_now.notify_one();
        progress.set_phase(Phase::Done);
        Ok(position)
    }

    /// Removes what failed, stopped or interrupted operations left: backups that never
    /// committed (from the store) and scratch space (staging directories beside the
    /// data directory and in the backup directory). Run at start and after every
    /// operation that did not succeed.
    pub(crate) async fn clean_up_unfinished(&self) {
        let unfinished = self
            .state
            .lock()
            .expect("poisoned")
            .unfinished_backups
            .clone();
        if !unfinished.is_empty() {
            match self.store().await {
                Ok(store) => {
                    for id in &unfinished {
                        match store.discard(id).await {
                            Ok(()) => {
                                tracing::info!(backup = %id, "removed an unfinished backup from the store");
                                if let Err(e) =
                                    self.update_state(|s| s.unfinished_backups.retain(|b| b != id))
                                {
                                    tracing::warn!(error = %e, "could not record a cleanup");
                                }
                            }
                            Err(e) => {
                                tracing::warn!(backup = %id, error = %e, "an unfinished backup could not be removed yet; tried again later")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the backup store is unreachable: unfinished backups are removed later")
                }
            }
        }
        // Never the previous data directory an interrupted install may have left.
        let staged: Vec<PathBuf> = ["tandem-download", "tandem-restore", "tandem-seed"]
            .into_iter()
            .map(|n| self.engine.staging_dir(n))
            .collect();
        let names: Vec<String> = staged
            .iter()
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut swept = sweep(staged.first().and_then(|p| p.parent()), &names);
        swept += sweep(
            Some(&self.settings.engine.backup_dir),
            &[".work-", ".seed-"],
        );
        if swept > 0 {
            tracing::info!(swept, "removed scratch space left by an earlier operation");
        }
    }

    pub(crate) async fn delete_backup(&self, backup_id: &BackupId) -> Result<(), CommandError> {
        if !self.store().await?.delete(backup_id).await? {
            tracing::info!(
                backup = %backup_id,
                "asked to delete a backup that is not in the store: nothing to do"
            );
        }
        Ok(())
    }
}

/// Refuses to start a copy that cannot fit: `needed` bytes must be free on the
/// filesystem of `at`. Final: asking again without making room ends the same way.
pub(crate) fn ensure_room(at: &Path, needed: u64, what: &str) -> Result<(), CommandError> {
    match crate::host::free_space(at) {
        Some(free) if free < needed => Err(CommandError::new(
            ErrorKind::EngineRefused,
            format!(
                "not enough disk space for {what}: it needs about {} on the filesystem of {}, \
                 where {} are free; nothing was changed",
                crate::host::mib(needed),
                at.display(),
                crate::host::mib(free)
            ),
        )),
        _ => Ok(()),
    }
}

/// Removes the entries of `dir` whose names start with one of `prefixes`; how many.
fn sweep(dir: Option<&Path>, prefixes: &[&str]) -> usize {
    let Some(Ok(entries)) = dir.map(std::fs::read_dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            prefixes.iter().any(|p| name.starts_with(p))
        })
        .map(|e| remove(&e.path()))
        .count()
}

fn internal(msg: String) -> EngineError {
    EngineError::Internal(anyhow::anyhow!(msg))
}
