//! The backup store: one interface over a local directory (or NFS mount), OpenStack
//! Swift and S3, through OpenDAL.
//!
//! A backup is two objects: `<id>.xb.zst` (the compressed stream) and `<id>.json` (its
//! [`BackupInfo`]). The metadata is written last and is the commit point: data without
//! metadata is a backup that never finished, and is not listed or restorable.

use std::path::{Path, PathBuf};

use opendal::Operator;
use sha2::{Digest, Sha256};
use tandem_proto::{BackupId, BackupInfo, EngineKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::StoreSettings;
use crate::engine::EngineError;
use crate::operations::Progress;

/// Chunks of this size go to the store (Swift and S3 upload them as segments/parts).
const CHUNK: usize = 8 << 20;

pub struct BackupStore {
    op: Operator,
    /// `local:/path`, `swift:container/prefix`, `s3:bucket/prefix`: for messages.
    name: String,
    /// For a local store, the directory: backups are read in place instead of copied.
    local_dir: Option<PathBuf>,
}

impl BackupStore {
    /// Connects to the configured store (for Swift: authenticates now, so a token never
    /// expires in the middle of an operation that opened the store).
    pub async fn open(settings: &StoreSettings) -> Result<BackupStore, EngineError> {
        // OpenDAL's HTTP services need a transport installed once per process: reqwest.
        static TRANSPORT: std::sync::Once = std::sync::Once::new();
        TRANSPORT.call_once(|| {
            // HTTPS uses the ring provider lapin already brings (already installed
            // when another part of the process got there first).
            let _ = rustls::crypto::ring::default_provider().install_default();
            opendal::HttpTransporter::install_default(
                opendal_http_transport_reqwest::ReqwestTransport::new(reqwest::Client::new()),
            )
        });
        let failed = |e: opendal::Error| EngineError::Internal(anyhow::anyhow!("{e}"));
        match settings {
            StoreSettings::Local { dir } => {
                let partial = dir.join(".partial");
                tokio::fs::create_dir_all(&partial).await.map_err(|e| {
                    EngineError::Internal(anyhow::anyhow!(
                        "create the backup directory {}: {e}",
                        dir.display()
                    ))
                })?;
                let builder = opendal::services::Fs::default()
                    .root(&dir.to_string_lossy())
                    .atomic_write_dir(&partial.to_string_lossy());
                Ok(BackupStore {
                    op: Operator::new(builder).map_err(failed)?,
                    name: format!("local:{}", dir.display()),
                    local_dir: Some(dir.clone()),
                })
            }
            StoreSettings::Swift {
                auth_url,
                user,
                key,
                container,
                prefix,
            } => {
                let (storage_url, token) = swift_auth(auth_url, user, key.expose()).await?;
                let builder = opendal::services::Swift::default()
                    .endpoint(&storage_url)
                    .container(container)
                    .root(&format!("/{prefix}"))
                    .token(&token);
                Ok(BackupStore {
                    op: Operator::new(builder).map_err(failed)?,
                    name: format!("swift:{container}/{prefix}"),
                    local_dir: None,
                })
            }
            StoreSettings::S3 {
                endpoint,
                region,
                bucket,
                access_key_id,
                secret_access_key,
                prefix,
            } => {
                let mut builder = opendal::services::S3::default()
                    .bucket(bucket)
                    .region(region)
                    .root(&format!("/{prefix}"))
                    .access_key_id(access_key_id)
                    .secret_access_key(secret_access_key.expose());
                if let Some(e) = endpoint {
                    builder = builder.endpoint(e);
                }
                Ok(BackupStore {
                    op: Operator::new(builder).map_err(failed)?,
                    name: format!("s3:{bucket}/{prefix}"),
                    local_dir: None,
                })
            }
        }
    }

    /// A directory on this host (read in place, nothing downloaded).
    pub fn is_local(&self) -> bool {
        self.local_dir.is_some()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn location(&self, backup_id: &BackupId) -> String {
        format!(
            "{}/{}",
            self.name.trim_end_matches('/'),
            data_key(backup_id)
        )
    }

    /// Streams `from` into the backup's data object, hashing as it goes. Returns the
    /// size and SHA-256 of what was stored.
    pub async fn put_data(
        &self,
        backup_id: &BackupId,
        from: &mut (dyn AsyncRead + Unpin + Send),
        progress: &Progress,
    ) -> Result<(u64, String), EngineError> {
        let key = data_key(backup_id);
        let mut writer = self
            .op
            .writer_with(&key)
            .chunk(CHUNK)
            .await
            .map_err(|e| self.error(&format!("open {key} for writing"), e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = from.read(&mut buf).await.map_err(|e| {
                EngineError::Internal(anyhow::anyhow!("read the backup stream: {e}"))
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer
                .write(buf[..n].to_vec())
                .await
                .map_err(|e| self.error(&format!("write {key}"), e))?;
            size += n as u64;
            progress.add(n as u64);
        }
        writer
            .close()
            .await
            .map_err(|e| self.error(&format!("finish {key}"), e))?;
        Ok((size, format!("{:x}", hasher.finalize())))
    }

    /// Writes the metadata: from now on the backup exists.
    pub async fn commit(&self, info: &BackupInfo) -> Result<(), EngineError> {
        let json = serde_json::to_vec_pretty(info)
            .map_err(|e| EngineError::Internal(anyhow::anyhow!("{e}")))?;
        let key = meta_key(&info.backup_id);
        self.op
            .write(&key, json)
            .await
            .map(|_| ())
            .map_err(|e| self.error(&format!("write {key}"), e))
    }

    pub async fn exists(&self, backup_id: &BackupId) -> Result<bool, EngineError> {
        self.op
            .exists(&meta_key(backup_id))
            .await
            .map_err(|e| self.error("look up a backup", e))
    }

    /// The metadata of one backup, checked to be of `engine`.
    pub async fn info(
        &self,
        backup_id: &BackupId,
        engine: EngineKind,
    ) -> Result<BackupInfo, EngineError> {
        let key = meta_key(backup_id);
        let bytes = match self.op.read(&key).await {
            Ok(b) => b.to_vec(),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                return Err(EngineError::BadRequest(format!(
                    "there is no backup {backup_id} in {}",
                    self.name
                )))
            }
            Err(e) => return Err(self.error(&format!("read {key}"), e)),
        };
        let info: BackupInfo = serde_json::from_slice(&bytes).map_err(|e| {
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
        Ok(info)
    }

    /// Makes the backup's data available as a local file whose size and SHA-256 match
    /// the metadata: in place for a local store, downloaded into `staging` otherwise.
    pub async fn fetch_verified(
        &self,
        info: &BackupInfo,
        staging: &Path,
        progress: &Progress,
    ) -> Result<PathBuf, EngineError> {
        let id = &info.backup_id;
        let key = data_key(id);
        let missing = |e: String| {
            EngineError::Refused(format!(
                "the data of backup {id} is missing ({}): {e}",
                self.location(id)
            ))
        };
        let path = match &self.local_dir {
            Some(dir) => {
                let path = dir.join(&key);
                let mut file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| missing(e.to_string()))?;
                let (size, sum) = hash_all(&mut file, None, progress).await?;
                check(info, size, &sum)?;
                path
            }
            None => {
                let reader = match self.op.reader(&key).await {
                    Ok(r) => r,
                    Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                        return Err(missing("no such object".into()))
                    }
                    Err(e) => return Err(self.error(&format!("open {key}"), e)),
                };
                let mut stream =
                    reader
                        .into_futures_async_read(..)
                        .await
                        .map_err(|e| match e.kind() {
                            opendal::ErrorKind::NotFound => missing("no such object".into()),
                            _ => self.error(&format!("read {key}"), e),
                        })?;
                tokio::fs::create_dir_all(staging).await.map_err(|e| {
                    crate::host::io_error("make the download directory", staging, &e)
                })?;
                let path = staging.join(&key);
                let mut file = tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| crate::host::io_error("download the backup", &path, &e))?;
                let mut compat = tokio_util::compat::FuturesAsyncReadCompatExt::compat(&mut stream);
                let (size, sum) = hash_all(&mut compat, Some((&mut file, &path)), progress).await?;
                check(info, size, &sum)?;
                path
            }
        };
        Ok(path)
    }

    /// Deletes a backup; `false` when there was none by that id (a delete is done when
    /// the backup is gone, so asking twice is not an error).
    pub async fn delete(&self, backup_id: &BackupId) -> Result<bool, EngineError> {
        if !self.exists(backup_id).await? {
            return Ok(false);
        }
        // Metadata first: a half-deleted backup is then simply not a backup.
        for key in [meta_key(backup_id), data_key(backup_id)] {
            self.op
                .delete(&key)
                .await
                .map_err(|e| self.error(&format!("delete {key}"), e))?;
        }
        Ok(true)
    }

    /// Removes whatever an unfinished backup wrote (metadata first, then data); what is
    /// not there is fine. Never called for a backup the conductor recorded.
    pub async fn discard(&self, backup_id: &BackupId) -> Result<(), EngineError> {
        for key in [meta_key(backup_id), data_key(backup_id)] {
            match self.op.delete(&key).await {
                Ok(()) => {}
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
                Err(e) => return Err(self.error(&format!("delete {key}"), e)),
            }
        }
        Ok(())
    }

    fn error(&self, what: &str, e: opendal::Error) -> EngineError {
        // A local store (a directory, an NFS mount) that is full says so, as final.
        if crate::host::is_disk_full(&e.to_string()) {
            return EngineError::Refused(format!(
                "disk full: the backup store {} has no space left ({what}); nothing of this \
                 backup is kept",
                self.name
            ));
        }
        EngineError::Unavailable(format!("backup store {}: {what}: {e}", self.name))
    }
}

fn data_key(backup_id: &BackupId) -> String {
    format!("{backup_id}.xb.zst")
}

fn meta_key(backup_id: &BackupId) -> String {
    format!("{backup_id}.json")
}

fn check(info: &BackupInfo, size: u64, sum: &str) -> Result<(), EngineError> {
    let id = &info.backup_id;
    if size != info.size_bytes {
        return Err(EngineError::Refused(format!(
            "backup {id} is truncated or grown: {size} bytes stored, {} recorded",
            info.size_bytes
        )));
    }
    if sum != info.sha256 {
        return Err(EngineError::Refused(format!(
            "backup {id} is corrupt: its SHA-256 is {sum}, {} was recorded",
            info.sha256
        )));
    }
    Ok(())
}

async fn hash_all(
    from: &mut (dyn AsyncRead + Unpin + Send),
    mut copy_to: Option<(&mut tokio::fs::File, &Path)>,
    progress: &Progress,
) -> Result<(u64, String), EngineError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|e| EngineError::Unavailable(format!("read a stored backup: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some((f, path)) = copy_to.as_mut() {
            f.write_all(&buf[..n])
                .await
                .map_err(|e| crate::host::io_error("download the backup", path, &e))?;
        }
        size += n as u64;
        progress.add(n as u64);
    }
    if let Some((f, path)) = copy_to {
        f.flush()
            .await
            .map_err(|e| crate::host::io_error("download the backup", path, &e))?;
    }
    Ok((size, format!("{:x}", hasher.finalize())))
}

/// Swift v1 authentication (tempauth, swauth, and Keystone deployments that keep the
/// v1 endpoint): `X-Auth-User`/`X-Auth-Key` in, storage URL and token out.
async fn swift_auth(
    auth_url: &str,
    user: &str,
    key: &str,
) -> Result<(String, String), EngineError> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| EngineError::Internal(e.into()))?;
    let response = client
        .get(auth_url)
        .header("X-Auth-User", user)
        .header("X-Auth-Key", key)
        .send()
        .await
        .map_err(|e| EngineError::Unavailable(format!("Swift auth at {auth_url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(EngineError::Refused(format!(
            "Swift auth at {auth_url} refused user {user}: {status}"
        )));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                EngineError::Refused(format!("Swift auth at {auth_url} answered without {name}"))
            })
    };
    Ok((header("X-Storage-Url")?, header("X-Auth-Token")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::{BackupKind, Timestamp};

    fn b(id: &str) -> BackupId {
        id.parse().unwrap()
    }

    async fn sample(store: &BackupStore, id: &str, bytes: &[u8], engine: EngineKind) {
        let id = &b(id);
        let p = Progress::default();
        let (size, sha256) = store.put_data(id, &mut &bytes[..], &p).await.unwrap();
        store
            .commit(&BackupInfo {
                backup_id: id.clone(),
                kind: BackupKind::Full,
                instance: "db-1".parse().unwrap(),
                engine,
                engine_version: "10.11".into(),
                position: None,
                size_bytes: size,
                sha256,
                created_at: Timestamp(1),
                location: store.location(id),
                data_bytes: None,
                checkpoint: None,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_broken_backup_is_refused_before_anything_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let store = BackupStore::open(&StoreSettings::Local { dir: d.into() })
            .await
            .unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for id in ["good", "flipped", "truncated", "foreign", "nodata"] {
            let engine = if id == "foreign" {
                EngineKind::Postgresql
            } else {
                EngineKind::Mariadb
            };
            sample(&store, id, &data, engine).await;
        }
        let mut flipped = data.clone();
        flipped[50_000] ^= 0x01;
        std::fs::write(d.join("flipped.xb.zst"), &flipped).unwrap();
        std::fs::write(d.join("truncated.xb.zst"), &data[..99_000]).unwrap();
        std::fs::remove_file(d.join("nodata.xb.zst")).unwrap();
        std::fs::write(d.join("garbled.json"), b"{not json").unwrap();

        let p = Progress::default();
        let staging = d.join("staging");
        let ok = store.info(&b("good"), EngineKind::Mariadb).await.unwrap();
        store.fetch_verified(&ok, &staging, &p).await.unwrap();
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
        ];
        for (id, expected) in cases {
            let result = match store.info(&b(id), EngineKind::Mariadb).await {
                Ok(info) => store.fetch_verified(&info, &staging, &p).await.map(|_| ()),
                Err(e) => Err(e),
            };
            let err = result.unwrap_err().to_string();
            assert!(err.contains(expected), "{id}: {err}");
        }
        assert!(store.delete(&b("good")).await.unwrap());
        assert!(!store.delete(&b("good")).await.unwrap(), "deleted twice");
    }
}
