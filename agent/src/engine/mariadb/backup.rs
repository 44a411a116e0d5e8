//! MariaDB's physical copies: `mariabackup --backup --stream=xbstream` out,
//! `mbstream -x` in, `mariabackup --prepare` (with `--incremental-dir` for each
//! incremental) to make them consistent. What is done with the bytes in between
//! (compressed into a store, or sent to another agent) is not this module's business.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tandem_proto::{GtidSet, Position};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::{EngineSettings, MariadbConfig};
use crate::engine::{BackupStream, EngineError, StreamEnd};
use crate::operations::Progress;

/// Starts `mariabackup --backup --stream=xbstream`. `scratch` holds the checkpoint
/// file; it is removed when the stream finishes.
pub async fn stream(
    config: &EngineSettings,
    own: &MariadbConfig,
    engine_version: String,
    scratch: &Path,
    since: Option<&str>,
) -> Result<BackupStream, EngineError> {
    let _ = tokio::fs::remove_dir_all(scratch).await;
    tokio::fs::create_dir_all(scratch)
        .await
        .map_err(|e| crate::host::io_error("make the backup's scratch space", scratch, &e))?;
    let mut backup = crate::host::pipeline_stage("mariabackup");
    backup
        .arg("--no-defaults")
        .arg("--backup")
        .arg("--stream=xbstream")
        .arg(format!("--target-dir={}", scratch.display()))
        // The checkpoint file (to_lsn) lands here too, for the next incremental.
        .arg(format!("--extra-lsndir={}", scratch.display()))
        .arg(format!("--datadir={}", config.data_dir.display()))
        .arg(format!("--user={}", config.admin_user));
    if let Some(lsn) = since {
        if lsn.is_empty() || !lsn.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EngineError::BadRequest(format!(
                "the parent backup's checkpoint {lsn:?} is not an InnoDB LSN"
            )));
        }
        backup.arg(format!("--incremental-lsn={lsn}"));
    }
    if let Some(socket) = &own.socket {
        backup.arg(format!("--socket={}", socket.display()));
    } else {
        backup
            .arg(format!("--host={}", config.host))
            .arg(format!("--port={}", config.port));
    }
    if let Some(pw) = &config.admin_password {
        // Through the environment, not argv: argv is visible to every local user.
        backup.env("MYSQL_PWD", pw);
    }
    let mut child = backup
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Read as it comes (never into the scratch space, which may be what is full).
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            internal(format!(
                "run mariabackup (is mariadb-backup installed?): {e}"
            ))
        })?;
    let output = child.stdout.take().expect("piped");
    let log = tokio::spawn(tail_of(child.stderr.take().expect("piped")));
    let scratch = scratch.to_owned();
    let finish = async move {
        let status = child.wait().await.map_err(|e| internal(format!("{e}")));
        let log_text = log.await.unwrap_or_default();
        let checkpoints =
            std::fs::read_to_string(scratch.join("xtrabackup_checkpoints")).unwrap_or_default();
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let status = status?;
        let free = || {
            crate::host::free_space(&scratch)
                .map(crate::host::mib)
                .unwrap_or_else(|| "unknown".into())
        };
        if crate::host::is_disk_full(&log_text) {
            return Err(EngineError::Refused(format!(
                "disk full: mariabackup ran out of space on the filesystem of {} ({} free \
                 now); nothing was stored (mariabackup: {})",
                scratch.display(),
                free(),
                last_lines(&log_text, 2)
            )));
        }
        if !status.success() || !log_text.contains("completed OK!") {
            let how = if status.success() {
                "it ended without completing".to_owned()
            } else {
                status.to_string()
            };
            return Err(EngineError::Refused(format!(
                "mariabackup failed ({how}): {}",
                last_lines(&log_text, 5)
            )));
        }
        // mariabackup says "completed OK!" even when it could not write the checkpoint
        // (its scratch space full): without it no incremental can follow, so the
        // backup is not one.
        let Some(checkpoint) = to_lsn(&checkpoints) else {
            let full = crate::host::free_space(&scratch).is_some_and(|b| b < 1 << 20);
            return Err(EngineError::Refused(format!(
                "{} mariabackup wrote no checkpoint into {} ({} free there); without it no \
                 incremental can continue this backup, so nothing was stored",
                if full { "disk full:" } else { "no checkpoint:" },
                scratch.display(),
                free()
            )));
        };
        Ok(StreamEnd {
            position: gtid_of(&log_text).map(Position::Gtid),
            checkpoint: Some(checkpoint),
            engine_version,
        })
    };
    Ok(BackupStream {
        output,
        finish: Box::pin(finish),
    })
}

/// `mbstream -x -C dir`, fed from `from` until it ends.
pub async fn unpack(
    from: &mut (dyn AsyncRead + Unpin + Send),
    dir: &Path,
    progress: &Progress,
) -> Result<(), EngineError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| crate::host::io_error("make the directory to unpack into", dir, &e))?;
    let mut mbstream = crate::host::pipeline_stage("mbstream")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| internal(format!("run mbstream (is mariadb-backup installed?): {e}")))?;
    let mut stdin = mbstream.stdin.take().expect("piped");
    let errors = tokio::spawn(tail_of(mbstream.stderr.take().expect("piped")));
    let mut buf = vec![0u8; 1 << 20];
    // A read that fails is the source's failure; a write that fails is mbstream's, whose
    // own reason (its disk full, say) is found in its exit and error output below.
    let mut write_failed = None;
    let read: Result<(), EngineError> = async {
        loop {
            let n = from
                .read(&mut buf)
                .await
                .map_err(|e| EngineError::Refused(format!("the copy stream broke: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            if let Err(e) = stdin.write_all(&buf[..n]).await {
                write_failed = Some(e);
                return Ok(());
            }
            progress.add(n as u64);
        }
    }
    .await;
    drop(stdin);
    let status = mbstream
        .wait()
        .await
        .map_err(|e| internal(format!("{e}")))?;
    let stderr = errors.await.unwrap_or_default();
    // The first real cause wins: a copy that broke on the way (mbstream then fails on
    // the truncated stream), else mbstream's own failure, else a write it never took.
    read?;
    if !status.success() {
        return Err(unpack_failed(dir, &status.to_string(), &stderr));
    }
    if let Some(e) = write_failed {
        return Err(internal(format!("write to mbstream: {e}")));
    }
    Ok(())
}

/// Why `mbstream` could not unpack into `dir`: a full disk named as such (final: asking
/// again fills it again), anything else with the tool's last words.
fn unpack_failed(dir: &Path, status: &str, stderr: &str) -> EngineError {
    if crate::host::is_disk_full(stderr) {
        return EngineError::Refused(format!(
            "disk full: no space left on the filesystem of {} while unpacking the copy \
             ({} free now); nothing was installed (mbstream: {})",
            dir.display(),
            crate::host::free_space(dir)
                .map(crate::host::mib)
                .unwrap_or_else(|| "unknown".into()),
            last_lines(stderr, 2)
        ));
    }
    EngineError::Refused(format!(
        "mbstream could not unpack the copy ({status}): {}",
        last_lines(stderr, 3)
    ))
}

/// `mariabackup --prepare` on the full copy, then once per incremental with
/// `--incremental-dir`, in order. Returns the position of the last one applied.
pub async fn prepare(full: &Path, incrementals: &[PathBuf]) -> Result<Position, EngineError> {
    run_prepare(full, None).await?;
    for inc in incrementals {
        run_prepare(full, Some(inc)).await?;
    }
    let last = incrementals.last().map(PathBuf::as_path).unwrap_or(full);
    binlog_position(last).map(Position::Gtid)
}

async fn run_prepare(full: &Path, incremental: Option<&Path>) -> Result<(), EngineError> {
    let mut cmd = crate::host::pipeline_stage("mariabackup");
    cmd.arg("--no-defaults")
        .arg("--prepare")
        .arg(format!("--target-dir={}", full.display()));
    if let Some(inc) = incremental {
        cmd.arg(format!("--incremental-dir={}", inc.display()));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| internal(format!("run mariabackup --prepare: {e}")))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !log.contains("completed OK!") {
        let what = match incremental {
            Some(inc) => format!("applying incremental {}", inc.display()),
            None => "preparing the full copy".into(),
        };
        return Err(EngineError::Refused(format!(
            "mariabackup --prepare failed {what} ({}): {}",
            out.status,
            last_lines(&log, 5)
        )));
    }
    Ok(())
}

/// The GTID position an unpacked copy is consistent at, from the binlog info file
/// mariabackup puts in the stream (`<binlog file>\t<offset>\t<gtid>`). A copy of a
/// server that never wrote a transaction has no GTID: the empty set.
pub fn binlog_position(dir: &Path) -> Result<GtidSet, EngineError> {
    for name in ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let gtid = text.trim().split('\t').nth(2).unwrap_or("").trim();
            return gtid.parse().map_err(|e| {
                EngineError::Refused(format!(
                    "the copy's binlog position {gtid:?} in {name} is unreadable: {e}"
                ))
            });
        }
    }
    Err(EngineError::Refused(format!(
        "the copy in {} has no binlog position (mariadb_backup_binlog_info); it cannot \
         be attached at a known GTID",
        dir.display()
    )))
}

/// mariabackup logs "GTID of the last change '0-1-5'" for the position it is consistent at.
fn gtid_of(log: &str) -> Option<GtidSet> {
    let marker = "GTID of the last change '";
    let start = log.rfind(marker)? + marker.len();
    let end = log[start..].find('\'')? + start;
    log[start..end].parse().ok()
}

/// `to_lsn = 123` from an `xtrabackup_checkpoints` file.
fn to_lsn(checkpoints: &str) -> Option<String> {
    checkpoints.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "to_lsn").then(|| v.trim().to_owned())
    })
}

/// Everything a child writes to `from`, drained as it comes so the child never blocks
/// on it; only the last 256 KiB are kept (mariabackup's verdict is at the end).
async fn tail_of(mut from: impl AsyncRead + Unpin) -> String {
    const KEEP: usize = 256 << 10;
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn internal(msg: String) -> EngineError {
    EngineError::Internal(anyhow::anyhow!(msg))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_backup_position_is_read_from_the_log() {
        let log =
            "[00] 2026-11-25 mariabackup: MySQL binlog position: filename 'mysql-bin.000001', \
                   position '1234', GTID of the last change '0-7-42'\n[00] completed OK!";
        assert_eq!(super::gtid_of(log).unwrap().to_string(), "0-7-42");
        assert_eq!(super::gtid_of("no position here"), None);
    }

    #[test]
    fn the_checkpoint_and_binlog_position_are_read_from_their_files() {
        let cp = "backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 47426\nlast_lsn = 47426\n";
        assert_eq!(super::to_lsn(cp).as_deref(), Some("47426"));
        assert_eq!(super::to_lsn("nothing"), None);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mariadb_backup_binlog_info"),
            "mysql-bin.000002\t385\t0-1-5,1-2-9\n",
        )
        .unwrap();
        let at = super::binlog_position(dir.path()).unwrap();
        assert_eq!(at.to_string(), "0-1-5,1-2-9");
        std::fs::write(
            dir.path().join("mariadb_backup_binlog_info"),
            "mysql-bin.000001\t328\t\n",
        )
        .unwrap();
        assert!(super::binlog_position(dir.path()).unwrap().is_empty());
        let empty = tempfile::tempdir().unwrap();
        let err = super::binlog_position(empty.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no binlog position"), "{err}");
    }
}
