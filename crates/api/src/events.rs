//! The live event stream (`GET /v1/events`, Server-Sent Events): one JSON event per
//! `data:` line.

use serde::{Deserialize, Serialize};
use tandem_proto::{Health, InstanceId, ReplicaSetId, Role, Timestamp};

use crate::sets::Verdict;
use crate::workflows::{WorkflowKind, WorkflowState};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ApiEvent {
    /// An instance's role, writability, source or health changed (or it appeared).
    InstanceChanged {
        instance: InstanceId,
        role: Role,
        writable: Option<bool>,
        replicates_from: Option<InstanceId>,
        health: Health,
        at: Timestamp,
    },
    /// A member's engine differs from what the conductor wants; raised again with every
    /// report until it is closed.
    Drift {
        set: ReplicaSetId,
        instance: InstanceId,
        differences: Vec<String>,
        at: Timestamp,
    },
    DriftClosed {
        set: ReplicaSetId,
        instance: InstanceId,
        at: Timestamp,
    },
    WorkflowStarted {
        workflow: String,
        kind: WorkflowKind,
        set: ReplicaSetId,
        at: Timestamp,
    },
    WorkflowStep {
        workflow: String,
        seq: u32,
        step: String,
        target: InstanceId,
        ok: bool,
        at: Timestamp,
    },
    WorkflowEnded {
        workflow: String,
        state: WorkflowState,
        error: Option<String>,
        at: Timestamp,
    },
    /// The failure detector changed its mind about a set's master.
    MasterVerdict {
        set: ReplicaSetId,
        master: InstanceId,
        verdict: Verdict,
        at: Timestamp,
    },
    /// An automatic failover is held back by the anti-flapping window.
    FailoverBlocked {
        set: ReplicaSetId,
        reason: String,
        at: Timestamp,
    },
    /// A master that keeps fencing itself gets its writes back only after a growing
    /// hold, so that a host missing its lease again and again is not a storm of write
    /// outages.
    RestoreWritesHeld {
        set: ReplicaSetId,
        master: InstanceId,
        restores_in_a_row: u32,
        hold_ms: u64,
        at: Timestamp,
    },
    /// An instance's key was pinned (`by`: `token`, the agent's enrolment proof, or
    /// `operator`).
    InstanceEnrolled {
        instance: InstanceId,
        key: String,
        by: String,
        at: Timestamp,
    },
    /// An instance's key was forgotten by an operator: nothing naming it is believed
    /// until it enrols again.
    InstanceRekeyed {
        instance: InstanceId,
        generation: u64,
        at: Timestamp,
    },
    /// A status report naming this instance was not signed by its enrolled key and was
    /// dropped (raised once per instance, key and reason).
    MessageRefused {
        instance: InstanceId,
        reason: String,
        at: Timestamp,
    },
    /// A returning server holds transactions the master lacks and is kept apart.
    Quarantined {
        set: ReplicaSetId,
        instance: InstanceId,
        position: String,
        master_position: String,
        at: Timestamp,
    },
    /// A set breaks placement rules (all it breaks now; raised again whenever that
    /// changes).
    PlacementViolation {
        set: ReplicaSetId,
        violations: Vec<crate::placement::Violation>,
        at: Timestamp,
    },
    /// A set that broke placement rules keeps them all again.
    PlacementRestored { set: ReplicaSetId, at: Timestamp },
    /// The conductor processes status reports later than their period (`lag_ms` the
    /// wait of the report it just processed): it keeps only each instance's newest,
    /// `waiting` of them, `replaced` older ones dropped so far.
    IntakeBehind {
        lag_ms: u64,
        waiting: usize,
        replaced: u64,
        /// Reports waiting in the broker, not yet received.
        #[serde(default)]
        backlog: u64,
        at: Timestamp,
    },
    /// The status intake keeps up again.
    IntakeCaughtUp { lag_ms: u64, at: Timestamp },
    /// This subscriber fell behind and missed `missed` events (the conductor never
    /// slows down for a subscriber).
    Lagged { missed: u64 },
}
