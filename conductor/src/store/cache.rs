//! What the hot paths read many times a second, held in memory beside the database:
//! every set with its members, which set each instance is in, and the active
//! workflows. The failure detector looks at every set ten times a second and every
//! status report checks its instance's set for drift; read from SQLite each time, that
//! is a query per set per tick and one per report, all behind the connection's lock.
//!
//! The copy is changed by the same calls that change the database, under the
//! connection's lock and right after their commit, with what they read inside their
//! transaction (nothing can fail in between), so it is never behind nor ahead of what
//! was committed: one conductor acts on the store at a time (the leadership), and it is
//! the only writer of sets and workflows. A conductor that takes the leadership of a
//! shared store reads the copy afresh (`begin_term`).

use std::collections::{BTreeMap, HashMap};

use tandem_proto::{InstanceId, ReplicaSetId, Timestamp};

use super::{ReplicaSet, WorkflowRow, WorkflowState};

#[derive(Default)]
pub(super) struct Cache {
    /// Changes with every change of a set (see [`Cache::generation`]).
    generation: u64,
    sets: BTreeMap<ReplicaSetId, ReplicaSet>,
    set_of: HashMap<InstanceId, ReplicaSetId>,
    /// Running or rolling back, oldest first.
    active: Vec<WorkflowRow>,
}

impl Cache {
    /// Holds `sets` and the `active` workflows (running or rolling back, any order).
    pub(super) fn of(sets: Vec<ReplicaSet>, mut active: Vec<WorkflowRow>) -> Cache {
        let mut cache = Cache::default();
        for set in sets {
            cache.put(set);
        }
        active.sort_by_key(|w| w.created_at);
        cache.active = active;
        cache.generation = next_generation();
        cache
    }

    /// A number that differs after any change of a set, also across a reload (it is
    /// drawn from one counter for the whole process).
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn set(&self, set: &ReplicaSetId) -> Option<ReplicaSet> {
        self.sets.get(set).cloned()
    }

    /// Every set, ordered by id.
    pub(super) fn sets(&self) -> Vec<ReplicaSet> {
        self.sets.values().cloned().collect()
    }

    pub(super) fn set_of(&self, instance: &InstanceId) -> Option<ReplicaSetId> {
        self.set_of.get(instance).cloned()
    }

    pub(super) fn active_workflows(&self) -> Vec<WorkflowRow> {
        self.active.clone()
    }

    /// Holds `set` as it is now, after a change to it (read inside the change's
    /// transaction, so nothing can fail between its commit and this).
    pub(super) fn put(&mut self, set: ReplicaSet) {
        self.remove(&set.id);
        self.generation = next_generation();
        for m in &set.members {
            self.set_of.insert(m.instance.clone(), set.id.clone());
        }
        self.sets.insert(set.id.clone(), set);
    }

    /// Forgets `set`, deleted.
    pub(super) fn remove(&mut self, set: &ReplicaSetId) {
        self.generation = next_generation();
        if let Some(old) = self.sets.remove(set) {
            for m in &old.members {
                if self.set_of.get(&m.instance) == Some(set) {
                    self.set_of.remove(&m.instance);
                }
            }
        }
    }

    /// A workflow was recorded.
    pub(super) fn started(&mut self, row: &WorkflowRow) {
        if is_active(row.state) {
            self.active.push(row.clone());
            self.active.sort_by_key(|w| w.created_at);
        }
    }

    /// A workflow's state changed, as `UPDATE workflows` changed it (an error given
    /// replaces the one held; none keeps it).
    pub(super) fn changed(
        &mut self,
        id: &str,
        state: WorkflowState,
        error: Option<&str>,
        at: Timestamp,
    ) {
        if !is_active(state) {
            self.active.retain(|w| w.id != id);
            return;
        }
        if let Some(w) = self.active.iter_mut().find(|w| w.id == id) {
            w.state = state;
            if let Some(e) = error {
                w.error = Some(e.to_owned());
            }
            w.updated_at = at;
        }
    }
}

fn next_generation() -> u64 {
    static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn is_active(state: WorkflowState) -> bool {
    matches!(state, WorkflowState::Running | WorkflowState::RollingBack)
}
