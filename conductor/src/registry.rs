//! The registry: every instance whose agent has reported, with its last report.
//!
//! Reports are ordered by their sequence number: one older than the report held (a
//! redelivery, or a report overtaken on the wire) is ignored.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};
// tokio's clock (the monotonic clock, mockable in tests with paused time).
use tokio::time::Instant;

use tandem_proto::{InstanceId, StatusReport};

#[derive(Default)]
pub struct Registry {
    instances: RwLock<Instances>,
}

/// Looked up by id many thousand times a second (the detector, every report), listed
/// in id order now and then (the API's pages).
#[derive(Default)]
struct Instances {
    by_id: HashMap<InstanceId, Entry>,
    order: BTreeSet<InstanceId>,
    /// Instances with a report recorded since the failure detector last asked
    /// ([`Registry::take_reported`]).
    reported: HashSet<InstanceId>,
}

impl Instances {
    fn get(&self, id: &InstanceId) -> Option<&Entry> {
        self.by_id.get(id)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn in_order(&self) -> impl Iterator<Item = &Entry> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }
}

struct Entry {
    /// Shared, so the detector's ten looks a second at every member cost no copy.
    report: Arc<StatusReport>,
    received: Instant,
    /// The newest position an earlier report gave, while the report held has none (a
    /// dead engine's); `None` when the report's own is the newest.
    last_position: Option<tandem_proto::Position>,
}

impl Entry {
    /// The newest position any report gave.
    fn position(&self) -> Option<&tandem_proto::Position> {
        self.report
            .position
            .as_ref()
            .or(self.last_position.as_ref())
    }
}

pub use tandem_api::{Contract, InstanceView};

impl Registry {
    /// Records a report. Returns `None` when it was older than the one held, otherwise
    /// whether the instance is new or moved (zone, host, engine or address changed), which is
    /// when the store must hear of it.
    pub fn record(&self, report: StatusReport) -> Option<bool> {
        let mut guard = self.instances.write().expect("poisoned");
        let map = &mut *guard;
        let now = Instant::now();
        // Updated in place: a fleet's every report lands here, and the common case (an
        // instance already held) needs no copy of its id or position.
        if let Some(held) = map.by_id.get_mut(&report.instance) {
            if report.sequence <= held.report.sequence {
                return None;
            }
            let h = &held.report;
            let moved = h.zone != report.zone
                || h.host_id != report.host_id
                || h.engine != report.engine
                || h.endpoint != report.endpoint;
            // The report held goes: its position is kept when the new one has none.
            if report.position.is_none() && h.position.is_some() {
                held.last_position = h.position.clone();
            } else if report.position.is_some() {
                held.last_position = None;
            }
            held.report = Arc::new(report);
            held.received = now;
            if !map.reported.contains(&held.report.instance) {
                map.reported.insert(held.report.instance.clone());
            }
            return Some(moved);
        }
        map.reported.insert(report.instance.clone());
        map.order.insert(report.instance.clone());
        map.by_id.insert(
            report.instance.clone(),
            Entry {
                report: Arc::new(report),
                received: now,
                last_position: None,
            },
        );
        Some(true)
    }

    /// The event to publish when `report` changes what matters of its instance (role,
    /// writability, source, health) compared with the report held.
    pub fn significant_change(&self, report: &StatusReport) -> Option<crate::events::ApiEvent> {
        let map = self.instances.read().expect("poisoned");
        let same = map.get(&report.instance).is_some_and(|held| {
            let h = &held.report;
            report.sequence <= h.sequence
                || (h.role == report.role
                    && h.writable == report.writable
                    && h.replicates_from == report.replicates_from
                    && h.health == report.health)
        });
        (!same).then(|| crate::events::ApiEvent::InstanceChanged {
            instance: report.instance.clone(),
            role: report.role,
            writable: report.writable,
            replicates_from: report.replicates_from.clone(),
            health: report.health,
            at: report.taken_at,
        })
    }

    /// The last report of `id` and how long ago it arrived.
    pub fn report_with_age(
        &self,
        id: &InstanceId,
    ) -> Option<(Arc<StatusReport>, std::time::Duration)> {
        self.instances
            .read()
            .expect("poisoned")
            .get(id)
            .map(|e| (e.report.clone(), e.received.elapsed()))
    }

    /// The last report of `id`, shared (no copy).
    pub fn shared(&self, id: &InstanceId) -> Option<Arc<StatusReport>> {
        self.instances
            .read()
            .expect("poisoned")
            .get(id)
            .map(|e| e.report.clone())
    }

    /// The newest position `id` reported, also when its latest report has none.
    pub fn last_position(&self, id: &InstanceId) -> Option<tandem_proto::Position> {
        self.instances
            .read()
            .expect("poisoned")
            .get(id)
            .and_then(|e| e.position().cloned())
    }

    /// The last report of `id`.
    pub fn report(&self, id: &InstanceId) -> Option<StatusReport> {
        self.instances
            .read()
            .expect("poisoned")
            .get(id)
            .map(|e| StatusReport::clone(&e.report))
    }

    /// The instances with a report recorded since the last call.
    pub fn take_reported(&self) -> HashSet<InstanceId> {
        std::mem::take(&mut self.instances.write().expect("poisoned").reported)
    }

    /// How many instances have reported (without making their views).
    pub fn count(&self) -> usize {
        self.instances.read().expect("poisoned").len()
    }

    pub fn list(&self) -> Vec<InstanceView> {
        let map = self.instances.read().expect("poisoned");
        map.in_order().map(view).collect()
    }

    /// Up to `size` instances after `after` (by id) whose report `keep` keeps, and
    /// whether more follow. Views are made only for the page.
    pub fn page(
        &self,
        after: Option<&InstanceId>,
        size: usize,
        keep: impl Fn(&StatusReport) -> bool,
    ) -> (Vec<InstanceView>, bool) {
        use std::ops::Bound;
        let map = self.instances.read().expect("poisoned");
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut kept = map
            .order
            .range((from, Bound::Unbounded))
            .filter_map(|id| map.by_id.get(id))
            .filter(|e| keep(&e.report));
        let page: Vec<InstanceView> = kept.by_ref().take(size).map(view).collect();
        let more = kept.next().is_some();
        (page, more)
    }

    pub fn get(&self, id: &InstanceId) -> Option<InstanceView> {
        self.instances.read().expect("poisoned").get(id).map(view)
    }
}

fn view(e: &Entry) -> InstanceView {
    let r = &e.report;
    InstanceView {
        id: r.instance.clone(),
        zone: r.zone.clone(),
        tags: r.tags.clone(),
        engine: r.engine,
        observed: Contract {
            replicates_from: r.replicates_from.clone(),
            replicates_to: r.replicates_to.clone(),
            writable: r.writable,
        },
        last_seen_ms: e.received.elapsed().as_millis() as u64,
        status: StatusReport::clone(r),
    }
}

/// A replica's replication threads, both running, nothing wrong, for tests to adjust.
#[cfg(test)]
pub(crate) fn sample_replication(receiving: bool) -> tandem_proto::ReplicationState {
    tandem_proto::ReplicationState {
        receiving,
        applying: true,
        last_receive_error: None,
        last_apply_error: None,
        received: None,
        diverged: None,
        delay_s: 0,
        filter: None,
    }
}

/// A healthy standalone instance's report, for tests to adjust.
#[cfg(test)]
pub(crate) fn sample_report(instance: &str) -> StatusReport {
    use tandem_proto::*;
    StatusReport {
        instance: InstanceId::new(instance).unwrap(),
        zone: "z".into(),
        host_id: None,
        tags: vec![],
        agent_version: "t".into(),
        protocol: VersionRange::OURS,
        engine: EngineKind::Mariadb,
        engine_version: None,
        seed_endpoint: None,
        endpoint: Some(Endpoint {
            host: "h".into(),
            port: 1,
        }),
        role: Role::Standalone,
        writable: Some(true),
        replicates_from: None,
        replicates_to: vec![],
        position: None,
        lag: None,
        seconds_behind_master: None,
        replication: None,
        health: Health::Healthy,
        last_error: None,
        host: Default::default(),
        highest_epoch: Epoch::ZERO,
        sequence: 1,
        taken_at: Timestamp(1),
        operations: vec![],
        engine_settings: Default::default(),
        fenced: false,
        lease_ms: None,
        semi_sync: None,
        fencing_hazards: Vec::new(),
        restart_needed: Vec::new(),
        failsafe: None,
        refused_commands: 0,
        pair_side: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::*;

    fn report(seq: u64, writable: bool) -> StatusReport {
        StatusReport {
            writable: Some(writable),
            sequence: seq,
            taken_at: Timestamp(seq),
            ..sample_report("db-1")
        }
    }

    #[test]
    fn reports_are_ordered_by_sequence_and_changes_are_noticed() {
        let r = Registry::default();
        assert_eq!(r.record(report(5, true)), Some(true), "new instance");
        assert_eq!(
            r.record(report(4, false)),
            None,
            "an older report is ignored"
        );
        assert_eq!(
            r.get(&InstanceId::new("db-1").unwrap())
                .unwrap()
                .observed
                .writable,
            Some(true)
        );
        assert_eq!(
            r.record(report(6, true)),
            Some(false),
            "same address: nothing for the store"
        );
        assert!(r.significant_change(&report(7, true)).is_none());
        assert!(
            r.significant_change(&report(7, false)).is_some(),
            "writability changed"
        );
        assert!(
            r.significant_change(&report(3, false)).is_none(),
            "older than held"
        );
    }

    #[test]
    fn the_last_position_outlives_reports_without_one() {
        let r = Registry::default();
        let id = InstanceId::new("db-1").unwrap();
        let at = |seq: u64, gtid: Option<&str>| StatusReport {
            position: gtid.map(|g| Position::Gtid(g.parse().unwrap())),
            ..report(seq, true)
        };
        let gtid = |g: &str| Some(Position::Gtid(g.parse().unwrap()));
        assert_eq!(r.last_position(&id), None, "never reported");
        r.record(at(1, None));
        assert_eq!(r.last_position(&id), None, "no position yet");
        r.record(at(2, Some("0-1-5")));
        assert_eq!(r.last_position(&id), gtid("0-1-5"));
        // The engine died: its reports carry no position, the last one is kept.
        r.record(at(3, None));
        r.record(at(4, None));
        assert_eq!(r.last_position(&id), gtid("0-1-5"));
        // Back: the newest position counts again, and an older report changes nothing.
        r.record(at(5, Some("0-1-9")));
        assert_eq!(r.last_position(&id), gtid("0-1-9"));
        r.record(at(4, Some("0-1-7")));
        assert_eq!(r.last_position(&id), gtid("0-1-9"));
        r.record(at(6, None));
        assert_eq!(r.last_position(&id), gtid("0-1-9"));
    }
}
