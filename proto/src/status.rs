//! Status reports: what an agent publishes on its own, every interval and on change.

use serde::{Deserialize, Serialize};

use crate::{Epoch, HostId, InstanceId, MessageId, Position, Timestamp, VersionRange};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    Mariadb,
    Postgresql,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Mariadb => "mariadb",
            EngineKind::Postgresql => "postgresql",
        })
    }
}

/// A network address of an engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// The replication role the *engine* is in, as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Neither replicates from anyone nor feeds a replica.
    Standalone,
    /// The source of a replica set.
    Master,
    /// Replicates from a source.
    Replica,
    /// The engine could not be asked (it is down, or the agent is starting).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Starting,
    Healthy,
    /// The engine runs but something needs attention (a replication thread stopped…).
    Degraded,
    /// The engine's process or socket is gone.
    EngineDown,
    /// The agent is shutting down; this is its last report.
    Stopping,
}

/// How a lag figure was obtained; they differ in what they can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LagSource {
    /// Age of the newest heartbeat row the master's agent wrote and this replica applied:
    /// true lag, also when the master is idle or the applier is stopped.
    HeartbeatTable,
    /// MariaDB's `Seconds_Behind_Master`: blind when the SQL thread is stopped.
    SecondsBehindMaster,
    /// PostgreSQL `now() - pg_last_xact_replay_timestamp()`.
    ReplayTimestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    pub seconds: f64,
    pub source: LagSource,
}

/// The state of the replica's replication threads (MariaDB IO/SQL, PostgreSQL
/// WAL receiver/replay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationState {
    /// Receives from the source (IO thread / WAL receiver streaming).
    pub receiving: bool,
    /// Applies what it received (SQL thread / replay not paused).
    pub applying: bool,
    #[serde(default)]
    pub last_receive_error: Option<String>,
    #[serde(default)]
    pub last_apply_error: Option<String>,
    /// Position received but perhaps not yet applied.
    #[serde(default)]
    pub received: Option<Position>,
    /// The replica's history has split from its source's: its applier stopped on a
    /// transaction that is out of order or already there, or the source lacks what it
    /// asks for. Waiting never fixes this; the replica must be re-seeded.
    #[serde(default)]
    pub diverged: Option<String>,
    /// The delay the replica applies transactions with (MariaDB `MASTER_DELAY`), in
    /// seconds; 0 for none.
    #[serde(default)]
    pub delay_s: u64,
    /// The databases it applies, when it filters them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::DatabaseFilter>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostMetrics {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Free bytes on the file system of the engine's data directory.
    #[serde(default)]
    pub data_dir_free_bytes: Option<u64>,
    /// The agent's own resident memory.
    #[serde(default)]
    pub agent_rss_bytes: Option<u64>,
}

/// A long-running command in progress (a backup, a restore): acknowledged on
/// acceptance, reported here while it runs, and finished by an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationProgress {
    /// The message id of the command that started it.
    pub operation: MessageId,
    pub command: String,
    pub phase: String,
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: Option<u64>,
    pub started_at: Timestamp,
    /// Bytes per second over the last few seconds.
    #[serde(default)]
    pub rate_bytes_per_sec: Option<u64>,
    /// Seconds left at the current rate, when the total is known.
    #[serde(default)]
    pub eta_seconds: Option<u64>,
}

/// One agent's view of its instance, published every interval and on every change.
///
/// Reports are ordered by `sequence` (per agent, monotonic across restarts): a
/// receiver ignores a report older than one it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub instance: InstanceId,
    #[serde(default)]
    pub zone: String,
    /// The physical host this instance runs on (from the agent's configuration), when
    /// known: the failure domain under the zone.
    #[serde(default)]
    pub host_id: Option<HostId>,
    /// Operator-defined labels from the agent's configuration (placement rules match them).
    #[serde(default)]
    pub tags: Vec<String>,
    pub agent_version: String,
    pub protocol: VersionRange,
    pub engine: EngineKind,
    #[serde(default)]
    pub engine_version: Option<String>,
    /// Where replicas reach this engine (the agent's configured, advertised address).
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// Where this agent accepts seeding connections (with a token from the conductor).
    #[serde(default)]
    pub seed_endpoint: Option<Endpoint>,
    pub role: Role,
    /// Whether the engine accepts writes from ordinary users; `None` when unknown.
    #[serde(default)]
    pub writable: Option<bool>,
    #[serde(default)]
    pub replicates_from: Option<InstanceId>,
    #[serde(default)]
    pub replicates_to: Vec<InstanceId>,
    #[serde(default)]
    pub position: Option<Position>,
    #[serde(default)]
    pub lag: Option<Lag>,
    /// MariaDB's own figure beside ours, for comparison.
    #[serde(default)]
    pub seconds_behind_master: Option<u64>,
    #[serde(default)]
    pub replication: Option<ReplicationState>,
    pub health: Health,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub host: HostMetrics,
    pub highest_epoch: Epoch,
    pub sequence: u64,
    pub taken_at: Timestamp,
    /// Long commands running now.
    #[serde(default)]
    pub operations: Vec<OperationProgress>,
    /// Safety-relevant engine settings as the engine reports them (durability, GTID
    /// mode, read_only…), so an operator sees what "no loss" rests on.
    #[serde(default)]
    pub engine_settings: std::collections::BTreeMap<String, String>,
    /// The master's agent lost the broker for longer than its lease and set its engine
    /// read-only on its own; it stays so until the conductor gives it a role again.
    #[serde(default)]
    pub fenced: bool,
    /// How long this agent, as a master, keeps its engine writable without reaching the
    /// broker. The conductor never promotes a replica before the lease of a master it
    /// cannot reach has run out.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// Commands this agent refused for their signature (unsigned, unknown key, forged or
    /// tampered) since it started; each was dead-lettered unread.
    #[serde(default)]
    pub refused_commands: u64,
    /// This server's part in its set's failsafe (see [`crate::failsafe`]), if any.
    #[serde(default)]
    pub failsafe: Option<crate::FailsafeState>,
    /// Semi-synchronous replication, when the engine has it switched on.
    #[serde(default)]
    pub semi_sync: Option<SemiSync>,
    /// Accounts other than Tandem's own that can write while the engine is read-only
    /// (MariaDB: `READ_ONLY ADMIN`, part of `ALL ON *.*`), as `'user'@'host'`. Each is
    /// a hole in every fence; the agent removes the privilege unless configured not to.
    #[serde(default)]
    pub fencing_hazards: Vec<String>,
    /// Managed settings that only take effect after an engine restart, each with its
    /// live and wanted value; recomputed whenever the engine (re)starts.
    #[serde(default)]
    pub restart_needed: Vec<String>,
    /// The side of a master-master pair this server was configured as, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_side: Option<crate::PairSide>,
}

/// Semi-synchronous replication as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SemiSync {
    /// Master: every commit waits for a replica's acknowledgement.
    Active,
    /// Master: no replica acknowledged in time, so commits no longer wait (a failover
    /// now may lose acknowledged writes).
    FallenBack,
    /// Replica: acknowledges what it receives.
    Acknowledging,
}
