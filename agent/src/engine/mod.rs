//! The one interface every engine adapter implements.
//!
//! Shaped for both engines: a position is a [`Position`] (GTID set or LSN); "attach"
//! covers MariaDB's `CHANGE MASTER … MASTER_USE_GTID` and PostgreSQL's
//! `primary_conninfo` + `standby.signal`; "detach" covers `RESET SLAVE ALL` and
//! `pg_promote()`; a restart-requiring setting is reported rather than silently applied.

pub mod mariadb;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tandem_proto::{
    CommandError, DatabaseFilter, EngineKind, ErrorKind, InstanceId, Lag, Paused, Position,
    ReplicationState, SourceEndpoint,
};

use crate::operations::Progress;

/// How an attached replica applies what it receives: the options an operator gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applying {
    /// Each transaction this long after its source wrote it (a delayed replica).
    pub delay: Duration,
    /// Attached paused: nothing applied (with a stop position, only up to it).
    pub paused: Option<Paused>,
    /// Only some databases' changes (a filtered replica).
    pub filter: Option<DatabaseFilter>,
    /// The writable side of a master-master pair replicating its passive peer: its
    /// writability is left as it is.
    pub peer: bool,
}

/// A replication account as the engine uses it, password in clear: it exists only in
/// the agent's memory (the wire carries the password sealed to the replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationLogin {
    pub user: String,
    pub password: tandem_proto::Secret,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulse {
    pub receiving: Option<bool>,
    /// Whether a replica's applier runs (`None`: not a replica). It stopping is news
    /// at once: it is how a replica whose history split from its source's shows.
    pub applying: Option<bool>,
}

/// What the engine says about itself, right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub version: String,
    /// Accepts writes from ordinary users.
    pub writable: bool,
    /// `(host, port)` the engine replicates from, if it is a replica.
    pub source: Option<(String, u16)>,
    /// Replicas currently streaming from this engine.
    pub replicas: Vec<InstanceId>,
    pub position: Position,
    pub replication: Option<ReplicationState>,
    pub lag: Option<Lag>,
    pub seconds_behind_master: Option<u64>,
    pub semi_sync: Option<tandem_proto::SemiSync>,
    /// Safety-relevant settings as the engine reports them (durability, GTID mode…).
    pub settings: BTreeMap<String, String>,
    /// Accounts, not the agent's own, that can write while the engine is read-only.
    pub fencing_hazards: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Refused(String),
    /// The agent's own admin account cannot log in: nothing the agent does can work.
    #[error("{0}")]
    LoginRefused(String),
    #[error("{0}")]
    BadRequest(String),
    /// The engine did not answer in time (may succeed if asked again).
    #[error("{0}")]
    TimedOut(String),
    /// What was waited for did not happen within the caller's own deadline: final.
    #[error("{0}")]
    NotReached(String),
    #[error("{0}")]
    Unsupported(String),
    /// A replica holds what its source never sent, or cannot apply what it sends.
    #[error("diverged: {0}")]
    Diverged(String),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<EngineError> for CommandError {
    fn from(e: EngineError) -> CommandError {
        let kind = match &e {
            EngineError::Unavailable(_) => ErrorKind::EngineUnavailable,
            EngineError::Refused(_) | EngineError::LoginRefused(_) => ErrorKind::EngineRefused,
            EngineError::BadRequest(_) => ErrorKind::BadRequest,
            EngineError::TimedOut(_) | EngineError::NotReached(_) => ErrorKind::TimedOut,
            EngineError::Unsupported(_) => ErrorKind::Unsupported,
            EngineError::Internal(_) => ErrorKind::Internal,
            EngineError::Diverged(_) => ErrorKind::Diverged,
        };
        let mut error = CommandError::new(kind, e.to_string());
        if matches!(e, EngineError::NotReached(_)) {
            error.retryable = false;
        }
        error
    }
}

/// What applying the managed configuration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOutcome {
    /// Settings changed on the running engine.
    pub applied_live: Vec<String>,
    /// Settings that only take effect after a restart, with their live and wanted values.
    pub restart_needed: Vec<String>,
}

pub trait Engine: Send + Sync + 'static {
    fn kind(&self) -> EngineKind;

    /// A cheap check, run every probe interval: the engine answers, and whether a
    /// replica still receives from its source (`None`: not a replica). A change of
    /// either is reported at once, not at the next status interval: the conductor's
    /// failure detection rests on both.
    fn probe(&self) -> impl Future<Output = Result<Pulse, EngineError>> + Send;

    /// Everything a status report needs.
    fn observe(&self) -> impl Future<Output = Result<Observation, EngineError>> + Send;

    /// Writes the settings the agent owns to the managed include and applies what can be
    /// applied live.
    /// `pair`: the side of a master-master pair the server is, if any (its write
    /// stream and key offsets are managed settings too).
    fn apply_managed_config(
        &self,
        instance: &InstanceId,
        pair: Option<tandem_proto::PairSide>,
    ) -> impl Future<Output = Result<ConfigOutcome, EngineError>> + Send;

    /// Writable or read-only. Going read-only from writable also ends every client
    /// session but the agent's own and replication's: a session that logged in with
    /// the power to write past read-only would otherwise keep it.
    fn set_writable(&self, writable: bool) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Read-only now, whatever is in flight: the lease ran out. Commits that cannot
    /// finish (a semi-sync master's, waiting for a replica it lost) must not hold the
    /// fence back, and must not be acknowledged to their clients later either.
    fn fence(&self) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Takes the power to write past read-only away from every account in `accounts`
    /// (as [`Observation::fencing_hazards`] names them) and ends their sessions, which
    /// keep the privilege they logged in with, where the engine's configuration allows
    /// it (MariaDB: `engine.mariadb.revoke_read_only_bypass`). Returns the accounts it
    /// did not fix, each with why where it tried.
    fn remove_fencing_hazards(
        &self,
        accounts: &[String],
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;

    /// Prepares this engine to be a source: the heartbeat table, binary log checks.
    fn prepare_master(&self) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Records "now" in the heartbeat table (master only), for replicas' true lag.
    fn write_heartbeat(&self) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Creates (or re-keys) the replication account of one replica, usable only from
    /// `from` (any address when `None`); the replica's accounts for other addresses go.
    fn ensure_replication_user(
        &self,
        replica: &InstanceId,
        from: Option<&str>,
    ) -> impl Future<Output = Result<ReplicationLogin, EngineError>> + Send;

    /// Drops one replica's replication account and ends its sessions.
    fn drop_replication_user(
        &self,
        replica: &InstanceId,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Replicates from `source`, read-only, applying as `applying` says. Checks the
    /// source is reachable with these credentials before changing anything.
    fn attach(
        &self,
        me: &InstanceId,
        source: &SourceEndpoint,
        login: &ReplicationLogin,
        position: Option<&Position>,
        applying: &Applying,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Stops replicating and forgets the source. Leaves writability alone.
    fn detach(&self, me: &InstanceId) -> impl Future<Output = Result<(), EngineError>> + Send;

    fn latest_position(&self) -> impl Future<Output = Result<Position, EngineError>> + Send;

    /// Waits until everything up to `position` has been applied.
    fn wait_for_position(
        &self,
        position: &Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Semi-synchronous replication for this server's role: as a master, commits wait
    /// up to `master` for a replica's acknowledgement (`None`: off); as a replica,
    /// acknowledge what is received (from the next attach).
    fn set_semi_sync(
        &self,
        master: Option<Duration>,
        replica: bool,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Stops replicating, keeping the source; with `until`, applies up to that position
    /// first and stops there. Acknowledges nothing to a semi-synchronous master while
    /// paused. Returns the position applied when it returns (with `until`, the applier
    /// may still be on its way there). Refused on a server that is not a replica, and
    /// for an `until` the replica has already passed.
    fn pause_replication(
        &self,
        until: Option<&Position>,
    ) -> impl Future<Output = Result<Position, EngineError>> + Send;

    /// The databases applications keep here (the engine's own schemas left out).
    fn databases(&self) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;

    /// Replicates again, from where a pause stopped and from the same source;
    /// acknowledging to a semi-synchronous master when `semi_sync`. Refused on a server
    /// that is not a replica.
    fn resume_replication(
        &self,
        semi_sync: bool,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Stops receiving from the source (the connection only: the applier goes on) and
    /// waits until everything received has been applied; returns the position reached.
    /// Refused on a server that is not a replica, and at once on one whose applier is
    /// paused or delayed (it could never finish in time; neither is ever promoted).
    fn drain(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Position, EngineError>> + Send;

    /// Starts a consistent physical copy of the live data as a byte stream (MariaDB:
    /// `mariabackup --stream=xbstream`), changes only since `since` (a checkpoint of an
    /// earlier copy) for an incremental. The caller reads `output` to its end, then
    /// awaits `finish`, which says whether the copy is good and where it stands.
    fn backup_stream(
        &self,
        scratch: &Path,
        since: Option<&str>,
    ) -> impl Future<Output = Result<BackupStream, EngineError>> + Send;

    /// Unpacks one stream made by [`Engine::backup_stream`] into the empty directory `dir`.
    fn unpack(
        &self,
        from: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
        dir: &Path,
        progress: &Progress,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Makes an unpacked full copy consistent, applying unpacked incrementals on it in
    /// order; returns the position the result stands at.
    fn prepare(
        &self,
        full: &Path,
        incrementals: &[PathBuf],
    ) -> impl Future<Output = Result<Position, EngineError>> + Send;

    /// Replaces the data directory with the prepared copy `prepared`: stops the engine,
    /// swaps the directories, starts it read-only. If the new one does not start, the
    /// old one is put back and started, and the error says so.
    fn install(&self, prepared: &Path) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Where a prepared copy is built: beside the data directory (one filesystem, so
    /// that installing it is a rename).
    fn staging_dir(&self, name: &str) -> PathBuf;

    /// About how many bytes a full copy of this server takes unpacked (its data, not
    /// the logs a copy leaves out): what seeding or restoring it needs free.
    fn copy_size(&self) -> u64;

    fn stop(&self) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn start(&self) -> impl Future<Output = Result<(), EngineError>> + Send;
}

/// A physical copy in flight: read `output` to its end, then await `finish`.
pub struct BackupStream {
    pub output: tokio::process::ChildStdout,
    pub finish: Pin<Box<dyn Future<Output = Result<StreamEnd, EngineError>> + Send>>,
}

/// What a finished copy is consistent at.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEnd {
    pub position: Option<Position>,
    /// Where an incremental taken after this copy starts (MariaDB: the InnoDB LSN).
    pub checkpoint: Option<String>,
    pub engine_version: String,
}

/// The replication account name for one replica: per replica, so that detaching one
/// drops exactly its access, and so that a source can tell its replicas apart.
pub fn replication_user(replica: &InstanceId) -> String {
    format!("tandem_repl_{replica}")
}

/// The inverse of [`replication_user`].
pub fn replica_of_user(user: &str) -> Option<InstanceId> {
    user.strip_prefix("tandem_repl_")
        .and_then(|id| InstanceId::new(id).ok())
}

/// MariaDB `server_id` for an instance: derived from the id (FNV-1a), so it is the same
/// on every start and on every host, never 0.
pub fn server_id_for(instance: &InstanceId) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in instance.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // MariaDB's server_id is 1..=2^32-1.
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids_are_stable_and_distinct_for_neighbours() {
        let id = |s: &str| server_id_for(&InstanceId::new(s).unwrap());
        assert_eq!(id("db-1"), id("db-1"));
        let ids: std::collections::HashSet<u32> =
            (1..=200).map(|n| id(&format!("db-{n}"))).collect();
        assert_eq!(ids.len(), 200);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn replication_user_names_round_trip() {
        let i = InstanceId::new("db_7-x").unwrap();
        assert_eq!(replica_of_user(&replication_user(&i)), Some(i));
        assert_eq!(replica_of_user("root"), None);
    }
}
