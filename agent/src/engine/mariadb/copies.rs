//! Physical copies as the `Engine` trait asks for them, through mariabackup
//! ([`super::backup`]).

use std::path::{Path, PathBuf};

use mysql_async::prelude::Queryable;
use tandem_proto::Position;

use super::*;
use crate::engine::{BackupStream, EngineError};
use crate::operations::Progress;

impl MariaDb {
    pub(super) async fn backup_stream(
        &self,
        scratch: &Path,
        since: Option<&str>,
    ) -> Result<BackupStream, EngineError> {
        let version: String = {
            let mut c = self.conn().await?;
            timed("read version", c.query_first("SELECT @@version"))
                .await?
                .unwrap_or_default()
        };
        super::backup::stream(&self.config, &self.own, version, scratch, since).await
    }

    pub(super) async fn unpack(
        &self,
        from: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
        dir: &Path,
        progress: &Progress,
    ) -> Result<(), EngineError> {
        super::backup::unpack(from, dir, progress).await
    }

    pub(super) async fn prepare(
        &self,
        full: &Path,
        incrementals: &[PathBuf],
    ) -> Result<Position, EngineError> {
        super::backup::prepare(full, incrementals).await
    }
}
