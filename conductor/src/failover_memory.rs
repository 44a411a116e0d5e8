//! What the conductor remembers of a set's failovers, in its store: the anti-flapping
//! clock (when the last automatic failover promoted someone) and, for each failed
//! master, where the master that replaced it stood (a returning server must hold
//! nothing beyond it to rejoin). Written by the failover workflow, read by the
//! detector and the rejoin workflow.

use tandem_proto::{InstanceId, Position, ReplicaSetId, Timestamp};

use crate::Conductor;

impl Conductor {
    /// Starts the anti-flapping window of `set`: an automatic failover promoted now.
    pub(crate) fn automatic_failover_done(&self, set: &ReplicaSetId) {
        let result = self.store.failover_state(set).and_then(|mut s| {
            s.last_automatic = Some(Timestamp::now());
            self.store.set_failover_state(set, &s)
        });
        if let Err(e) = result {
            tracing::error!(set = %set, error = %e, "cannot record the failover time");
        }
    }

    /// Remembers where `new master` stood when it replaced `failed` (see [`Verdict`]
    /// and the rejoin workflow).
    pub(crate) fn remember_failed_at(
        &self,
        set: &ReplicaSetId,
        failed: &InstanceId,
        at: &Position,
    ) {
        let result = self.store.failover_state(set).and_then(|mut s| {
            s.failed_at.insert(failed.to_string(), at.clone());
            self.store.set_failover_state(set, &s)
        });
        if let Err(e) = result {
            tracing::error!(set = %set, error = %e, "cannot record the promotion position");
        }
    }

    pub(crate) fn failed_at(&self, set: &ReplicaSetId, failed: &InstanceId) -> Option<Position> {
        self.store
            .failover_state(set)
            .ok()?
            .failed_at
            .get(failed.as_str())
            .cloned()
    }

    pub(crate) fn forget_failed_at(&self, set: &ReplicaSetId, failed: &InstanceId) {
        let result = self.store.failover_state(set).and_then(|mut s| {
            s.failed_at.remove(failed.as_str());
            self.store.set_failover_state(set, &s)
        });
        if let Err(e) = result {
            tracing::error!(set = %set, error = %e, "cannot update the failover state");
        }
    }
}
