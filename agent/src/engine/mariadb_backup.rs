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

/// Checks a stored backup before anything touches a data directory: its metadata is
/// there and readable, it is a backup of `engine`, and the stored bytes are all there
/// and hash to the recorded SHA-256. Any failure leaves everything as it was.
pub async fn verify(
    dir: &Path,
    backup_id: &str,
    engine: EngineKind,
) -> Result<BackupInfo, EngineError> {
    super::mariadb::safe_token("the backup id", backup_id)?;
    let meta_path = dir.join(format!("{backup_id}.json"));
    let meta = match tokio::fs::read(&meta_path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EngineError::BadRequest(format!(
                "there is no backup {backup_id} in {}",
                dir.display()
            )))
        }
        Err(e) => return Err(internal(format!("read {}: {e}", meta_path.display()))),
    };
    let info: BackupInfo = serde_json::from_slice(&meta).map_err(|e| {
        EngineError::Refused(format!(
            "the metadata of backup {backup_id} is unreadable: {e}"
        ))
    })?;
    if info.engine != engine {
        return Err(EngineError::BadRequest(format!(
            "backup {backup_id} is a {} backup; this is a {engine} server",
            info.engine
        )));
    }
    let data_path = dir.join(format!("{backup_id}.xb.zst"));
    let mut file = tokio::fs::File::open(&data_path).await.map_err(|e| {
        EngineError::Refused(format!(
            "the data of backup {backup_id} is missing ({}): {e}",
            data_path.display()
        ))
    })?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| internal(format!("read {}: {e}", data_path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    if size != info.size_bytes {
        return Err(EngineError::Refused(format!(
            "backup {backup_id} is truncated or grown: {size} bytes stored, {} recorded",
            info.size_bytes
        )));
    }
    let sum = format!("{:x}", hasher.finalize());
    if sum != info.sha256 {
        return Err(EngineError::Refused(format!(
            "backup {backup_id} is corrupt: its SHA-256 is {sum}, {} was recorded",
            info.sha256
        )));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_position_is_read_from_the_log() {
        let log =
            "[00] 2026-11-25 mariabackup: MySQL binlog position: filename 'mysql-bin.000001', \
                   position '1234', GTID of the last change '0-7-42'\n[00] completed OK!";
        assert_eq!(super::gtid_of(log).unwrap().to_string(), "0-7-42");
        assert_eq!(super::gtid_of("no position here"), None);
    }

    fn sample(dir: &std::path::Path, id: &str, bytes: &[u8], engine: EngineKind) {
        use sha2::Digest;
        let info = BackupInfo {
            backup_id: id.into(),
            kind: BackupKind::Full,
            instance: "db-1".parse().unwrap(),
            engine,
            engine_version: "10.11".into(),
            position: None,
            size_bytes: bytes.len() as u64,
            sha256: format!("{:x}", sha2::Sha256::digest(bytes)),
            created_at: Timestamp(1),
            location: dir.join(format!("{id}.xb.zst")).display().to_string(),
        };
        std::fs::write(dir.join(format!("{id}.xb.zst")), bytes).unwrap();
        std::fs::write(
            dir.join(format!("{id}.json")),
            serde_json::to_vec(&info).unwrap(),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_broken_backup_is_refused_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for id in ["good", "flipped", "truncated", "foreign", "nodata"] {
            sample(
                d,
                id,
                &data,
                if id == "foreign" {
                    EngineKind::Postgresql
                } else {
                    EngineKind::Mariadb
                },
            );
        }
        let mut flipped = data.clone();
        flipped[50_000] ^= 0x01;
        std::fs::write(d.join("flipped.xb.zst"), &flipped).unwrap();
        std::fs::write(d.join("truncated.xb.zst"), &data[..99_000]).unwrap();
        std::fs::remove_file(d.join("nodata.xb.zst")).unwrap();
        std::fs::write(d.join("garbled.json"), b"{not json").unwrap();

        let ok = super::verify(d, "good", EngineKind::Mariadb).await.unwrap();
        assert_eq!(ok.size_bytes, 100_000);
        let cases = [
            ("flipped", "is corrupt: its SHA-256"),
            ("truncated", "99000 bytes stored, 100000 recorded"),
            (
                "foreign",
                "is a postgresql backup; this is a mariadb server",
            ),
            ("nodata", "the data of backup nodata is missing"),
            ("missing", "there is no backup missing in"),
            ("garbled", "the metadata of backup garbled is unreadable"),
            ("../etc", "the backup id must be"),
        ];
        for (id, expected) in cases {
            let err = super::verify(d, id, EngineKind::Mariadb)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{id}: {err}");
        }
    }
}
