//! The server itself: managed settings, writability and the fence, the data directory
//! swapped for a prepared copy, stop and start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use tandem_proto::InstanceId;

use super::*;
use crate::engine::{ConfigOutcome, EngineError};

impl MariaDb {
    pub(super) async fn apply_managed_config(
        &self,
        instance: &InstanceId,
        pair: Option<tandem_proto::PairSide>,
    ) -> Result<ConfigOutcome, EngineError> {
        let wanted = managed_settings(instance, pair);
        if let Some(path) = &self.own.managed_config {
            write_include(path, &wanted).map_err(EngineError::Internal)?;
        }
        let mut c = self.conn().await?;
        let mut outcome = ConfigOutcome::default();
        for (name, value, live) in &wanted {
            let current: Option<String> = timed(
                "read setting",
                c.query_first(format!("SELECT @@GLOBAL.{name}")),
            )
            .await?;
            let current = current.unwrap_or_default();
            let same = current.eq_ignore_ascii_case(value)
                || (value == "1" && current.eq_ignore_ascii_case("ON"));
            if same {
                continue;
            }
            if *live {
                // Numeric variables refuse a quoted value; enumerations take one.
                let literal = if value.bytes().all(|b| b.is_ascii_digit()) {
                    value.clone()
                } else {
                    format!("'{value}'")
                };
                match self
                    .exec(&mut c, &format!("SET GLOBAL {name} = {literal}"))
                    .await
                {
                    Ok(()) => outcome.applied_live.push(format!("{name}={value}")),
                    // One refused setting must not keep the others from being applied.
                    Err(e) => outcome.restart_needed.push(format!(
                        "{name} is {current}, wants {value}, not settable live: {e}"
                    )),
                }
            } else {
                outcome
                    .restart_needed
                    .push(format!("{name} is {current}, wants {value}"));
            }
        }
        Ok(outcome)
    }

    pub(super) async fn set_writable(&self, writable: bool) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        if writable {
            // Only a side of a master-master pair (a write stream of its own, set by
            // `configure_pair`) is writable while it replicates: its peer's stream
            // brings only what it already has.
            let domain: u32 = timed(
                "read gtid_domain_id",
                c.query_first("SELECT @@GLOBAL.gtid_domain_id"),
            )
            .await?
            .unwrap_or(0);
            if domain == 0 {
                if let Some(row) = self.slave_status(&mut c).await? {
                    let host: String = col(&row, "Master_Host").unwrap_or_default();
                    let port: u16 = col(&row, "Master_Port").unwrap_or(0);
                    return Err(EngineError::BadRequest(format!(
                        "this server replicates from {host}:{port}; a replica is never made \
                         writable: detach it first"
                    )));
                }
            }
        }
        if writable {
            return self.exec(&mut c, "SET GLOBAL read_only = 0").await;
        }
        let was_read_only: u8 = timed("read read_only", c.query_first("SELECT @@read_only"))
            .await?
            .unwrap_or(0);
        self.exec(&mut c, "SET GLOBAL read_only = 1").await?;
        if was_read_only == 0 {
            let ended = self.end_client_sessions(&mut c).await?;
            if ended > 0 {
                tracing::info!(ended, "read-only: client sessions ended");
            }
        }
        Ok(())
    }

    pub(super) async fn remove_fencing_hazards(
        &self,
        accounts: &[String],
    ) -> Result<Vec<String>, EngineError> {
        if accounts.is_empty() || !self.own.revoke_read_only_bypass {
            return Ok(accounts.to_vec());
        }
        self.revoke_read_only_bypass(accounts).await
    }

    pub(super) async fn fence(&self) -> Result<(), EngineError> {
        // SET read_only waits for commits in progress; once it is waiting, new writes
        // queue behind it. A commit waiting for a semi-sync acknowledgement would hold
        // it for the whole semi-sync timeout and then be acknowledged to its client
        // (asynchronously: a write the new master never sees). Such sessions are ended
        // instead (see `end_stuck_commits`): their clients get an error, never an
        // acknowledgement.
        let mut c = self.conn().await?;
        let setter: u64 = timed(
            "read CONNECTION_ID()",
            c.query_first("SELECT CONNECTION_ID()"),
        )
        .await?
        .unwrap_or(0);
        let mut set = tokio::spawn(async move { c.query_drop("SET GLOBAL read_only = 1").await });
        let deadline = tokio::time::Instant::now() + STATEMENT_TIMEOUT;
        let result = loop {
            if let Ok(done) = tokio::time::timeout(Duration::from_millis(100), &mut set).await {
                break done;
            }
            if tokio::time::Instant::now() >= deadline {
                set.abort();
                return Err(EngineError::Unavailable(format!(
                    "MariaDB did not go read-only within {STATEMENT_TIMEOUT:?}"
                )));
            }
            // Again each round: a statement that was past its read-only check when the
            // SET began may reach its commit later.
            let mut k = self.conn().await?;
            let killed = self.end_stuck_commits(&mut k, setter).await?;
            if killed > 0 {
                tracing::warn!(killed, "fence: sessions holding up read-only were ended");
            }
        };
        match result {
            Ok(Ok(())) => {
                let mut k = self.conn().await?;
                let ended = self.end_client_sessions(&mut k).await?;
                tracing::warn!(ended, "fence: read-only, client sessions ended");
                Ok(())
            }
            Ok(Err(e)) => Err(classify(e)),
            Err(e) => Err(EngineError::Internal(anyhow::anyhow!(e))),
        }
    }

    pub(super) fn staging_dir(&self, name: &str) -> PathBuf {
        sibling(&self.config.data_dir, name)
    }

    pub(super) fn copy_size(&self) -> u64 {
        // mariabackup copies the tablespaces and the redo log, never the binary or
        // relay logs (`<name>-bin.000042` and their index).
        fn is_log(name: &str) -> bool {
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
            stem.ends_with("-bin")
                && (ext == "index" || (!ext.is_empty() && ext.bytes().all(|b| b.is_ascii_digit())))
        }
        fn size(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => size(&e.path()),
                    Ok(m) if !is_log(&e.file_name().to_string_lossy()) => m.len(),
                    _ => 0,
                })
                .sum()
        }
        size(&self.config.data_dir)
    }

    pub(super) async fn install(&self, prepared: &Path) -> Result<(), EngineError> {
        let data = self.config.data_dir.clone();
        let previous = sibling(&data, "tandem-previous");
        let failed = sibling(&data, "tandem-failed");
        // The new directory gets the old one's owner and mode before the engine stops,
        // to keep the stopped window short.
        let owner = std::fs::metadata(&data)
            .map_err(|e| EngineError::Internal(anyhow::anyhow!("stat {}: {e}", data.display())))?;
        let prepared_owned = prepared.to_owned();
        tokio::task::spawn_blocking(move || give_owner(&prepared_owned, &owner))
            .await
            .map_err(|e| EngineError::Internal(e.into()))?
            .map_err(EngineError::Internal)?;
        let _ = tokio::fs::remove_dir_all(&previous).await;
        let _ = tokio::fs::remove_dir_all(&failed).await;

        self.stop().await?;
        let swapped = std::fs::rename(&data, &previous).and_then(|()| {
            std::fs::rename(prepared, &data).inspect_err(|_| {
                let _ = std::fs::rename(&previous, &data);
            })
        });
        if let Err(e) = swapped {
            let _ = self.start().await;
            return Err(EngineError::Internal(anyhow::anyhow!(
                "could not swap {} for the prepared copy {}: {e}; the old data directory \
                 is in place",
                data.display(),
                prepared.display()
            )));
        }
        match self.start().await {
            Ok(()) => {
                let _ = tokio::fs::remove_dir_all(&previous).await;
                Ok(())
            }
            Err(e) => {
                let _ = self.stop().await;
                let back = std::fs::rename(&data, &failed)
                    .and_then(|()| std::fs::rename(&previous, &data));
                let restarted = self.start().await;
                Err(EngineError::Refused(format!(
                    "the engine did not start on the new data ({e}); {}",
                    match (back, restarted) {
                        (Ok(()), Ok(())) => format!(
                            "the previous data directory was put back and started; the new \
                             one is kept in {}",
                            failed.display()
                        ),
                        (Err(b), _) => format!("the previous data could not be put back: {b}"),
                        (Ok(()), Err(r)) => {
                            format!("the previous data was put back but did not start: {r}")
                        }
                    }
                )))
            }
        }
    }

    pub(super) async fn stop(&self) -> Result<(), EngineError> {
        run_command("stop", self.config.stop_command.as_deref()).await
    }

    pub(super) async fn start(&self) -> Result<(), EngineError> {
        run_command("start", self.config.start_command.as_deref()).await
    }
}

/// `/var/lib/mysql` + "x" -> `/var/lib/mysql.x`: same parent, same filesystem.
pub(super) fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

/// Gives every file below `dir` the owner, group and (for `dir` itself) the mode of
/// `like`: files unpacked by the agent belong to the engine's user.
pub(super) fn give_owner(dir: &Path, like: &std::fs::Metadata) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid) = (
        Some(nix::unistd::Uid::from_raw(like.uid())),
        Some(nix::unistd::Gid::from_raw(like.gid())),
    );
    fn walk(
        p: &Path,
        uid: Option<nix::unistd::Uid>,
        gid: Option<nix::unistd::Gid>,
    ) -> anyhow::Result<()> {
        nix::unistd::chown(p, uid, gid).with_context(|| format!("chown {}", p.display()))?;
        if p.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(dir, uid, gid)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(like.mode() & 0o7777))
        .with_context(|| format!("chmod {}", dir.display()))
}

pub(super) fn write_include(
    path: &PathBuf,
    settings: &[(&str, String, bool)],
) -> anyhow::Result<()> {
    let mut text = String::from(
        "# Managed by tandem-agent: rewritten at every agent start; edits are lost.\n\
         # Servers start read-only: only the conductor, through the agent, makes one writable.\n\
         [mariadbd]\nread_only = 1\n",
    );
    for (name, value, _) in settings {
        let value = if *name == "log_bin" {
            "mysql-bin"
        } else {
            value.as_str()
        };
        text.push_str(&format!("{name} = {value}\n"));
    }
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename into {}", path.display()))
}

pub(super) async fn run_command(what: &str, argv: Option<&[String]>) -> Result<(), EngineError> {
    let Some((program, args)) = argv.and_then(|a| a.split_first()) else {
        return Err(EngineError::Unsupported(format!(
            "no engine.{what}_command is configured for this agent"
        )));
    };
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| EngineError::Internal(anyhow::anyhow!("run {program}: {e}")))?;
    if !out.status.success() {
        return Err(EngineError::Refused(format!(
            "engine {what} command {program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
