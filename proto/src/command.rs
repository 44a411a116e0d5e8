//! Commands: the closed set of things the conductor asks of an agent.
//!
//! One enum, one `match` in the agent's dispatcher: adding a variant is a compile error
//! until every side handles it. A command this build does not know (sent by a newer
//! conductor) decodes to [`Command::Unknown`] and is answered `unsupported`, instead of
//! failing the whole message.

use serde::{Deserialize, Serialize};

use crate::failsafe::FailsafeAssignment;
use crate::{AgentKey, BackupId, InstanceId, Position, ProtocolVersion, Sealed};

/// Where a replica connects to read the replication stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEndpoint {
    pub instance: InstanceId,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationCredentials {
    pub user: String,
    /// Sealed by the master to the replica that logs in with it.
    pub password: Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupKind {
    Full,
    Incremental { parent: BackupId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    pub backup_id: BackupId,
    pub kind: BackupKind,
    /// The whole operation must end within this many seconds of its acceptance, or it
    /// is stopped and fails saying so (the agent's `max_operation_s` bounds it too).
    #[serde(default)]
    pub time_limit_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub backup_id: BackupId,
    /// The whole operation must end within this many seconds of its acceptance, or it
    /// is stopped and fails saying so (the agent's `max_operation_s` bounds it too).
    #[serde(default)]
    pub time_limit_s: Option<u64>,
}

/// Where a seeding target connects to pull a live copy from a source agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedSource {
    pub instance: InstanceId,
    pub host: String,
    pub port: u16,
    /// One-time token the conductor issued to the source with [`Command::OfferSeed`],
    /// sealed to the target.
    pub token: Sealed,
    /// The whole operation must end within this many seconds of its acceptance, or it
    /// is stopped and fails saying so (the agent's `max_operation_s` bounds it too).
    #[serde(default)]
    pub time_limit_s: Option<u64>,
}

/// Which databases a filtered replica applies: only these, or all but these. Each name
/// is `[A-Za-z0-9_]`, 1 to 64 characters ([`DatabaseFilter::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseFilter {
    Only(Vec<String>),
    Except(Vec<String>),
}

impl DatabaseFilter {
    pub fn databases(&self) -> &[String] {
        match self {
            DatabaseFilter::Only(d) | DatabaseFilter::Except(d) => d,
        }
    }

    /// At least one name, each a plain database name, none twice.
    pub fn check(&self) -> Result<(), String> {
        let names = self.databases();
        if names.is_empty() {
            return Err("a database filter names at least one database".into());
        }
        for (n, name) in names.iter().enumerate() {
            let plain = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !plain {
                return Err(format!(
                    "{name:?} is not a database name this filter takes (letters, digits and \
                     _, 1 to 64 of them)"
                ));
            }
            if names[..n].contains(name) {
                return Err(format!("database {name:?} is named twice"));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for DatabaseFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseFilter::Only(d) => write!(f, "only {}", d.join(", ")),
            DatabaseFilter::Except(d) => write!(f, "all but {}", d.join(", ")),
        }
    }
}

/// A replica an operator paused: stopped, or applying only up to `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Position>,
}

/// Semi-synchronous replication on a master: every commit waits until a replica has
/// the transaction, for at most `timeout_ms`; after that the master falls back to
/// asynchronous replication (and says so in its reports) rather than stop writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemiSyncSettings {
    pub timeout_ms: u64,
}

/// A side of a master-master pair. Each side logs its writes in a replication stream
/// of its own (MariaDB: GTID domain 1 or 2) and mints auto-increment keys the other
/// never does (offset 1 or 2, step 2): the two can replicate from each other, and what
/// either wrote can always be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairSide {
    /// The server the pair was made from.
    First,
    /// The peer that joined it.
    Second,
}

impl PairSide {
    /// Auto-increment keys step by this on both sides.
    pub const AUTO_INCREMENT_INCREMENT: u32 = 2;

    pub fn other(self) -> PairSide {
        match self {
            PairSide::First => PairSide::Second,
            PairSide::Second => PairSide::First,
        }
    }
    /// The GTID domain this side's writes are logged in (a server in no pair writes in
    /// domain 0).
    pub fn domain(self) -> u32 {
        match self {
            PairSide::First => 1,
            PairSide::Second => 2,
        }
    }
    /// The first auto-increment key this side mints (then every second one).
    pub fn auto_increment_offset(self) -> u32 {
        self.domain()
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PairSide::First => "first",
            PairSide::Second => "second",
        }
    }
}

impl std::fmt::Display for PairSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the conductor can ask of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Liveness and version check; answered with a pong.
    Ping,
    /// Answered with a fresh status report.
    GetStatus,
    /// Refuse writes from ordinary users.
    SetReadOnly,
    /// Accept writes.
    SetWritable,
    /// Prepare to be the source of a replica set (binary log, heartbeat writer), with
    /// semi-synchronous replication when `semi_sync` is given.
    EnableAsMaster {
        #[serde(default)]
        semi_sync: Option<SemiSyncSettings>,
    },
    /// Create (or give a new password to) the replication account of one replica,
    /// usable only from `from` (the address the replica connects from; any address when
    /// absent). The password is answered sealed to `seal_to`, the replica's key.
    CreateReplicationUser {
        replica: InstanceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        seal_to: AgentKey,
    },
    /// Drop the replication account of one replica.
    DropReplicationUser {
        replica: InstanceId,
    },
    /// Replicate from `source`, starting at `position` (or where the engine stands).
    AttachToSource {
        source: SourceEndpoint,
        credentials: ReplicationCredentials,
        #[serde(default)]
        position: Option<Position>,
        /// Acknowledge what it receives to a semi-synchronous master.
        #[serde(default)]
        semi_sync: bool,
        /// Apply each transaction this many seconds after the source wrote it (a
        /// delayed replica); 0 for none.
        #[serde(default)]
        delay_s: u64,
        /// Attach paused: the source is set but nothing is applied (with `until`, only
        /// up to there), so a paused replica re-pointed to a new master applies
        /// nothing on the way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        paused: Option<Paused>,
        /// Apply only some databases' changes (a filtered replica); all when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<DatabaseFilter>,
        /// The writable side of a master-master pair attaching to its passive peer
        /// (the reverse channel): it stays writable and stays the master (lease,
        /// heartbeats, semi-sync as a master), starting from everything it holds.
        /// Sent only after `configure_pair` (protocol v4).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        peer: bool,
    },
    /// Stop replicating and forget the source; the server becomes standalone.
    Detach,
    /// Stop acting as a master: read-only, heartbeat writer stopped.
    Demote,
    /// Read-only first, then stop replicating and forget the source (when it has one):
    /// the server holds what its source lacks, so it is kept apart until re-seeded.
    Quarantine,
    /// The engine's current position.
    GetLatestPosition,
    /// Wait until the engine has applied `position`, for at most `timeout_ms`.
    WaitForPosition {
        position: Position,
        timeout_ms: u64,
    },
    /// Stop receiving from the source and wait, for at most `timeout_ms`, until
    /// everything received has been applied; answered with the position then reached.
    /// A failover candidate is chosen among replicas drained this way. (MariaDB: the
    /// IO thread stops and the relay log is applied; PostgreSQL: the WAL receiver
    /// stops and replay catches up.) Its first name, `drain_relay_log`, still reads.
    #[serde(alias = "drain_relay_log")]
    DrainReceived {
        timeout_ms: u64,
    },
    /// Stop replicating, keeping the source (an operator's pause: for a consistent
    /// snapshot, for analytics, or to stop before a bad transaction). With `until`, the
    /// replica first applies up to that position and then stops there. A paused replica
    /// acknowledges nothing to a semi-synchronous master. Answered with the position
    /// when it stopped (with `until`, the position reached so far: it stops there).
    PauseReplication {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Position>,
    },
    /// Replicate again from where a pause stopped, from the same source, acknowledging
    /// to a semi-synchronous master when `semi_sync`.
    ResumeReplication {
        #[serde(default)]
        semi_sync: bool,
    },
    /// The engine's databases, answered with `databases` (its own schemas left out).
    ListDatabases,
    /// Take a backup; long-running, acknowledged on acceptance.
    TakeBackup(BackupRequest),
    /// Replace the data directory with a backup's (verified first); long-running.
    /// Answered with the position the restored server stands at.
    Restore(RestoreRequest),
    /// Delete one stored backup (its data and metadata).
    DeleteBackup {
        backup_id: BackupId,
    },
    /// Accept one seeding connection presenting `token` within `ttl_ms` (source side);
    /// the token is sealed to the source.
    OfferSeed {
        token: Sealed,
        ttl_ms: u64,
    },
    /// Replace the data directory with a live copy streamed from another agent;
    /// long-running. Nothing is touched until the copy is complete and prepared.
    SeedFrom(SeedSource),
    StopEngine,
    StartEngine,
    /// Stop a long command (by the message id it was sent with) at its next safe point:
    /// it then fails as cancelled, leaving the server as it was. One past its point of
    /// no return (installing a prepared copy) finishes instead.
    CancelOperation {
        operation: crate::MessageId,
    },
    /// The failsafe of this server's set (see [`crate::failsafe`]): as a master, whose
    /// promises renew its lease while the broker is unreachable; as a replica, whose
    /// pings it answers with one.
    Failsafe(FailsafeAssignment),
    /// Be one side of a master-master pair (its own write stream and auto-increment
    /// offset, kept across engine restarts), or with `None` no longer one (domain 0,
    /// increment 1). Changes no data and no writability.
    ConfigurePair {
        #[serde(default)]
        side: Option<PairSide>,
    },
    /// Read-only as `set_read_only` is (client sessions that could write ended), then
    /// answered with the position reached: the last write this server took. The first
    /// half of a switch in two round trips (protocol v5).
    StopWrites,
    /// Take over the writes of a peer that stopped at `position` (`stop_writes`): wait,
    /// for at most `timeout_ms`, until `position` is applied, refuse (`diverged`, staying
    /// read-only) when holding anything `position` lacks, then accept writes. Answered
    /// with the position it became writable at. The second half of a switch: only a
    /// side of a master-master pair is made writable while it replicates (protocol v5).
    TakeOverWrites {
        position: Position,
        timeout_ms: u64,
    },
    /// A command this build does not know. Never sent; produced by decoding.
    #[serde(other)]
    Unknown,
}

impl Command {
    /// A stable name for logs, audit rows and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::GetStatus => "get_status",
            Command::SetReadOnly => "set_read_only",
            Command::SetWritable => "set_writable",
            Command::EnableAsMaster { .. } => "enable_as_master",
            Command::CreateReplicationUser { .. } => "create_replication_user",
            Command::DropReplicationUser { .. } => "drop_replication_user",
            Command::AttachToSource { .. } => "attach_to_source",
            Command::Detach => "detach",
            Command::Demote => "demote",
            Command::Quarantine => "quarantine",
            Command::GetLatestPosition => "get_latest_position",
            Command::WaitForPosition { .. } => "wait_for_position",
            Command::DrainReceived { .. } => "drain_received",
            Command::PauseReplication { .. } => "pause_replication",
            Command::ListDatabases => "list_databases",
            Command::ResumeReplication { .. } => "resume_replication",
            Command::TakeBackup(_) => "take_backup",
            Command::Restore(_) => "restore",
            Command::DeleteBackup { .. } => "delete_backup",
            Command::OfferSeed { .. } => "offer_seed",
            Command::SeedFrom(_) => "seed_from",
            Command::StopEngine => "stop_engine",
            Command::StartEngine => "start_engine",
            Command::Failsafe(_) => "failsafe",
            Command::CancelOperation { .. } => "cancel_operation",
            Command::ConfigurePair { .. } => "configure_pair",
            Command::StopWrites => "stop_writes",
            Command::TakeOverWrites { .. } => "take_over_writes",
            Command::Unknown => "unknown",
        }
    }

    /// The protocol version that introduced this command (see [`crate::version`]).
    pub fn introduced_in(&self) -> ProtocolVersion {
        match self {
            Command::Ping
            | Command::GetStatus
            | Command::SetReadOnly
            | Command::SetWritable
            | Command::EnableAsMaster { .. }
            | Command::CreateReplicationUser { .. }
            | Command::DropReplicationUser { .. }
            | Command::AttachToSource { .. }
            | Command::Detach
            | Command::Demote
            | Command::Quarantine
            | Command::GetLatestPosition
            | Command::WaitForPosition { .. }
            | Command::DrainReceived { .. }
            | Command::TakeBackup(_)
            | Command::Restore(_)
            | Command::DeleteBackup { .. }
            | Command::OfferSeed { .. }
            | Command::SeedFrom(_)
            | Command::StopEngine
            | Command::StartEngine
            | Command::Failsafe(_)
            | Command::Unknown => ProtocolVersion::V1,
            Command::CancelOperation { .. } => ProtocolVersion::V2,
            Command::PauseReplication { .. }
            | Command::ResumeReplication { .. }
            | Command::ListDatabases => ProtocolVersion::V3,
            Command::ConfigurePair { .. } => ProtocolVersion::V4,
            Command::StopWrites | Command::TakeOverWrites { .. } => ProtocolVersion::V5,
        }
    }

    /// Commands by which the conductor gives a server its role: they lift a master's
    /// self-imposed fence (see the agent's lease).
    pub fn grants_role(&self) -> bool {
        matches!(
            self,
            Command::SetWritable
                | Command::TakeOverWrites { .. }
                | Command::EnableAsMaster { .. }
                | Command::Detach
                | Command::Demote
                | Command::Quarantine
                | Command::AttachToSource { .. }
        )
    }

    /// Commands after which this server may no longer stand by its master (drained,
    /// detached, re-pointed, writable, replaced, quarantined): a replica withdraws its
    /// failsafe promise and waits it out before it runs one (see [`crate::failsafe`]).
    pub fn withdraws_promise(&self) -> bool {
        matches!(
            self,
            Command::SetWritable
                | Command::TakeOverWrites { .. }
                | Command::EnableAsMaster { .. }
                | Command::AttachToSource { .. }
                | Command::Detach
                | Command::Quarantine
                | Command::DrainReceived { .. }
        )
    }

    /// Long commands are acknowledged on acceptance and report their result as an
    /// event, so that no broker delivery is held open for minutes.
    /// The time limit a long command carries, if any.
    pub fn time_limit(&self) -> Option<std::time::Duration> {
        match self {
            Command::TakeBackup(r) => r.time_limit_s,
            Command::Restore(r) => r.time_limit_s,
            Command::SeedFrom(s) => s.time_limit_s,
            _ => None,
        }
        .map(std::time::Duration::from_secs)
    }

    pub fn is_long_running(&self) -> bool {
        matches!(
            self,
            Command::TakeBackup(_) | Command::Restore(_) | Command::SeedFrom(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_filter_takes_only_plain_names_once() {
        let only =
            |names: &[&str]| DatabaseFilter::Only(names.iter().map(|n| n.to_string()).collect());
        assert!(only(&["sales", "stock_2"]).check().is_ok());
        for (bad, says) in [
            (only(&[]), "at least one"),
            (only(&["sales", "sales"]), "twice"),
            (only(&["a,b"]), "not a database name"),
            (only(&["x'; DROP"]), "not a database name"),
            (only(&[""]), "not a database name"),
        ] {
            let err = bad.check().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert_eq!(only(&["a", "b"]).to_string(), "only a, b");
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let c = Command::AttachToSource {
            source: SourceEndpoint {
                instance: InstanceId::new("db-1").unwrap(),
                host: "10.0.0.1".into(),
                port: 3306,
            },
            credentials: ReplicationCredentials {
                user: "tandem_repl_db2".into(),
                password: Sealed::from_bytes(b"hunter2"),
            },
            position: None,
            semi_sync: false,
            delay_s: 0,
            paused: None,
            filter: None,
            peer: false,
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("68756e74657232"), "{shown}");
        assert!(shown.contains("Sealed(7 bytes)"));
    }

    #[test]
    fn a_role_command_from_before_semi_sync_still_decodes() {
        let c: Command = serde_json::from_str(r#"{"command": "enable_as_master"}"#).unwrap();
        assert_eq!(c, Command::EnableAsMaster { semi_sync: None });
    }
}
