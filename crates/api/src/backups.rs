//! Backups: asked for, followed, listed, cancelled, deleted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_proto::{BackupId, BackupInfo, InstanceId};

/// What kind of backup to take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TakeBackupKind {
    #[default]
    Full,
    /// Only the changes since `parent`.
    Incremental,
}

crate::words!(TakeBackupKind {
    Full => "full",
    Incremental => "incremental",
});

/// `POST /v1/instances/{id}/backups`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TakeBackup {
    #[serde(default)]
    pub kind: TakeBackupKind,
    /// For an incremental: the backup it continues (default: this instance's newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub parent: Option<BackupId>,
}

/// The answer to `POST /v1/instances/{id}/backups`: the backup runs in the background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupStarted {
    #[schema(value_type = String)]
    pub backup_id: BackupId,
    #[schema(value_type = String)]
    pub instance: InstanceId,
}

/// Where a backup that is not recorded yet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupRunState {
    Running,
    Failed,
}

/// A backup asked for and not recorded (yet): running, or failed and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupRunView {
    #[schema(value_type = String)]
    pub instance: InstanceId,
    pub state: BackupRunState,
    pub error: Option<String>,
}

/// `GET /v1/backups`: recorded backups, newest first, and those asked for since the
/// conductor started that are not recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupList {
    #[schema(value_type = Vec<Object>)]
    pub backups: Vec<BackupInfo>,
    #[schema(value_type = Object)]
    pub running: BTreeMap<BackupId, BackupRunView>,
}

/// `GET /v1/backups/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BackupStatus {
    Done {
        #[schema(value_type = Object)]
        backup: Box<BackupInfo>,
    },
    Running {
        #[schema(value_type = String)]
        instance: InstanceId,
    },
    Failed {
        #[schema(value_type = String)]
        instance: InstanceId,
        error: Option<String>,
    },
}

/// The answer to a cancel: asked for; the result shows in the backup's or the
/// workflow's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CancelRequested {
    #[schema(value_type = String)]
    pub backup: BackupId,
}
