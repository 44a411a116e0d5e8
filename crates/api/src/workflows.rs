//! Workflows: what each was asked to do (typed per kind), where it stands, and the
//! journal of the commands it sent; and the audit of API requests.

use serde::{Deserialize, Serialize};
use tandem_proto::{BackupId, CommandError, Epoch, InstanceId, MessageId, ReplicaSetId, Timestamp};

use crate::ReplicaOptions;

/// How new replicas get their data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Seed {
    /// A live copy streamed from `from`'s agent (the master or a replica).
    Stream { from: InstanceId },
    /// A stored backup (a full, or an incremental and its chain).
    Backup { backup_id: BackupId },
}

/// What a workflow was asked to do: its parameters, fixed when it is accepted, so that a
/// resumed workflow knows where it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkflowSpec {
    /// A standalone server becomes the master of a new set.
    CreateSet {
        set: ReplicaSetId,
        master: InstanceId,
    },
    /// An existing or empty server becomes a read-only replica of the set's master.
    Attach {
        set: ReplicaSetId,
        instance: InstanceId,
        #[serde(default)]
        options: ReplicaOptions,
        /// A cascaded replica's source (default the master).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<InstanceId>,
    },
    /// A replica leaves the set and becomes an independent writable server.
    Detach {
        set: ReplicaSetId,
        instance: InstanceId,
    },
    /// Planned switchover: no data loss, the old master becomes a replica.
    Switchover {
        set: ReplicaSetId,
        candidate: InstanceId,
        /// The master when the request was accepted.
        from: InstanceId,
        /// The set's epoch when the request was accepted: the old master is fenced
        /// above it.
        epoch: Epoch,
        /// How long the candidate may take to catch up (default 10 s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        catch_up_timeout_ms: Option<u64>,
    },
    /// A multi-zone DR set: its master in the primary zone, a DR source in the DR
    /// zone copied from it, DR replicas copied from the DR source and cascading from it.
    /// A master-master pair from a master and its peer (seeded from it first when
    /// `seed`): each configured as its side, each replicating the other.
    CreatePair {
        set: ReplicaSetId,
        master: InstanceId,
        peer: InstanceId,
        seed: bool,
    },
    CreateDrSet {
        set: ReplicaSetId,
        master: InstanceId,
        /// None when the pool had no server for it: the first server `make` starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dr_source: Option<InstanceId>,
        #[serde(default)]
        dr_replicas: Vec<InstanceId>,
        /// The DR side's servers the provisioner is to start (the pool had too few);
        /// they come after those named above.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        make: Option<crate::MakeServers>,
    },
    /// "Flip the switch": the writer moves to the DR source with no loss; the old
    /// primary zone becomes the DR side (its master replicates from the new master, its
    /// replicas stay cascaded under it).
    DrSwitch {
        set: ReplicaSetId,
        candidate: InstanceId,
        from: InstanceId,
        epoch: Epoch,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        catch_up_timeout_ms: Option<u64>,
    },
    /// Restore the master from a replica: `instance` (fresh, from the pool) is seeded
    /// from replica `from` (directly, or through a full backup of it), attached, and
    /// switched over to.
    RebuildMaster {
        set: ReplicaSetId,
        from: InstanceId,
        instance: InstanceId,
        #[serde(default)]
        via_backup: bool,
    },
    /// Fresh servers are seeded (in parallel) and attached as replicas.
    Provision {
        set: ReplicaSetId,
        instances: Vec<InstanceId>,
        seed: Seed,
        #[serde(default)]
        options: ReplicaOptions,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<InstanceId>,
        /// Servers to have the provisioner start first (the pool had too few), which
        /// then join `instances`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        make: Option<crate::MakeServers>,
    },
    /// The master is lost: a replica takes its place (automatic, or an operator's eject).
    Failover {
        set: ReplicaSetId,
        failed: InstanceId,
        #[serde(default)]
        candidate: Option<InstanceId>,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        automatic: bool,
        /// Why the detector judged the master lost (automatic failovers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// A DR failover (`tandem dr failover`): the primary zone is lost; a member of
        /// the DR zone is promoted and the primary zone's members are invalidated
        /// (compared with the new master when they return).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        site: bool,
    },
    /// A failed master is back: fenced by the epoch, compared with the master, then
    /// rejoined as a replica or quarantined.
    Rejoin {
        set: ReplicaSetId,
        instance: InstanceId,
    },
    /// The master is healthy but read-only outside any workflow (its lease fenced it,
    /// or its engine restarted read-only): writes are given back at the current epoch.
    RestoreWrites { set: ReplicaSetId },
    /// Semi-synchronous replication switched on or off for a running set.
    SemiSync { set: ReplicaSetId, on: bool },
    /// A replica on the wrong source, or with the wrong delay, replicates from the
    /// master as intended again (or is quarantined when it holds what the master lacks).
    Repoint {
        set: ReplicaSetId,
        instance: InstanceId,
    },
    /// A replica whose history split from the master's is taken out of replication
    /// and kept out of every promotion until it is re-seeded.
    Quarantine {
        set: ReplicaSetId,
        instance: InstanceId,
        reason: String,
    },
    /// The set's failsafe assignment brought in line with its membership.
    Failsafe { set: ReplicaSetId },
    /// A cascaded replica's source is lost: its replicas replicate from the nearest
    /// healthy member above it.
    Reparent { set: ReplicaSetId, lost: InstanceId },
    /// A replica's options changed (paused, resumed, delayed, caught up): recorded,
    /// then applied on its engine; the old options back when the engine refuses.
    Reconfigure {
        set: ReplicaSetId,
        instance: InstanceId,
        options: ReplicaOptions,
    },
}

/// The kinds of workflow: [`WorkflowSpec`]'s tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowKind {
    CreateSet,
    Attach,
    Detach,
    Switchover,
    Provision,
    Failover,
    Rejoin,
    RestoreWrites,
    SemiSync,
    Repoint,
    Quarantine,
    Failsafe,
    Reconfigure,
    Reparent,
    CreateDrSet,
    DrSwitch,
    RebuildMaster,
    CreatePair,
}

crate::words!(WorkflowKind {
    CreateSet => "create_set",
    Attach => "attach",
    Detach => "detach",
    Switchover => "switchover",
    Provision => "provision",
    Failover => "failover",
    Rejoin => "rejoin",
    RestoreWrites => "restore_writes",
    SemiSync => "semi_sync",
    Repoint => "repoint",
    Quarantine => "quarantine",
    Failsafe => "failsafe",
    Reconfigure => "reconfigure",
    Reparent => "reparent",
    CreateDrSet => "create_dr_set",
    DrSwitch => "dr_switch",
    RebuildMaster => "rebuild_master",
    CreatePair => "create_pair",
});

impl WorkflowKind {
    /// Background upkeep the detector starts on a quiet set: an operator's request
    /// waits for it (it takes a moment) instead of being refused as busy.
    pub fn is_upkeep(self) -> bool {
        matches!(
            self,
            WorkflowKind::Failsafe | WorkflowKind::RestoreWrites | WorkflowKind::Repoint
        )
    }
}

impl WorkflowSpec {
    pub fn kind(&self) -> WorkflowKind {
        match self {
            WorkflowSpec::CreateSet { .. } => WorkflowKind::CreateSet,
            WorkflowSpec::Attach { .. } => WorkflowKind::Attach,
            WorkflowSpec::Detach { .. } => WorkflowKind::Detach,
            WorkflowSpec::Switchover { .. } => WorkflowKind::Switchover,
            WorkflowSpec::Provision { .. } => WorkflowKind::Provision,
            WorkflowSpec::Failover { .. } => WorkflowKind::Failover,
            WorkflowSpec::Rejoin { .. } => WorkflowKind::Rejoin,
            WorkflowSpec::RestoreWrites { .. } => WorkflowKind::RestoreWrites,
            WorkflowSpec::SemiSync { .. } => WorkflowKind::SemiSync,
            WorkflowSpec::Quarantine { .. } => WorkflowKind::Quarantine,
            WorkflowSpec::Repoint { .. } => WorkflowKind::Repoint,
            WorkflowSpec::Failsafe { .. } => WorkflowKind::Failsafe,
            WorkflowSpec::Reconfigure { .. } => WorkflowKind::Reconfigure,
            WorkflowSpec::Reparent { .. } => WorkflowKind::Reparent,
            WorkflowSpec::CreateDrSet { .. } => WorkflowKind::CreateDrSet,
            WorkflowSpec::DrSwitch { .. } => WorkflowKind::DrSwitch,
            WorkflowSpec::RebuildMaster { .. } => WorkflowKind::RebuildMaster,
            WorkflowSpec::CreatePair { .. } => WorkflowKind::CreatePair,
        }
    }

    /// Whether the workflow runs long steps (seeding, restores) that an operator can
    /// cancel: only those are stopped; short steps always run to their end.
    pub fn cancellable(&self) -> bool {
        matches!(
            self,
            WorkflowSpec::Provision { .. }
                | WorkflowSpec::CreateDrSet { .. }
                | WorkflowSpec::CreatePair { .. }
                | WorkflowSpec::RebuildMaster { .. }
        )
    }

    pub fn set(&self) -> &ReplicaSetId {
        match self {
            WorkflowSpec::CreateSet { set, .. }
            | WorkflowSpec::Attach { set, .. }
            | WorkflowSpec::Detach { set, .. }
            | WorkflowSpec::Switchover { set, .. }
            | WorkflowSpec::Provision { set, .. }
            | WorkflowSpec::Failover { set, .. }
            | WorkflowSpec::Rejoin { set, .. }
            | WorkflowSpec::RestoreWrites { set }
            | WorkflowSpec::SemiSync { set, .. }
            | WorkflowSpec::Quarantine { set, .. }
            | WorkflowSpec::Repoint { set, .. }
            | WorkflowSpec::Reconfigure { set, .. }
            | WorkflowSpec::Reparent { set, .. }
            | WorkflowSpec::CreateDrSet { set, .. }
            | WorkflowSpec::CreatePair { set, .. }
            | WorkflowSpec::DrSwitch { set, .. }
            | WorkflowSpec::RebuildMaster { set, .. }
            | WorkflowSpec::Failsafe { set } => set,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    Running,
    RollingBack,
    Done,
    RolledBack,
    Failed,
}

crate::words!(WorkflowState {
    Running => "running",
    RollingBack => "rolling_back",
    Done => "done",
    RolledBack => "rolled_back",
    Failed => "failed",
});

impl WorkflowState {
    pub fn is_active(self) -> bool {
        matches!(self, WorkflowState::Running | WorkflowState::RollingBack)
    }
}

/// One workflow and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowRow {
    pub id: String,
    pub kind: WorkflowKind,
    #[schema(value_type = String)]
    pub set_id: ReplicaSetId,
    /// What it was asked to do (`kind` is its tag).
    #[schema(value_type = Object)]
    pub params: WorkflowSpec,
    pub state: WorkflowState,
    pub requested_by: String,
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
    #[schema(value_type = u64)]
    pub updated_at: Timestamp,
}

/// One command a workflow sent (or is about to send), written before it is published;
/// or a finding of the workflow (`command` is `note`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JournalEntry {
    pub workflow_id: String,
    pub seq: u32,
    pub step: String,
    #[schema(value_type = String)]
    pub target: InstanceId,
    pub command: String,
    #[schema(value_type = String)]
    pub message_id: MessageId,
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// The reply (a `Reply`), or the note's finding; `None` while the command is in
    /// flight. Passwords are redacted in every API answer.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    #[schema(value_type = u64)]
    pub sent_at: Timestamp,
}

/// Where one journaled step stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    InFlight,
    Ok,
    Failed(String),
}

impl JournalEntry {
    pub const NOTE: &'static str = "note";

    pub fn is_note(&self) -> bool {
        self.command == Self::NOTE
    }

    pub fn outcome(&self) -> StepOutcome {
        match &self.result {
            None => StepOutcome::InFlight,
            Some(_) if self.is_note() => StepOutcome::Ok,
            // Read as a `Reply` by its tag only: a redacted reply (passwords are
            // `***`) no longer parses whole.
            Some(v) => match v.get("err") {
                Some(err) => StepOutcome::Failed(
                    serde_json::from_value::<CommandError>(err.clone())
                        .map(|e| e.message)
                        .unwrap_or_else(|_| err.to_string()),
                ),
                None => StepOutcome::Ok,
            },
        }
    }
}

/// `GET /v1/workflows/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowDetail {
    pub workflow: WorkflowRow,
    pub steps: Vec<JournalEntry>,
}

/// One request that changed (or tried to change) something: the audit of who asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiRequest {
    #[schema(value_type = u64)]
    pub at: Timestamp,
    /// The token's name.
    pub who: String,
    pub method: String,
    pub path: String,
    /// The HTTP status answered.
    pub status: u16,
}

impl WorkflowDetail {
    /// The finding a step named `step` noted, read as `T`.
    pub fn note<T: serde::de::DeserializeOwned>(
        &self,
        step: &str,
    ) -> Option<Result<T, serde_json::Error>> {
        self.steps
            .iter()
            .find(|s| s.is_note() && s.step == step)
            .and_then(|s| s.result.clone())
            .map(serde_json::from_value)
    }
}

/// What a failover did, noted as its last step ([`FailoverSummary::STEP`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverSummary {
    pub failed_master: InstanceId,
    pub new_master: InstanceId,
    pub epoch: Epoch,
    /// Where the new master stood when it was promoted.
    pub position: tandem_proto::Position,
    /// The old master's last reported position.
    pub old_master_position: Option<tandem_proto::Position>,
    /// Transactions the old master reported that the new one lacks (possible only with
    /// asynchronous replication); `None` when the two have diverged.
    pub lost_transactions: Option<u64>,
    /// How the old master was kept from writing.
    pub old_master: String,
    /// Replicas not chosen as the candidate, each with why.
    pub excluded: Vec<(InstanceId, String)>,
    /// Members that do not replicate from the new master yet, each with why.
    pub not_repointed: Vec<String>,
    /// Why the detector judged the master lost (automatic failovers).
    pub reason: Option<String>,
}

impl FailoverSummary {
    pub const STEP: &'static str = "failover summary";
}
