//! The live event stream: status changes and workflow progress, as they happen.
//!
//! A broadcast channel fans events out to every `GET /v1/events` subscriber (Server-Sent
//! Events). A slow subscriber that falls behind is told how many events it missed rather
//! than slowing the conductor down.

use serde::Serialize;
use tandem_proto::{Health, InstanceId, Role, Timestamp};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Serialize)]
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
        set: String,
        instance: InstanceId,
        differences: Vec<String>,
        at: Timestamp,
    },
    DriftClosed {
        set: String,
        instance: InstanceId,
        at: Timestamp,
    },
    WorkflowStarted {
        workflow: String,
        kind: String,
        set: String,
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
        state: String,
        error: Option<String>,
        at: Timestamp,
    },
    /// The failure detector changed its mind about a set's master.
    MasterVerdict {
        set: String,
        master: InstanceId,
        verdict: crate::failover::Verdict,
        at: Timestamp,
    },
    /// An automatic failover is held back by the anti-flapping window.
    FailoverBlocked {
        set: String,
        reason: String,
        at: Timestamp,
    },
    /// A master that keeps fencing itself gets its writes back only after a growing
    /// hold, so that a host missing its lease again and again is not a storm of write
    /// outages.
    RestoreWritesHeld {
        set: String,
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
        set: String,
        instance: InstanceId,
        position: String,
        master_position: String,
        at: Timestamp,
    },
}

pub struct Events {
    tx: broadcast::Sender<ApiEvent>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Events { tx }
    }
}

impl Events {
    pub fn publish(&self, event: ApiEvent) {
        // No subscriber is fine: events are a view, not a record (the store is).
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ApiEvent> {
        self.tx.subscribe()
    }
}
