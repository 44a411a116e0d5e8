//! Replica sets: their members as intended and as observed, their failover state, and
//! the requests that change them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_proto::{
    BackupId, DatabaseFilter, Epoch, FailsafeState, Health, InstanceId, Position, ReplicaSetId,
    Role, SemiSync, Timestamp,
};

use crate::instances::Contract;

/// The role the conductor wants an instance to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntendedRole {
    Master,
    Replica,
    /// A master replaced by a failover: read-only, replicating from nobody, until it
    /// comes back and is compared with the new master (rejoined or quarantined).
    Failed,
    /// Holds transactions the master does not have: kept out of replication until it
    /// is re-seeded (never silently rejoined).
    Quarantined,
}

crate::words!(IntendedRole {
    Master => "master",
    Replica => "replica",
    Failed => "failed",
    Quarantined => "quarantined",
});

/// One member of a replica set, as intended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    #[schema(value_type = String)]
    pub instance: InstanceId,
    pub role: IntendedRole,
    #[schema(value_type = Option<String>)]
    pub replicates_from: Option<InstanceId>,
    pub writable: bool,
    /// How a replica replicates (delay, pause); the defaults for any other member.
    #[serde(default)]
    pub options: ReplicaOptions,
}

/// The longest replication delay a replica may be given: a week.
pub const MAX_DELAY_S: u64 = 7 * 24 * 3600;

/// How one replica replicates, beyond where from. Chosen when it is added, changed by
/// a workflow (`tandem replica pause|resume|delay|catch-up`). A replica with any of
/// these is never promoted and acknowledges nothing to a semi-synchronous master.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaOptions {
    /// Each transaction is applied this many seconds after its source wrote it (a
    /// guard against a bad statement); 0 for none.
    #[serde(default)]
    pub delay_s: u64,
    /// Stopped by an operator: nothing is applied until it is resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Pause>,
    /// Only some databases are applied (`{"only": [...]}` or `{"except": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<DatabaseFilter>,
}

impl ReplicaOptions {
    /// Why a replica with these options is never promoted, when it is not.
    pub fn never_promoted(&self) -> Option<String> {
        if let Some(f) = &self.filter {
            return Some(format!(
                "a filtered replica ({f}): it does not hold all the data"
            ));
        }
        if let Some(p) = &self.paused {
            return Some(match &p.until {
                Some(until) => format!("paused by an operator (at {until})"),
                None => "paused by an operator".into(),
            });
        }
        (self.delay_s > 0).then(|| format!("a delayed replica ({} s)", self.delay_s))
    }

    /// Whether such a replica acknowledges to a semi-synchronous master: only one that
    /// could be promoted, so that an acknowledged write is on a possible successor.
    pub fn acknowledges(&self) -> bool {
        self.never_promoted().is_none()
    }
}

impl std::fmt::Display for ReplicaOptions {
    /// `delay 3600 s, paused until 0-1-42`; `as any replica` for the defaults.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.delay_s > 0 {
            parts.push(format!("delay {} s", self.delay_s));
        }
        match &self.paused {
            Some(Pause { until: Some(p), .. }) => parts.push(format!("paused at {p}")),
            Some(Pause { until: None, .. }) => parts.push("paused".into()),
            None => {}
        }
        if let Some(filter) = &self.filter {
            parts.push(format!("databases: {filter}"));
        }
        if parts.is_empty() {
            f.write_str("as any replica")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// An operator's pause of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pause {
    /// Where it stops: it applies up to here first (absent: where it stood).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub until: Option<Position>,
    #[schema(value_type = u64)]
    pub since: Timestamp,
}

/// A set's automatic failover switches and anti-flapping memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailoverState {
    /// Automatic failover paused by an operator (detection still runs and is shown).
    pub paused: bool,
    /// Semi-synchronous replication wanted for this set.
    pub semi_sync: bool,
    /// When the last automatic failover of this set started (ms since the Unix epoch).
    #[schema(value_type = Option<u64>)]
    pub last_automatic: Option<Timestamp>,
    /// Why an automatic failover is being held back (anti-flapping), until the window
    /// ends or an operator acknowledges it.
    pub blocked: Option<String>,
    /// For each failed master: where the master that replaced it stood when it was
    /// promoted. A returning server must hold nothing beyond it to rejoin.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub failed_at: BTreeMap<String, Position>,
}

/// What the failure detector concluded about a set's master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Healthy,
    /// Something is wrong with the master, but not enough to fail over.
    Suspected {
        reason: String,
    },
    /// Lost, but its lease may still keep it writable for this long.
    WaitingForLease {
        reason: String,
        remaining_ms: u64,
    },
    /// Lost: a failover may start.
    Lost {
        reason: String,
    },
}

impl Verdict {
    /// The verdict in words (`waiting for lease`), without its reason.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Suspected { .. } => "suspected",
            Verdict::WaitingForLease { .. } => "waiting for lease",
            Verdict::Lost { .. } => "lost",
        }
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Healthy => None,
            Verdict::Suspected { reason }
            | Verdict::WaitingForLease { reason, .. }
            | Verdict::Lost { reason } => Some(reason),
        }
    }
}

/// One member of a set: what the conductor wants, what the engine reports, and the
/// difference between the two.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    #[schema(value_type = String)]
    pub instance: InstanceId,
    pub intended: Member,
    pub observed: Option<Contract>,
    #[schema(value_type = Option<String>)]
    pub role: Option<Role>,
    #[schema(value_type = Option<String>)]
    pub health: Option<Health>,
    /// `{"gtid": "0-1-5"}` or `{"lsn": "16/B374D848"}`.
    #[schema(value_type = Option<Object>)]
    pub position: Option<Position>,
    pub lag_seconds: Option<f64>,
    /// `active`, `fallen_back` (a master whose commits no longer wait for a replica),
    /// `acknowledging` (a replica); absent when semi-sync is off.
    #[schema(value_type = Option<String>)]
    pub semi_sync: Option<SemiSync>,
    /// The agent set its engine read-only when its lease ran out.
    pub fenced: bool,
    /// Why this replica's history split from the master's, when it did.
    pub diverged: Option<String>,
    /// Whether its engine applies what it receives (false: paused, or stopped by an
    /// error); absent for a server that is not replicating.
    #[serde(default)]
    pub applying: Option<bool>,
    /// The delay its engine applies, in seconds (the intent is `intended.options`).
    #[serde(default)]
    pub engine_delay_s: Option<u64>,
    /// The database filter its engine applies.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub engine_filter: Option<DatabaseFilter>,
    /// Accounts that can write through read-only on this engine.
    pub fencing_hazards: Vec<String>,
    /// Managed settings waiting for an engine restart.
    pub restart_needed: Vec<String>,
    /// Its part in the set's failsafe: a master's list, or the master a replica
    /// answers (see `tandem_proto::failsafe`).
    #[schema(value_type = Option<Object>)]
    pub failsafe: Option<FailsafeState>,
    /// Empty when the engine does what the conductor wants.
    pub drift: Vec<String>,
    /// Where it runs (zone and host), as its agent reported.
    #[serde(default)]
    pub location: Option<crate::placement::Location>,
}

/// A set's failure detection and automatic failover, as they stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailoverView {
    /// Automatic failover on in the configuration and not paused for this set.
    pub automatic: bool,
    /// The detector's latest verdict on the master (absent until it looked).
    pub verdict: Option<Verdict>,
    #[serde(flatten)]
    pub state: FailoverState,
}

/// One replica set.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetView {
    #[schema(value_type = String)]
    pub id: ReplicaSetId,
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    #[schema(value_type = String)]
    pub master: InstanceId,
    pub members: Vec<MemberView>,
    pub failover: FailoverView,
    /// The placement rules the set keeps (the default when it names none).
    #[serde(default)]
    pub rules: Vec<crate::placement::PlacementRule>,
    /// What its servers break of those rules now.
    #[serde(default)]
    pub violations: Vec<crate::placement::Violation>,
    /// For a multi-zone DR set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dr: Option<crate::placement::DrView>,
    /// For a master-master pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<crate::PairView>,
}

impl SetView {
    pub fn member(&self, instance: &str) -> Option<&MemberView> {
        self.members
            .iter()
            .find(|m| m.instance.as_str() == instance)
    }
    /// Whether every member's engine does what the conductor wants.
    pub fn converged(&self) -> bool {
        self.members.iter().all(|m| m.drift.is_empty())
    }
}

/// `POST /v1/sets`: a standalone server becomes the master of a new set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateSet {
    #[schema(value_type = String)]
    pub id: ReplicaSetId,
    #[schema(value_type = String)]
    pub master: InstanceId,
    /// Semi-synchronous replication: a commit is acknowledged only once a replica has
    /// it, so a failover loses no acknowledged write.
    #[serde(default)]
    pub semi_sync: bool,
    /// Placement rules the set keeps (ids or names); none: soft anti-affinity by host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// A DR profile: a DR source is placed in its DR zone (from the pool), copied from
    /// the master, with `dr_replicas` more cascading from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dr: Option<String>,
    #[serde(default)]
    pub dr_replicas: u32,
    /// Which replicas acknowledge with semi-sync.
    #[serde(default)]
    pub ack_from: crate::placement::AckFrom,
    /// `master-master`: `peer` becomes the master's passive co-master.
    #[serde(default)]
    pub mode: crate::SetMode,
    /// The other side of a master-master pair: empty (it is seeded from the master)
    /// or holding the master's data already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub peer: Option<InstanceId>,
}

/// How new replicas get their data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeedMethod {
    /// Attach as it is: the binary log brings it up to date.
    #[default]
    None,
    /// A live copy from `from` (default the master).
    Stream,
    /// A stored backup (`backup`, default the set's newest).
    Backup,
    /// A recent backup if there is one, else a stream.
    Auto,
}

crate::words!(SeedMethod {
    None => "none",
    Stream => "stream",
    Backup => "backup",
    Auto => "auto",
});

/// `POST /v1/sets/{id}/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddReplica {
    /// One instance; or several in `instances` (seeded in parallel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub instance: Option<InstanceId>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub instances: Vec<InstanceId>,
    #[serde(default)]
    pub seed: SeedMethod,
    /// With `stream`: the member to copy from (default the master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub from: Option<InstanceId>,
    /// With `backup`: the backup (default the set's newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub backup: Option<BackupId>,
    /// A delayed replica: each transaction applied this many seconds late.
    #[serde(default)]
    pub delay_s: u64,
    /// A cascaded replica: it replicates from this member (default the master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub source: Option<InstanceId>,
    /// A filtered replica: only these databases' changes are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<DatabaseFilter>,
    /// Take this many servers from the free pool (instead of naming them), those that
    /// keep the set's placement rules; with a seed method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// With `count`: only servers in this zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// `POST /v1/sets/{id}/replicas/{instance}/filter`: a new database filter (none: every
/// database again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FilterReplica {
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<DatabaseFilter>,
}

/// `POST /v1/sets/{id}/replicas/{instance}/pause`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PauseReplica {
    /// Apply up to this position first, then stop there (e.g. just before a bad
    /// transaction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub until: Option<Position>,
    /// Pause even the last replica acknowledging to a semi-synchronous master (the
    /// master then falls back to asynchronous replication).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/sets/{id}/replicas/{instance}/delay`; a delay of 0 is a catch-up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DelayReplica {
    pub delay_s: u64,
    /// Delay even the last replica acknowledging to a semi-synchronous master.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/sets/{id}/switchover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Switchover {
    #[schema(value_type = String)]
    pub candidate: InstanceId,
    /// How long the candidate may take to apply the old master's last write before the
    /// switchover is rolled back (default 10 s; 100 to 3600000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_timeout_ms: Option<u64>,
}

/// `POST /v1/sets/{id}/failover`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failover {
    /// The replica to promote; default: the one the candidate rule picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub candidate: Option<InstanceId>,
    /// Fail over although the master looks healthy, or promote a candidate that is
    /// behind another replica or not eligible (transactions may be lost).
    #[serde(default)]
    pub force: bool,
}

/// `PUT /v1/sets/{id}/semi-sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SemiSyncRequest {
    pub enabled: bool,
}

/// `POST /v1/sets/{id}/failover/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailoverAction {
    /// Automatic failover paused (detection goes on and is shown).
    Pause,
    Resume,
    /// Acknowledge the last automatic failover: one held back by the anti-flapping
    /// window may then go ahead.
    Ack,
}

crate::words!(FailoverAction {
    Pause => "pause",
    Resume => "resume",
    Ack => "ack",
});
