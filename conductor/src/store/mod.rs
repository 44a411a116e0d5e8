//! The conductor's store: the only source of truth for intent.
//!
//! Every workflow step is written here before its command is published; every topology
//! change bumps its replica set's epoch in the same transaction that records it; at most
//! one workflow per replica set is active, enforced by the store (a unique index), not by
//! a check-then-set. SQLite by default ([`sqlite::SqliteStore`]); PostgreSQL
//! ([`postgres::PgStore`]) for conductors that share one store. Both keep the same
//! tables, and what a topology change means is decided once, in memory ([`change`]).

mod cache;
mod change;
pub use change::Beside;
pub mod migrations;
mod pair;
mod placement;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod suite;

pub use pair::{PairRecord, PairStore};
pub use placement::PlacementStore;

use serde::{Deserialize, Serialize};
pub use tandem_api::{
    ApiRequest, FailoverState, IntendedRole, JournalEntry, Member, ReplicaOptions, WorkflowRow,
    WorkflowState,
};
use tandem_proto::{Epoch, InstanceId, ReplicaSetId, Timestamp};
use tandem_transport::identity::PublicKey;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("replica set {set} already has an active workflow ({active}); wait for it or look at it with `tandem workflow show {active}`")]
    Busy { set: ReplicaSetId, active: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// A write by a conductor whose term has ended: another conductor took the store.
    #[error("this conductor's term {mine} has ended: term {now} acts on the store now, so this conductor writes nothing more and stops acting")]
    Fenced { mine: u64, now: u64 },
    #[error("store: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Internal(format!("stored JSON: {e}"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    pub id: ReplicaSetId,
    pub epoch: Epoch,
    pub master: InstanceId,
    pub members: Vec<Member>,
    pub created_at: Timestamp,
}

/// A set for tests: `members` as (instance, source), the one without a source its
/// master.
#[cfg(test)]
pub(crate) fn sample_set(epoch: u64, members: &[(&str, Option<&str>)]) -> ReplicaSet {
    let id = |s: &str| InstanceId::new(s).unwrap();
    let members: Vec<Member> = members
        .iter()
        .map(|(name, from)| Member {
            instance: id(name),
            role: if from.is_some() {
                IntendedRole::Replica
            } else {
                IntendedRole::Master
            },
            replicates_from: from.map(id),
            writable: from.is_none(),
            options: Default::default(),
        })
        .collect();
    ReplicaSet {
        id: ReplicaSetId::new("s1").unwrap(),
        epoch: Epoch::new(epoch),
        master: members
            .iter()
            .find(|m| m.role == IntendedRole::Master)
            .map(|m| m.instance.clone())
            .expect("a member without a source"),
        members,
        created_at: Timestamp(0),
    }
}

impl ReplicaSet {
    pub fn replicas(&self) -> impl Iterator<Item = &InstanceId> {
        self.members
            .iter()
            .filter(|m| m.role == IntendedRole::Replica)
            .map(|m| &m.instance)
    }

    pub fn member(&self, instance: &InstanceId) -> Option<&Member> {
        self.members.iter().find(|m| &m.instance == instance)
    }

    /// The replicas that replicate from `source` in the intent (for the master: its
    /// direct replicas; for a replica: those cascaded under it).
    pub fn replicas_of<'a>(
        &'a self,
        source: &'a InstanceId,
    ) -> impl Iterator<Item = &'a InstanceId> {
        self.members
            .iter()
            .filter(move |m| {
                m.role == IntendedRole::Replica && m.replicates_from.as_ref() == Some(source)
            })
            .map(|m| &m.instance)
    }

    /// Where `instance` replicates from in the intent, and that source's sources up to
    /// the master, nearest first (empty for a server that replicates from nobody).
    pub fn ancestors(&self, instance: &InstanceId) -> Vec<InstanceId> {
        let mut chain: Vec<InstanceId> = Vec::new();
        let mut at = instance;
        while let Some(from) = self.member(at).and_then(|m| m.replicates_from.as_ref()) {
            // A cycle cannot be stored (a source is always a member already in the
            // tree), but a walk never trusts that.
            if chain.contains(from) || from == instance {
                break;
            }
            chain.push(from.clone());
            at = from;
        }
        chain
    }
}

/// A change of a set's intended topology; applying one bumps the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyChange {
    AddReplica {
        instance: InstanceId,
        options: ReplicaOptions,
        /// The member it replicates from (a cascaded replica); the master when `None`.
        source: Option<InstanceId>,
    },
    /// A replica replicates from another member (its source was lost, or moved).
    Reparent {
        instance: InstanceId,
        source: InstanceId,
    },
    /// A replica's options (delay, pause) change.
    SetOptions {
        instance: InstanceId,
        options: ReplicaOptions,
    },
    RemoveReplica {
        instance: InstanceId,
    },
    /// `new_master` becomes the writable master; every other member replicates from it.
    NewMaster {
        new_master: InstanceId,
    },
    /// After a failover: `new_master` is the writable master, `failed` (the lost master)
    /// awaits its return, every other member replicates from the new master.
    Failover {
        new_master: InstanceId,
        failed: InstanceId,
    },
    /// A DR switch: `new_master` (the DR source) is the writable master; the old master
    /// replicates from it, and every other member keeps its source (the old master's
    /// replicas cascade under it now). The set's DR zones become `dr`.
    SiteSwitch {
        new_master: InstanceId,
        dr: tandem_api::DrSettings,
    },
    /// A DR failover: `new_master` (in the DR zone) is the writable master; `failed`
    /// (the lost primary zone's members, its master first) await their return; the
    /// set's DR zones become `dr`.
    SiteFailover {
        new_master: InstanceId,
        failed: Vec<InstanceId>,
        dr: tandem_api::DrSettings,
    },
    /// A failed or quarantined member replicates from the master again.
    Rejoin {
        instance: InstanceId,
    },
    /// A returning member holds transactions the master lacks: kept apart.
    Quarantine {
        instance: InstanceId,
    },
    /// The set is a master-master pair (again): the master replicates from its other
    /// side, its replica, as that replicates from it.
    PairUp {
        pair: PairRecord,
    },
    /// A pair's writable side moves to `new_active`: it is the master (still
    /// replicating its peer), the old one its passive replica, and the replicas of the
    /// old one follow the new one; `pair` carries the new passive side's ledger.
    PairSwitch {
        new_active: InstanceId,
        pair: PairRecord,
    },
}

impl std::fmt::Display for TopologyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyChange::AddReplica { instance, .. } => {
                write!(f, "store: add replica {instance}")
            }
            TopologyChange::Reparent { instance, source } => {
                write!(f, "store: {instance} replicates from {source}")
            }
            TopologyChange::SetOptions { instance, options } => {
                write!(f, "store: options of {instance}: {options}")
            }
            TopologyChange::RemoveReplica { instance } => {
                write!(f, "store: remove replica {instance}")
            }
            TopologyChange::NewMaster { new_master } => write!(f, "store: new master {new_master}"),
            TopologyChange::Failover { new_master, failed } => {
                write!(f, "store: failover from {failed} to {new_master}")
            }
            TopologyChange::SiteSwitch { new_master, dr } => write!(
                f,
                "store: new master {new_master}, primary zone {}, DR zone {}",
                dr.primary, dr.dr
            ),
            TopologyChange::SiteFailover {
                new_master,
                failed,
                dr,
            } => {
                let failed: Vec<String> = failed.iter().map(|i| i.to_string()).collect();
                write!(
                    f,
                    "store: DR failover to {new_master} in {}, invalidated {}",
                    dr.primary,
                    failed.join(", ")
                )
            }
            TopologyChange::Rejoin { instance } => write!(f, "store: rejoin {instance}"),
            TopologyChange::Quarantine { instance } => write!(f, "store: quarantine {instance}"),
            TopologyChange::PairUp { pair } => write!(
                f,
                "store: master-master pair {} and {}",
                pair.first, pair.second
            ),
            TopologyChange::PairSwitch { new_active, .. } => {
                write!(f, "store: {new_active} is the pair's active side")
            }
        }
    }
}

/// What the store keeps of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: InstanceId,
    pub zone: String,
    pub engine: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The physical host it runs on, as its agent reported.
    pub host_id: Option<tandem_proto::HostId>,
}

impl InstanceRecord {
    /// What the store keeps of an instance, from its report.
    pub fn of(r: &tandem_proto::StatusReport) -> InstanceRecord {
        InstanceRecord {
            id: r.instance.clone(),
            zone: r.zone.clone(),
            engine: r.engine.to_string(),
            host: r.endpoint.as_ref().map(|e| e.host.clone()),
            port: r.endpoint.as_ref().map(|e| e.port),
            host_id: r.host_id.clone(),
        }
    }
}

/// Which workflows a list holds: newest first (by creation, then id), at most `limit`,
/// starting after `after` (the last one of the page before).
#[derive(Debug, Clone, Default)]
pub struct WorkflowFilter {
    pub set: Option<ReplicaSetId>,
    pub kind: Option<tandem_api::WorkflowKind>,
    pub state: Option<WorkflowState>,
    pub after: Option<WorkflowCursor>,
    pub limit: usize,
}

/// Where a workflow stands in the list's order; `<created_at>~<id>` in a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowCursor {
    pub created_at: Timestamp,
    pub id: String,
}

impl WorkflowCursor {
    pub fn of(w: &WorkflowRow) -> Self {
        WorkflowCursor {
            created_at: w.created_at,
            id: w.id.clone(),
        }
    }
}

impl std::fmt::Display for WorkflowCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}~{}", self.created_at.0, self.id)
    }
}

impl std::str::FromStr for WorkflowCursor {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (at, id) = s.split_once('~').ok_or(())?;
        Ok(WorkflowCursor {
            created_at: Timestamp(at.parse().map_err(|_| ())?),
            id: id.to_owned(),
        })
    }
}

/// Which journal entries the audit holds: newest first (by time sent, workflow, step),
/// at most `limit`, starting after `after` (the last one of the page before).
#[derive(Debug, Clone, Default)]
pub struct JournalFilter {
    pub workflow: Option<String>,
    pub target: Option<InstanceId>,
    pub set: Option<ReplicaSetId>,
    pub after: Option<JournalCursor>,
    pub limit: usize,
}

/// Where a journal entry stands in the audit's order; `<sent_at>~<workflow>~<seq>` in a
/// cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalCursor {
    pub sent_at: Timestamp,
    pub workflow_id: String,
    pub seq: u32,
}

impl JournalCursor {
    pub fn of(e: &JournalEntry) -> Self {
        JournalCursor {
            sent_at: e.sent_at,
            workflow_id: e.workflow_id.clone(),
            seq: e.seq,
        }
    }
}

impl std::fmt::Display for JournalCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}~{}~{}", self.sent_at.0, self.workflow_id, self.seq)
    }
}

impl std::str::FromStr for JournalCursor {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (at, rest) = s.split_once('~').ok_or(())?;
        let (workflow_id, seq) = rest.rsplit_once('~').ok_or(())?;
        Ok(JournalCursor {
            sent_at: Timestamp(at.parse().map_err(|_| ())?),
            workflow_id: workflow_id.to_owned(),
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

pub trait Store: PlacementStore + PairStore + Send + Sync + 'static {
    fn upsert_instance(&self, record: &InstanceRecord) -> Result<()>;
    /// Records many instances at once, writing only those that differ from what is
    /// stored: after a restart every instance reports as new, and a fleet's worth of
    /// commits (each one flushed to disk) would hold up everything behind the store.
    fn upsert_instances(&self, records: &[InstanceRecord]) -> Result<()> {
        records.iter().try_for_each(|r| self.upsert_instance(r))
    }
    fn instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>>;

    fn metadata(&self, id: &InstanceId) -> Result<Vec<(String, String)>>;
    fn set_metadata(&self, id: &InstanceId, key: &str, value: &str) -> Result<()>;
    fn delete_metadata(&self, id: &InstanceId, key: &str) -> Result<bool>;

    /// Creates a set with `master` as its only member, at a fresh epoch.
    fn create_set(&self, id: &ReplicaSetId, master: &InstanceId) -> Result<ReplicaSet>;
    fn set(&self, id: &ReplicaSetId) -> Result<Option<ReplicaSet>>;
    fn sets(&self) -> Result<Vec<ReplicaSet>>;
    /// The set `instance` belongs to, if any.
    fn set_of(&self, instance: &InstanceId) -> Result<Option<ReplicaSetId>>;
    /// A number that differs after any change of any set, for a reader that keeps what
    /// it made of them (the failure detector); `None` when this store cannot tell, and
    /// every read must be taken as changed.
    fn sets_generation(&self) -> Option<u64> {
        None
    }
    /// Applies `change` and bumps the epoch, atomically; returns the set after it.
    fn apply(&self, id: &ReplicaSetId, change: &TopologyChange) -> Result<ReplicaSet>;
    /// As [`Store::apply`], and journals it as step `seq` of a workflow in the same
    /// transaction; when that step is already journaled, changes nothing (a replayed
    /// workflow never bumps an epoch twice).
    fn apply_step(
        &self,
        workflow_id: &str,
        seq: u32,
        step: &str,
        id: &ReplicaSetId,
        change: &TopologyChange,
    ) -> Result<ReplicaSet>;
    /// Bumps the epoch without a membership change.
    fn bump_epoch(&self, id: &ReplicaSetId) -> Result<Epoch>;
    /// Removes a set and its membership (a failed creation).
    fn delete_set(&self, id: &ReplicaSetId) -> Result<()>;

    /// Starts a workflow; fails with [`StoreError::Busy`] when the set has an active one.
    fn start_workflow(&self, row: &WorkflowRow) -> Result<()>;
    fn workflow(&self, id: &str) -> Result<Option<WorkflowRow>>;
    /// Workflows newest first, as `filter` keeps them.
    fn workflows(&self, filter: &WorkflowFilter) -> Result<Vec<WorkflowRow>>;
    fn active_workflows(&self) -> Result<Vec<WorkflowRow>>;
    fn update_workflow(&self, id: &str, state: WorkflowState, error: Option<&str>) -> Result<()>;
    /// Records that `by` asked workflow `id` to stop (a second request changes nothing).
    fn request_cancel(&self, id: &str, by: &str) -> Result<()>;
    /// Who asked workflow `id` to stop, if anyone did.
    fn cancel_requested(&self, id: &str) -> Result<Option<String>>;

    fn journal_entry(&self, workflow_id: &str, seq: u32) -> Result<Option<JournalEntry>>;
    fn journal_insert(&self, entry: &JournalEntry) -> Result<()>;
    fn journal_result(&self, workflow_id: &str, seq: u32, result: &serde_json::Value)
        -> Result<()>;
    fn journal(&self, workflow_id: &str) -> Result<Vec<JournalEntry>>;
    /// Journal entries of all workflows newest first, as `filter` keeps them: the
    /// audit log.
    fn journal_recent(&self, filter: &JournalFilter) -> Result<Vec<JournalEntry>>;

    /// A set's failover switches (defaults when never set).
    fn failover_state(&self, set: &ReplicaSetId) -> Result<FailoverState>;
    fn set_failover_state(&self, set: &ReplicaSetId, state: &FailoverState) -> Result<()>;

    // Backups.
    fn record_backup(&self, info: &tandem_proto::BackupInfo) -> Result<()>;
    /// Newest first; all instances' when `instance` is None.
    fn backups(&self, instance: Option<&InstanceId>) -> Result<Vec<tandem_proto::BackupInfo>>;
    fn forget_backup(&self, id: &tandem_proto::BackupId) -> Result<bool>;

    /// The next conductor term (a fencing number), taken by a conductor that just became
    /// the store's acting one (see `crate::leadership`).
    fn begin_term(&self) -> Result<u64>;

    // The failsafe (see `tandem_proto::failsafe`).
    /// The conductor's failsafe secret: random, made at first use, kept here.
    fn failsafe_secret(&self) -> Result<Vec<u8>>;
    /// Records the failsafe list about to be sent to `master` at `epoch`, and forgets
    /// the lists of the set's earlier masters and those of this one older than the list
    /// it reports holding (`held`; it refuses anything older than that).
    fn record_failsafe_list(
        &self,
        set: &ReplicaSetId,
        master: &InstanceId,
        epoch: Epoch,
        peers: &[InstanceId],
        held: Option<Epoch>,
    ) -> Result<()>;
    /// The lists recorded for `master`, oldest first.
    fn failsafe_lists(
        &self,
        set: &ReplicaSetId,
        master: &InstanceId,
    ) -> Result<Vec<(Epoch, Vec<InstanceId>)>>;

    // Enrolment (see `crate::enrolment`).
    fn enrolments(&self) -> Result<Vec<Enrolment>>;
    /// Pins `key` for `instance`; a conflict when another key is pinned (re-keying is
    /// [`Store::unpin_key`] first, on purpose).
    fn pin_key(&self, instance: &InstanceId, key: &PublicKey) -> Result<Enrolment>;
    /// Forgets `instance`'s key and moves it to the next key generation, so that its
    /// earlier enrolment token no longer enrols anything.
    fn unpin_key(&self, instance: &InstanceId) -> Result<Enrolment>;

    // API tokens (see `crate::tokens`): only their hashes are kept.
    /// A conflict when the name is taken.
    fn add_token(&self, name: &str, role: crate::access::Role, hash: &str) -> Result<()>;
    fn token_by_hash(&self, hash: &str) -> Result<Option<crate::access::Caller>>;
    fn tokens(&self) -> Result<Vec<crate::access::TokenRecord>>;
    fn revoke_token(&self, name: &str) -> Result<bool>;
    /// Records a request that changed (or tried to change) something, and who made it.
    fn record_request(&self, request: &ApiRequest) -> Result<()>;
    /// The latest recorded requests, newest first.
    fn requests(&self, limit: usize) -> Result<Vec<ApiRequest>>;
}

/// The key an instance speaks with, as pinned at enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub instance: InstanceId,
    /// `None` before the first enrolment and after a re-key.
    pub key: Option<PublicKey>,
    /// Rises with every re-key; the enrolment token is derived from it.
    pub generation: u64,
}

impl Enrolment {
    /// With `key` pinned: a conflict when another key is pinned (re-keying is
    /// [`Enrolment::rekeyed`] first, on purpose).
    pub fn pinned(&self, key: &PublicKey) -> Result<Enrolment> {
        match self.key {
            Some(pinned) if pinned != *key => Err(StoreError::Conflict(format!(
                "instance {} is enrolled with another key ({pinned}); re-key it first \
                 (`tandem instance rekey {}`) if the new key is truly its own",
                self.instance, self.instance
            ))),
            _ => Ok(Enrolment {
                key: Some(*key),
                ..self.clone()
            }),
        }
    }

    /// With no key pinned and the next key generation: its earlier enrolment token no
    /// longer enrols anything.
    pub fn rekeyed(&self) -> Enrolment {
        Enrolment {
            key: None,
            generation: self.generation + 1,
            ..self.clone()
        }
    }
}
