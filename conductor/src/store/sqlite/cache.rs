//! What the hot paths read many times a second, held in memory beside the database:
//! every set with its members, which set each instance is in, and the active
//! workflows. The failure detector looks at every set ten times a second and every
//! status report checks its instance's set for drift; read from SQLite each time, that
//! is a query per set per tick and one per report, all behind the connection's lock.
//!
//! The copy is changed by the same calls that change the database, under the
//! connection's lock and after their commit, so it is never behind nor ahead of what was
//! committed: one conductor process holds the store at a time (the leadership lock), and
//! it is the only writer of sets and workflows.

use std::collections::{BTreeMap, HashMap};

use rusqlite::Connection;
use tandem_proto::{InstanceId, ReplicaSetId};

use super::rows::*;
use super::topology::load_set;
use super::{ReplicaSet, Result, WorkflowRow};

#[derive(Default)]
pub(super) struct Cache {
    sets: BTreeMap<ReplicaSetId, ReplicaSet>,
    set_of: HashMap<InstanceId, ReplicaSetId>,
    /// Running or rolling back, oldest first.
    active: Vec<WorkflowRow>,
}

impl Cache {
    pub(super) fn load(c: &Connection) -> Result<Cache> {
        let mut cache = Cache::default();
        let ids: Vec<String> = c
            .prepare("SELECT id FROM replica_sets")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for set in ids {
            cache.refresh_set(c, &id(set)?)?;
        }
        cache.refresh_workflows(c)?;
        Ok(cache)
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

    /// Reads `set` again from the database (gone: forgotten), after a change to it.
    pub(super) fn refresh_set(&mut self, c: &Connection, set: &ReplicaSetId) -> Result<()> {
        if let Some(old) = self.sets.remove(set) {
            for m in &old.members {
                if self.set_of.get(&m.instance) == Some(set) {
                    self.set_of.remove(&m.instance);
                }
            }
        }
        if let Some(now) = load_set(c, set)? {
            for m in &now.members {
                self.set_of.insert(m.instance.clone(), set.clone());
            }
            self.sets.insert(set.clone(), now);
        }
        Ok(())
    }

    /// Reads the active workflows again, after one started or changed state (rare
    /// next to the reads, and few: at most one per set).
    pub(super) fn refresh_workflows(&mut self, c: &Connection) -> Result<()> {
        self.active = c
            .prepare(&format!(
                "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE state IN ('running', \
                 'rolling_back') ORDER BY created_at"
            ))?
            .query_map([], workflow_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(())
    }
}
