//! Placement, done: where each server runs (from its agent's reports, else from the
//! store), the rules a set keeps, and the watch that raises `placement_violation`
//! while a set breaks one and `placement_restored` once it holds again. The decisions
//! are [`crate::decide::placement`]'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_api::{Location, PlacementRule, Violation};
use tandem_proto::{InstanceId, ReplicaSetId, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::decide::placement::{effective, violations, Placement};
use crate::events::ApiEvent;
use crate::store::{IntendedRole, ReplicaSet, StoreError};
use crate::Conductor;

/// How often every set's placement is looked at: hosts change rarely (a VM migrated
/// to another hypervisor), so a second is plenty.
const EVERY: Duration = Duration::from_secs(1);

/// Where `instance` runs: its agent's last report, else what the store last heard.
pub fn location(c: &Conductor, instance: &InstanceId) -> Option<Location> {
    if let Some(r) = c.registry.shared(instance) {
        return Some(Location {
            zone: r.zone.clone(),
            host_id: r.host_id.clone(),
        });
    }
    let record = c.store.instance(instance).ok().flatten()?;
    Some(Location {
        zone: record.zone,
        host_id: record.host_id,
    })
}

/// Where the live servers of `set` (its master and replicas) run.
pub fn of_set(c: &Conductor, set: &ReplicaSet) -> Placement {
    set.members
        .iter()
        .filter(|m| matches!(m.role, IntendedRole::Master | IntendedRole::Replica))
        .map(|m| (m.instance.clone(), location(c, &m.instance)))
        .collect()
}

/// The rules `set` keeps (the default when it names none).
pub fn rules_of(c: &Conductor, set: &ReplicaSetId) -> Result<Vec<PlacementRule>, StoreError> {
    Ok(effective(c.store.set_rules(set)?))
}

/// What `set` breaks of its rules now.
pub fn violations_of(c: &Conductor, set: &ReplicaSet) -> Result<Vec<Violation>, StoreError> {
    Ok(violations(&rules_of(c, &set.id)?, &of_set(c, set)))
}

/// The rules named by `names` (ids or names), in that order; an unknown one is named.
pub fn resolve(c: &Conductor, names: &[String]) -> Result<Vec<PlacementRule>, ResolveError> {
    let all = c.store.rules()?;
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|r| r.id.as_str() == n || &r.name == n)
                .cloned()
                .ok_or_else(|| ResolveError::Unknown(n.clone()))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no placement rule {0:?} (by id or name); `tandem rule list` shows them")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Raises an event when what a set breaks changes, until `stop`.
pub async fn watch(c: Arc<Conductor>, stop: CancellationToken) {
    let mut held: HashMap<ReplicaSetId, Vec<Violation>> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(sets) = c.store.sets() else { continue };
        let Ok(mut kept) = c.store.all_set_rules() else {
            continue;
        };
        held.retain(|id, _| sets.iter().any(|s| &s.id == id));
        for set in sets {
            let rules = effective(kept.remove(&set.id).unwrap_or_default());
            let now = violations(&rules, &of_set(&c, &set));
            let before = held.get(&set.id).cloned().unwrap_or_default();
            if now == before {
                continue;
            }
            if now.is_empty() {
                tracing::info!(set = %set.id, "placement rules hold again");
                c.events.publish(ApiEvent::PlacementRestored {
                    set: set.id.clone(),
                    at: Timestamp::now(),
                });
            } else {
                for v in now.iter().filter(|v| !before.contains(v)) {
                    tracing::warn!(set = %set.id, violation = %v, "placement rule broken");
                }
                c.events.publish(ApiEvent::PlacementViolation {
                    set: set.id.clone(),
                    violations: now.clone(),
                    at: Timestamp::now(),
                });
            }
            held.insert(set.id, now);
        }
    }
}
