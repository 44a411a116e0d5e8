//! MariaDB's physical copies: `mariabackup --backup --stream=xbstream` out,
//! `mbstream -x` in, `mariabackup --prepare` (with `--incremental-dir` for each
//! incremental) to make them consistent. What is done with the bytes in between
//! (compressed into a store, or sent to another agent) is not this module's business.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tandem_proto::{GtidSet, Position};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{BackupStream, EngineError, StreamEnd};
use crate::config::EngineConfig;
use crate::operations::Progress;

/// Starts `mariabackup --backup --stream=xbstream`. `scratch` holds its log and the
/// checkpoint file; it is removed when the stream finishes.
pub async fn stream(
    config: &EngineConfig,
    admin_password: Option<&str>,
    engine_version: String,
    scratch: &Path,
    since: Option<&str>,
) -> Result<BackupStream, EngineError> {
    let _ = tokio::fs::remove_dir_all(scratch).await;
    tokio::fs::create_dir_all(scratch)
        .await
        .map_err(|e| internal(format!("create {}: {e}", scratch.display())))?;
    let log_path = scratch.join("mariabackup.log");
    let log = std::fs::File::create(&log_path).map_err(|e| internal(format!("{e}")))?;
    let mut backup = tokio::process::Command::new("mariabackup");
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
    if let Some(socket) = &config.socket {
        backup.arg(format!("--socket={}", socket.display()));
    } else {
        backup
            .arg(format!("--host={}", config.host))
            .arg(format!("--port={}", config.port));
    }
    if let Some(pw) = admin_password {
        // Through the environment, not argv: argv is visible to every local user.
        backup.env("MYSQL_PWD", pw);
    }
    let mut child = backup
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            internal(format!(
                "run mariabackup (is mariadb-backup installed?): {e}"
            ))
        })?;
    let output = child.stdout.take().expect("piped");
    let scratch = scratch.to_owned();
    let finish = async move {
        let status = child.wait().await.map_err(|e| internal(format!("{e}")));
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let checkpoints =
            std::fs::read_to_string(scratch.join("xtrabackup_checkpoints")).unwrap_or_default();
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let status = status?;
        if !status.success() || !log_text.contains("completed OK!") {
            return Err(EngineError::Refused(format!(
                "mariabackup failed ({status}): {}",
                last_lines(&log_text, 5)
            )));
        }
        Ok(StreamEnd {
            position: gtid_of(&log_text).map(Position::Gtid),
            checkpoint: to_lsn(&checkpoints),
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
        .map_err(|e| internal(format!("create {}: {e}", dir.display())))?;
    let mut mbstream = tokio::process::Command::new("mbstream")
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
    let out = mbstream
        .wait_with_output()
        .await
        .map_err(|e| internal(format!("{e}")))?;
    // The first real cause wins: a copy that broke on the way (mbstream then fails on
    // the truncated stream), else mbstream's own failure, else a write it never took.
    read?;
    if !out.status.success() {
        return Err(unpack_failed(
            dir,
            &out.status.to_string(),
            &String::from_utf8_lossy(&out.stderr),
        ));
    }
    if let Some(e) = write_failed {
        return Err(internal(format!("write to mbstream: {e}")));
    }
    Ok(())
}

/// Why `mbstream` could not unpack into `dir`: a full disk named as such (final: asking
/// again fills it again), anything else with the tool's last words.
fn unpack_failed(dir: &Path, status: &str, stderr: &str) -> EngineError {
    if is_disk_full(stderr) {
        return EngineError::Refused(format!(
            "disk full: no space left on the filesystem of {} while unpacking the copy \
             ({} free now); nothing was installed (mbstream: {})",
            dir.display(),
            free_space(dir)
                .map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
                .unwrap_or_else(|| "unknown".into()),
            last_lines(stderr, 2)
        ));
    }
    EngineError::Refused(format!(
        "mbstream could not unpack the copy ({status}): {}",
        last_lines(stderr, 3)
    ))
}

/// Whether a tool's error output says the disk is full (`ENOSPC`, errno 28).
pub(crate) fn is_disk_full(stderr: &str) -> bool {
    stderr.contains("No space left on device") || stderr.contains("errno 28")
}

/// Free bytes on the filesystem holding `path` (or its nearest existing ancestor).
pub(crate) fn free_space(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let s = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
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
    let mut cmd = tokio::process::Command::new("mariabackup");
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
