//! The failure detector: looks at every replica set several times a second, from what
//! the registry holds, asks the pure decisions of [`crate::decide`] what they make of
//! it, and starts the workflow that follows: `failover` when the master is lost,
//! `rejoin` when a failed master comes back, `quarantine` for a diverged replica,
//! `repoint` for one on the wrong source, `restore_writes` when the master is healthy
//! but read-only outside any workflow (its lease fenced it, or its engine restarted
//! read-only), `failsafe` when the failsafe assignment is out of date.
//!
//! It depends on the workflows (it starts them); they never depend on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_proto::{Health, InstanceId, ReplicaSetId, StatusReport, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::decide::verdict::{judge, Seen, Verdict};
use crate::store::{IntendedRole, ReplicaSet};
use crate::workflow::{self, Spec};
use crate::Conductor;

/// How often every set is looked at.
const TICK: Duration = Duration::from_millis(100);

/// The detector's view of every set, shown by the API.
#[derive(Default)]
pub struct Watch {
    verdicts: std::sync::Mutex<HashMap<ReplicaSetId, Verdict>>,
    /// When each set last had a workflow running: a report from before that may
    /// describe a state the workflow has changed since.
    busy_until: std::sync::Mutex<HashMap<ReplicaSetId, Instant>>,
    /// Sets already warned about a master lease longer than detection.
    lease_warned: std::sync::Mutex<std::collections::HashSet<ReplicaSetId>>,
    /// Writes given back to self-fenced masters, per set (see [`crate::backoff`]).
    restores: std::sync::Mutex<HashMap<ReplicaSetId, crate::backoff::Retries>>,
    /// Sets whose current hold was announced.
    hold_announced: std::sync::Mutex<std::collections::HashSet<ReplicaSetId>>,
    /// Re-points of replicas on the wrong source, per instance.
    repoints: std::sync::Mutex<HashMap<InstanceId, crate::backoff::Retries>>,
    /// Failsafe assignments sent, per set.
    /// Failsafe assignments sent, per set, since its master and replicas last changed
    /// (a failover or a rejoin is no repeated failure: the count starts again).
    failsafes: std::sync::Mutex<HashMap<ReplicaSetId, (Vec<InstanceId>, crate::backoff::Retries)>>,
    /// DR sets whose primary zone looks lost, announced once per loss.
    zone_lost: std::sync::Mutex<std::collections::HashSet<ReplicaSetId>>,
}

impl Watch {
    pub fn verdict(&self, set: &ReplicaSetId) -> Option<Verdict> {
        self.verdicts.lock().expect("poisoned").get(set).cloned()
    }

    fn busy(&self, set: &ReplicaSetId) {
        self.busy_until
            .lock()
            .expect("poisoned")
            .insert(set.clone(), Instant::now());
    }

    /// Whether a report `age` old arrived well after the set's last workflow.
    fn after_last_workflow(&self, set: &ReplicaSetId, age: Duration) -> bool {
        match self.busy_until.lock().expect("poisoned").get(set) {
            None => true,
            Some(t) => age + Duration::from_millis(300) < t.elapsed(),
        }
    }

    /// Records a verdict; true when its kind differs from the one held (a verdict's
    /// reason carries ages that change at every look).
    fn record(&self, set: &ReplicaSetId, v: &Verdict) -> bool {
        let mut m = self.verdicts.lock().expect("poisoned");
        // Replaced in place: every set is looked at ten times a second.
        match m.get_mut(set) {
            Some(held) => {
                let changed = std::mem::discriminant(held) != std::mem::discriminant(v);
                *held = v.clone();
                changed
            }
            None => {
                m.insert(set.clone(), v.clone());
                !matches!(v, Verdict::Healthy)
            }
        }
    }
}

/// Runs the detector until `stop`.
///
/// A healthy set is not looked at again while nothing can have changed for it (see
/// [`Look::Quiet`]): at ten looks a second, a fleet's sets cost the detector more than
/// all of the fleet's reports, and most looks found nothing new.
pub async fn watch(c: Arc<Conductor>, stop: CancellationToken) {
    let started = c.started;
    // The registry's clock (tokio's), as the members' ages are.
    let mut quiet: HashMap<ReplicaSetId, tokio::time::Instant> = HashMap::new();
    let mut seen_generation: Option<u64> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sets = match c.store.sets() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "failure detector: cannot read the sets");
                continue;
            }
        };
        let busy: Vec<ReplicaSetId> = match c.store.active_workflows() {
            Ok(w) => w.into_iter().map(|w| w.set_id).collect(),
            Err(_) => continue,
        };
        // Any change of any set, and every quiet set is looked at again.
        let generation = c.store.sets_generation();
        if generation.is_none() || generation != seen_generation {
            quiet.clear();
            seen_generation = generation;
        }
        let reported = c.registry.take_reported();
        let now = tokio::time::Instant::now();
        for set in sets {
            if busy.contains(&set.id) {
                c.failover_watch.busy(&set.id);
                quiet.remove(&set.id);
                continue;
            }
            let heard = || set.members.iter().any(|m| reported.contains(&m.instance));
            if quiet.get(&set.id).is_some_and(|until| now < *until) && !heard() {
                continue;
            }
            match examine(&c, &set, started) {
                Look::Quiet { until } => match quiet.get_mut(&set.id) {
                    Some(held) => *held = until,
                    None => {
                        quiet.insert(set.id.clone(), until);
                    }
                },
                Look::Again => {
                    quiet.remove(&set.id);
                }
            }
        }
    }
}

fn seen(c: &Conductor, id: &InstanceId, started: tokio::time::Instant) -> Seen {
    match c.registry.report_with_age(id) {
        Some((report, age)) => Seen {
            report: Some(report),
            age,
        },
        None => Seen {
            report: None,
            age: started.elapsed(),
        },
    }
}

/// What the registry holds of a set's members, looked up once per look at the set:
/// the decisions below ask about the same members several times.
struct Sight<'a> {
    c: &'a Conductor,
    started: tokio::time::Instant,
    members: Vec<(&'a InstanceId, Seen)>,
}

impl<'a> Sight<'a> {
    fn of_set(c: &'a Conductor, set: &'a ReplicaSet, started: tokio::time::Instant) -> Sight<'a> {
        let mut members: Vec<(&InstanceId, Seen)> = set
            .members
            .iter()
            .map(|m| (&m.instance, seen(c, &m.instance, started)))
            .collect();
        if !set.members.iter().any(|m| m.instance == set.master) {
            members.push((&set.master, seen(c, &set.master, started)));
        }
        Sight {
            c,
            started,
            members,
        }
    }

    /// A healthy look's end: quiet until the first member heard from within
    /// `detect_after` could have been silent that long. A member not heard from within
    /// it (or never) changes only by reporting.
    fn quiet(&self, detect_after: Duration) -> Look {
        let left = self
            .members
            .iter()
            .filter(|(_, s)| s.report.is_some() && s.age < detect_after)
            .map(|(_, s)| detect_after - s.age)
            .min()
            .unwrap_or(detect_after);
        Look::Quiet {
            until: tokio::time::Instant::now() + left,
        }
    }

    fn of(&self, id: &InstanceId) -> Seen {
        self.members
            .iter()
            .find(|(m, _)| *m == id)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| seen(self.c, id, self.started))
    }
}

/// What a look at a set came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Healthy, and nothing started or held back: the same look gives the same answer
    /// until a member reports, the set changes, or `until`, when the first member still
    /// heard from could have been silent for the detection time (the one threshold of
    /// time the decisions above use).
    Quiet { until: tokio::time::Instant },
    /// Anything else: looked at again at the next tick.
    Again,
}

fn examine(c: &Arc<Conductor>, set: &ReplicaSet, started: tokio::time::Instant) -> Look {
    let f = &c.settings.failover;
    let master = &set.master;
    let sight = Sight::of_set(c, set, started);
    let seen = |id: &InstanceId| sight.of(id);
    let seen_master = seen(master);
    // Only the master's direct replicas can say whether they still receive from it; a
    // cascaded one hears its own source.
    let replicas: Vec<(InstanceId, Seen)> = set
        .replicas_of(master)
        .map(|r| (r.clone(), seen(r)))
        .collect();
    // Safe either way (nobody is promoted before the lease runs out), but slow: say so.
    if let Some(lease) = seen_master.report.as_ref().and_then(|r| r.lease_ms) {
        if Duration::from_millis(lease) >= f.detect_after
            && c.failover_watch
                .lease_warned
                .lock()
                .expect("poisoned")
                .insert(set.id.clone())
        {
            tracing::warn!(
                set = %set.id,
                master = %master,
                lease_ms = lease,
                detect_after_ms = f.detect_after.as_millis() as u64,
                "the master's lease is not shorter than failure detection: a failover \
                 waits for the lease; shorten the agent's lease_ms"
            );
        }
    }
    let verdict = judge(master, &seen_master, &replicas, f);
    if c.failover_watch.record(&set.id, &verdict) {
        match &verdict {
            Verdict::Healthy => {
                tracing::info!(set = %set.id, master = %master, "master healthy");
                // A failover held back by anti-flapping has nothing left to wait for.
                clear_block(c, set);
            }
            v => tracing::warn!(set = %set.id, master = %master, verdict = ?v, "master in trouble"),
        }
        c.events.publish(crate::events::ApiEvent::MasterVerdict {
            set: set.id.clone(),
            master: master.clone(),
            verdict: verdict.clone(),
            at: Timestamp::now(),
        });
    }

    match verdict {
        // Draining the replicas can take a second (a replica's IO thread stuck in a
        // connect to a hung master delays its stop), so the failover starts as soon as
        // the replicas confirm the loss; it waits for the lease itself before anyone
        // is promoted, and stands down if the master comes back meanwhile.
        Verdict::Lost { reason } | Verdict::WaitingForLease { reason, .. } => {
            start_failover(c, set, reason);
            Look::Again
        }
        Verdict::Healthy => {
            // A re-point held back for now: looked at again at every tick.
            let mut held_back = false;
            // A failed member that is back: fenced by the epoch and compared with the
            // master, then rejoined or quarantined. First, so an old master that came
            // back writable is made read-only before anything else.
            for m in &set.members {
                if m.role != IntendedRole::Failed {
                    continue;
                }
                let s = seen(&m.instance);
                let back = s.age < f.detect_after
                    && c.failover_watch.after_last_workflow(&set.id, s.age)
                    && s.report.as_ref().is_some_and(|r| {
                        !matches!(r.health, Health::EngineDown | Health::Starting)
                    });
                if back {
                    start(
                        c,
                        Spec::Rejoin {
                            set: set.id.clone(),
                            instance: m.instance.clone(),
                        },
                        "a failed master is back",
                    );
                    return Look::Again;
                }
            }
            // A replica that others replicate from is lost: they go to the nearest
            // member above it that is well.
            let lost = |i: &InstanceId| {
                let s = seen(i);
                s.age >= f.detect_after
                    || s.report
                        .as_ref()
                        .is_none_or(|r| r.health == Health::EngineDown)
            };
            if let Some(o) = crate::decide::cascade::orphaned(set, lost) {
                // Tried again with a growing hold when it cannot finish (a replica
                // unreachable too), like a re-point.
                let now = Instant::now();
                let mut tries = c.failover_watch.repoints.lock().expect("poisoned");
                let held = tries.entry(o.lost.clone()).or_default();
                if !held.hold(now).is_zero() {
                    return Look::Again;
                }
                held.record(now);
                drop(tries);
                start(
                    c,
                    Spec::Reparent {
                        set: set.id.clone(),
                        lost: o.lost,
                    },
                    "a replica that others replicate from is lost",
                );
                return Look::Again;
            }
            // A replica whose agent says its history split from the master's (a write
            // of its own, or one it cannot apply): quarantined, never left as a
            // candidate or a source.
            for m in &set.members {
                if m.role != IntendedRole::Replica {
                    continue;
                }
                let s = seen(&m.instance);
                let diverged = s
                    .report
                    .as_ref()
                    .filter(|_| c.failover_watch.after_last_workflow(&set.id, s.age))
                    .and_then(|r| r.replication.as_ref())
                    .and_then(|r| r.diverged.clone());
                if let Some(reason) = diverged {
                    start(
                        c,
                        Spec::Quarantine {
                            set: set.id.clone(),
                            instance: m.instance.clone(),
                            reason,
                        },
                        "a replica diverged from its master",
                    );
                    return Look::Again;
                }
            }
            // A replica on the wrong source (left behind by a failover, re-pointed or
            // delayed by hand) is brought back to the intent, one at a time, with a
            // growing hold between tries of the same one.
            for m in &set.members {
                let s = seen(&m.instance);
                let Some(r) = s
                    .report
                    .as_ref()
                    .filter(|_| s.age < f.detect_after)
                    .filter(|_| c.failover_watch.after_last_workflow(&set.id, s.age))
                else {
                    continue;
                };
                if !crate::decide::drift::repointable(m, r) {
                    continue;
                }
                let now = Instant::now();
                let mut repoints = c.failover_watch.repoints.lock().expect("poisoned");
                let tries = repoints.entry(m.instance.clone()).or_default();
                if !tries.hold(now).is_zero() {
                    held_back = true;
                    continue;
                }
                tries.record(now);
                drop(repoints);
                start(
                    c,
                    Spec::Repoint {
                        set: set.id.clone(),
                        instance: m.instance.clone(),
                    },
                    "a replica is not where the intent puts it",
                );
                return Look::Again;
            }
            // A healthy master that is read-only outside any workflow: its lease fenced
            // it, or its engine restarted read-only. Writes are given back at the
            // current epoch.
            if let Some(r) = &seen_master.report {
                // Only a server its agent holds as master (a lease): a set being
                // created has a read-only master its workflow is about to enable.
                if r.health == Health::Healthy
                    && r.writable == Some(false)
                    && r.replicates_from.is_none()
                    && r.lease_ms.is_some()
                    && c.failover_watch
                        .after_last_workflow(&set.id, seen_master.age)
                {
                    restore_writes(c, set, r.fenced);
                    return Look::Again;
                }
            }
            // The failsafe follows the membership: after any change, the master is told
            // its replicas and each replica to answer it (only on reports newer than
            // the set's last workflow, which may have changed both).
            if f.failsafe {
                let fresh = |s: Seen| {
                    s.report
                        .filter(|_| s.age < f.detect_after)
                        .filter(|_| c.failover_watch.after_last_workflow(&set.id, s.age))
                };
                let Some(master_report) = fresh(seen(master)) else {
                    return Look::Again;
                };
                let replica_reports: Vec<Option<std::sync::Arc<StatusReport>>> =
                    set.replicas().map(|r| fresh(seen(r))).collect();
                let replica_reports = replica_reports.iter().map(Option::as_deref);
                if crate::failsafe::out_of_date(set, Some(&master_report), replica_reports) {
                    let now = Instant::now();
                    let mut sent = c.failover_watch.failsafes.lock().expect("poisoned");
                    let mut members: Vec<InstanceId> = set.replicas().cloned().collect();
                    members.sort();
                    members.insert(0, set.master.clone());
                    let (of, tries) = sent.entry(set.id.clone()).or_default();
                    if *of != members {
                        *of = members;
                        *tries = Default::default();
                    }
                    if tries.hold(now).is_zero() {
                        tries.record(now);
                        drop(sent);
                        start(
                            c,
                            Spec::Failsafe {
                                set: set.id.clone(),
                            },
                            "the failsafe assignment is out of date",
                        );
                    }
                    return Look::Again;
                }
            }
            if held_back {
                return Look::Again;
            }
            sight.quiet(f.detect_after)
        }
        _ => Look::Again,
    }
}

fn start_failover(c: &Arc<Conductor>, set: &ReplicaSet, reason: String) {
    let f = &c.settings.failover;
    let mut state = match c.store.failover_state(&set.id) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(set = %set.id, error = %e, "cannot read the failover state");
            return;
        }
    };
    if !f.automatic || state.paused {
        return;
    }
    // A DR set's automatic failover stays in its primary zone: with no member of that
    // zone heard, the zone itself may be lost, which only an operator may conclude
    // (`tandem dr failover`). Said once, not retried in a loop.
    if let Ok(Some(dr)) = c.store.dr_settings(&set.id) {
        let started = c.started;
        // A replica of a lost master reports itself degraded (it lost its source):
        // heard with its engine up is enough.
        let heard = set.replicas().any(|r| {
            let s = seen(c, r, started);
            s.age < f.detect_after
                && s.report.as_ref().is_some_and(|r| {
                    r.zone == dr.primary.as_str()
                        && !matches!(r.health, Health::EngineDown | Health::Starting)
                })
        });
        let mut announced = c.failover_watch.zone_lost.lock().expect("poisoned");
        if !heard {
            if announced.insert(set.id.clone()) {
                let why = format!(
                    "{} lost ({reason}) and no other member of the primary zone {} is heard: \
                     the zone may be lost; `tandem dr failover {}` moves the writer to zone {}",
                    set.master, dr.primary, set.id, dr.dr
                );
                tracing::error!(set = %set.id, "{why}");
                c.events.publish(crate::events::ApiEvent::FailoverBlocked {
                    set: set.id.clone(),
                    reason: why,
                    at: Timestamp::now(),
                });
            }
            return;
        }
        announced.remove(&set.id);
    }
    if let Some(last) = state.last_automatic {
        let since = Duration::from_millis(Timestamp::now().0.saturating_sub(last.0));
        if since < f.flap_window {
            if state.blocked.is_some() {
                return;
            }
            let why = format!(
                "{} lost ({reason}) only {} s after the last automatic failover of this set \
                 (flap_window_s {}): held back until an operator acknowledges it \
                 (`tandem failover ack {}`) or the window ends",
                set.master,
                since.as_secs(),
                f.flap_window.as_secs(),
                set.id
            );
            tracing::error!(set = %set.id, "{why}");
            state.blocked = Some(why.clone());
            if let Err(e) = c.store.set_failover_state(&set.id, &state) {
                tracing::error!(set = %set.id, error = %e, "cannot record the anti-flapping block");
            }
            c.events.publish(crate::events::ApiEvent::FailoverBlocked {
                set: set.id.clone(),
                reason: why,
                at: Timestamp::now(),
            });
            return;
        }
    }
    // The window has passed (or there was none): any block ends with it.
    state.blocked = None;
    let spec = Spec::Failover {
        set: set.id.clone(),
        failed: set.master.clone(),
        candidate: None,
        force: false,
        automatic: true,
        reason: Some(reason.clone()),
        site: false,
    };
    match workflow::start(c, spec, "failure detector") {
        Ok(wf) => {
            // The anti-flapping clock starts when the workflow promotes someone (a
            // failover that stands down does not count).
            tracing::warn!(set = %set.id, workflow = %wf.id, master = %set.master, reason, "automatic failover started");
            if let Err(e) = c.store.set_failover_state(&set.id, &state) {
                tracing::error!(set = %set.id, error = %e, "cannot record the failover state");
            }
        }
        Err(e) => tracing::debug!(set = %set.id, error = %e, "failover not started"),
    }
}

/// Gives writes back to a healthy, read-only master, unless it fenced itself too often
/// lately: then only after the hold (announced once as an event).
fn restore_writes(c: &Arc<Conductor>, set: &ReplicaSet, fenced: bool) {
    let w = &c.failover_watch;
    let now = Instant::now();
    let mut restores = w.restores.lock().expect("poisoned");
    let record = restores.entry(set.id.clone()).or_default();
    let hold = record.hold(now);
    if !hold.is_zero() {
        if w.hold_announced
            .lock()
            .expect("poisoned")
            .insert(set.id.clone())
        {
            tracing::warn!(set = %set.id, master = %set.master, in_a_row = record.in_a_row, hold_ms = hold.as_millis() as u64, fenced, "the master keeps fencing itself: writes given back after a hold");
            c.events
                .publish(crate::events::ApiEvent::RestoreWritesHeld {
                    set: set.id.clone(),
                    master: set.master.clone(),
                    restores_in_a_row: record.in_a_row,
                    hold_ms: hold.as_millis() as u64,
                    at: Timestamp::now(),
                });
        }
        return;
    }
    record.record(now);
    drop(restores);
    w.hold_announced.lock().expect("poisoned").remove(&set.id);
    start(
        c,
        Spec::RestoreWrites {
            set: set.id.clone(),
        },
        "the master is healthy but read-only",
    );
}

/// Ends an anti-flapping block whose cause is gone (the master is healthy again).
fn clear_block(c: &Conductor, set: &ReplicaSet) {
    let Ok(mut state) = c.store.failover_state(&set.id) else {
        return;
    };
    if state.blocked.take().is_some() {
        tracing::info!(set = %set.id, "the blocked failover is moot: the master is healthy");
        if let Err(e) = c.store.set_failover_state(&set.id, &state) {
            tracing::error!(set = %set.id, error = %e, "cannot clear the anti-flapping block");
        }
    }
}

fn start(c: &Arc<Conductor>, spec: Spec, why: &str) {
    let set = spec.set().clone();
    match workflow::start(c, spec, "failure detector") {
        Ok(wf) => {
            tracing::warn!(set = %set, workflow = %wf.id, kind = %wf.kind, why, "workflow started by the detector")
        }
        Err(e) => tracing::debug!(set = %set, error = %e, "workflow not started"),
    }
}
