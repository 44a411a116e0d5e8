//! MariaDB backups: `mariabackup --backup --stream=xbstream | zstd`, hashed with SHA-256
//! as the bytes are written, stored as `<backup_id>.xb.zst` with a `<backup_id>.json`
//! beside it. Written under a temporary name and renamed when complete, so a half-made
//! backup never looks like a backup.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tandem_proto::{
    BackupInfo, BackupKind, BackupRequest, EngineKind, InstanceId, Position, Timestamp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::EngineError;
use crate::config::EngineConfig;
use crate::operations::Progress;

pub async fn take(
    config: &EngineConfig,
    admin_password: Option<&str>,
    me: &InstanceId,
    engine_version: String,
    request: &BackupRequest,
    dir: &Path,
    progress: &Progress,
) -> Result<BackupInfo, EngineError> {
    super::mariadb::safe_token("the backup id", &request.backup_id)?;
    if let BackupKind::Incremental { .. } = request.kind {
        return Err(EngineError::Unsupported(
            "incremental backups are not implemented by this agent version".into(),
        ));
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| internal(format!("create backup directory {}: {e}", dir.display())))?;
    let final_path = dir.join(format!("{}.xb.zst", request.backup_id));
    let meta_path = dir.join(format!("{}.json", request.backup_id));
    if final_path.exists() {
        return Err(EngineError::BadRequest(format!(
            "backup {} already exists at {}",
            request.backup_id,
            final_path.display()
        )));
    }
    let partial = dir.join(format!(".{}.partial", request.backup_id));
    let scratch = dir.join(format!(".{}.scratch", request.backup_id));
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    tokio::fs::create_dir_all(&scratch)
        .await
        .map_err(|e| internal(format!("create {}: {e}", scratch.display())))?;
    let cleanup = Cleanup(vec![partial.clone(), scratch.clone()]);

    progress.set_phase("copying");
    progress.bytes_total.store(
        dir_size(&config.data_dir),
        std::sync::atomic::Ordering::Relaxed,
    );

    let log_path = scratch.join("mariabackup.log");
    let log = std::fs::File::create(&log_path).map_err(|e| internal(format!("{e}")))?;
    let mut backup = tokio::process::Command::new("mariabackup");
    backup
        .arg("--no-defaults")
        .arg("--backup")
        .arg("--stream=xbstream")
        .arg(format!("--target-dir={}", scratch.display()))
        .arg(format!("--datadir={}", config.data_dir.display()))
        .arg(format!("--user={}", config.admin_user));
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
    let mut backup = backup
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            internal(format!(
                "run mariabackup (is mariadb-backup installed?): {e}"
            ))
        })?;
    let stream: Stdio = backup
        .stdout
        .take()
        .expect("piped")
        .try_into()
        .map_err(|e| internal(format!("{e}")))?;
    let mut zstd = tokio::process::Command::new("zstd")
        .args(["-q", "-3", "-T0", "-c"])
        .stdin(stream)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| internal(format!("run zstd: {e}")))?;

    let mut compressed = zstd.stdout.take().expect("piped");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| internal(format!("create {}: {e}", partial.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = compressed
            .read(&mut buf)
            .await
            .map_err(|e| internal(format!("read the compressed stream: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(|e| internal(format!("write {}: {e}", partial.display())))?;
        size += n as u64;
        progress.add(n as u64);
    }
    file.sync_all()
        .await
        .map_err(|e| internal(format!("sync {}: {e}", partial.display())))?;
    let backup_status = backup.wait().await.map_err(|e| internal(format!("{e}")))?;
    let zstd_status = zstd.wait().await.map_err(|e| internal(format!("{e}")))?;
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !backup_status.success() || !log_text.contains("completed OK!") {
        let tail: Vec<&str> = log_text.lines().rev().take(5).collect();
        return Err(EngineError::Refused(format!(
            "mariabackup failed ({backup_status}): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    if !zstd_status.success() {
        return Err(internal(format!("zstd failed ({zstd_status})")));
    }

    let info = BackupInfo {
        backup_id: request.backup_id.clone(),
        kind: request.kind.clone(),
        instance: me.clone(),
        engine: EngineKind::Mariadb,
        engine_version,
        position: gtid_of(&log_text).map(Position::Gtid),
        size_bytes: size,
        sha256: format!("{:x}", hasher.finalize()),
        created_at: Timestamp::now(),
        location: final_path.display().to_string(),
    };
    let meta = serde_json::to_vec_pretty(&info).map_err(|e| internal(format!("{e}")))?;
    tokio::fs::write(&meta_path, meta)
        .await
        .map_err(|e| internal(format!("write {}: {e}", meta_path.display())))?;
    tokio::fs::rename(&partial, &final_path)
        .await
        .map_err(|e| internal(format!("rename into {}: {e}", final_path.display())))?;
    progress.set_phase("done");
    drop(cleanup);
    Ok(info)
}

/// mariabackup logs "GTID of the last change '0-1-5'" for the position it is consistent at.
fn gtid_of(log: &str) -> Option<tandem_proto::GtidSet> {
    let marker = "GTID of the last change '";
    let start = log.rfind(marker)? + marker.len();
    let end = log[start..].find('\'')? + start;
    log[start..end].parse().ok()
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn internal(msg: String) -> EngineError {
    EngineError::Internal(anyhow::anyhow!(msg))
}

/// Removes scratch files whichever way the backup ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir_all(p);
        }
    }
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
}
