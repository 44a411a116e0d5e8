//! Failure detection and the decision to fail over.
//!
//! The detector looks at every replica set several times a second, from what the
//! registry holds (the agents' reports and how old they are), and starts workflows:
//! `failover` when the master is lost, `rejoin` when a failed master comes back,
//! `restore_writes` when the master is healthy but read-only outside any workflow (its
//! lease fenced it, or its engine restarted read-only).
//!
//! A master is *lost* only when both hold (holistic detection, as orchestrator does):
//! * its agent says its engine is down, or its agent has not reported for
//!   `detect_after`; and
//! * every replica that reports in time says it no longer receives from it.
//!
//! and, when its agent cannot be reached, not before the master's lease (plus a
//! margin) has run out since its last report: by then the master's agent has set its
//! engine read-only on its own, if it is alive at all. So a failover never starts on a
//! timeout alone, and never while the old master can still accept writes on orders it
//! holds.
//!
//! The candidate rule lives here too ([`choose`]), as a pure function of the drained
//! replicas, so it is tested without engines.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_proto::{Health, InstanceId, Position, ReplicaSetId, StatusReport, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::config::FailoverSettings;
use crate::store::{IntendedRole, ReplicaSet};
use crate::workflow::{self, Spec};
use crate::Conductor;

/// How often every set is looked at.
const TICK: Duration = Duration::from_millis(100);

pub use tandem_api::Verdict;

/// What is known of one instance: its last report and the time since it arrived
/// (`None`: no report since this conductor started, `since_start` old).
pub struct Seen {
    pub report: Option<StatusReport>,
    pub age: Duration,
}

/// How long a master silent for `age` may still be writable under its lease (plus the
/// margin); `None` once that has run out.
pub fn lease_left(lease_ms: u64, age: Duration, f: &FailoverSettings) -> Option<Duration> {
    (Duration::from_millis(lease_ms) + f.lease_margin)
        .checked_sub(age)
        .filter(|left| !left.is_zero())
}

/// Judges a set's master from the reports of its members.
pub fn judge(
    master: &InstanceId,
    seen_master: &Seen,
    replicas: &[(InstanceId, Seen)],
    f: &FailoverSettings,
) -> Verdict {
    let reachable = seen_master.age < f.detect_after && seen_master.report.is_some();
    let reason = match &seen_master.report {
        Some(r) if reachable && r.health == Health::EngineDown => format!(
            "its agent reports the engine down ({})",
            r.last_error.as_deref().unwrap_or("no detail")
        ),
        _ if reachable => return Verdict::Healthy,
        Some(_) => format!(
            "no report from its agent for {} ms",
            seen_master.age.as_millis()
        ),
        None => format!(
            "no report from its agent since this conductor started {} ms ago",
            seen_master.age.as_millis()
        ),
    };
    // The replicas' word: any one still receiving from the master keeps it.
    let fresh: Vec<&(InstanceId, Seen)> = replicas
        .iter()
        .filter(|(_, s)| s.age < f.detect_after)
        .filter(|(_, s)| {
            s.report
                .as_ref()
                .is_some_and(|r| r.health != Health::EngineDown)
        })
        .collect();
    let still: Vec<String> = fresh
        .iter()
        .filter(|(_, s)| {
            s.report.as_ref().is_some_and(|r| {
                r.replicates_from.as_ref() == Some(master)
                    && r.replication.as_ref().is_some_and(|x| x.receiving)
            })
        })
        .map(|(i, _)| i.to_string())
        .collect();
    if fresh.is_empty() {
        return Verdict::Suspected {
            reason: format!("{reason}; no replica reports in time to confirm it"),
        };
    }
    if !still.is_empty() {
        return Verdict::Suspected {
            reason: format!(
                "{reason}; but {} still receive from it: no failover",
                still.join(", ")
            ),
        };
    }
    if reachable {
        // The agent answers and says its engine is gone: nothing can write there (an
        // engine that comes back starts read-only).
        return Verdict::Lost { reason };
    }
    let Some(lease_ms) = seen_master.report.as_ref().and_then(|r| r.lease_ms) else {
        return Verdict::Suspected {
            reason: format!(
                "{reason}; its agent announced no lease, so it may still accept writes: \
                 fail it over by hand (`tandem failover run --force`) once it is known down"
            ),
        };
    };
    if let Some(left) = lease_left(lease_ms, seen_master.age, f) {
        return Verdict::WaitingForLease {
            reason,
            remaining_ms: left.as_millis() as u64,
        };
    }
    Verdict::Lost {
        reason: format!(
            "{reason}, its lease of {lease_ms} ms has run out and its replicas lost it"
        ),
    }
}

/// How an operator wants a replica treated as a failover candidate (instance metadata
/// `promotion_rule`, as orchestrator names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PromotionRule {
    Prefer,
    Neutral,
    PreferNot,
    MustNot,
}

impl PromotionRule {
    pub fn parse(s: Option<&str>) -> Result<PromotionRule, String> {
        Ok(match s {
            None | Some("neutral") => PromotionRule::Neutral,
            Some("prefer") => PromotionRule::Prefer,
            Some("prefer_not") => PromotionRule::PreferNot,
            Some("must_not") => PromotionRule::MustNot,
            Some(other) => {
                return Err(format!(
                    "promotion_rule {other:?} is not prefer, neutral, prefer_not or must_not"
                ))
            }
        })
    }
}

/// One replica after it was asked to drain its relay log.
#[derive(Debug, Clone)]
pub struct Drained {
    pub instance: InstanceId,
    /// Where it stands once it applied everything it received; `Err` when it could not
    /// be drained (unreachable, engine down, applier stuck).
    pub position: Result<Position, String>,
    pub zone: String,
    /// Its lag in seconds as last reported before the failure.
    pub lag_s: Option<f64>,
    pub rule: PromotionRule,
    /// Instance metadata `failover_priority`: higher is preferred among equals.
    pub priority: i64,
    /// Instance metadata `replication_delay_s` > 0: a delayed replica, never promoted.
    pub delayed: bool,
    /// Its history split from the master's (a transaction written on it, or one it
    /// could not apply): never promoted, not even by force, and never a source.
    pub diverged: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub candidate: InstanceId,
    pub position: Position,
    /// Replicas left out, and why.
    pub excluded: Vec<(InstanceId, String)>,
}

/// The failover candidate: the eligible replica whose drained position contains every
/// other eligible replica's; among equals, the promotion rule, then the failed
/// master's zone, then the priority, then the name decide. An operator's `requested`
/// candidate is taken when it is eligible and not behind any drained replica, or
/// whatever its state with `force`.
pub fn choose(
    drained: &[Drained],
    master_zone: &str,
    max_lag_s: f64,
    requested: Option<&InstanceId>,
    force: bool,
) -> Result<Choice, String> {
    let mut excluded = Vec::new();
    let mut eligible: Vec<(&Drained, &Position)> = Vec::new();
    for d in drained {
        let why = match &d.position {
            _ if d.diverged.is_some() => Some(format!(
                "diverged: {}",
                d.diverged.as_deref().unwrap_or_default()
            )),
            Err(e) => Some(format!("not drained: {e}")),
            Ok(_) if d.rule == PromotionRule::MustNot => Some("promotion_rule must_not".into()),
            Ok(_) if d.delayed => Some("a delayed replica".into()),
            Ok(_) if d.lag_s.is_some_and(|l| l > max_lag_s) => Some(format!(
                "lagged {:.1} s, more than max_lag_s {max_lag_s}",
                d.lag_s.unwrap_or_default()
            )),
            Ok(p) => {
                eligible.push((d, p));
                None
            }
        };
        if let Some(why) = why {
            excluded.push((d.instance.clone(), why));
        }
    }
    let all_positions: Vec<(&InstanceId, &Position)> = drained
        .iter()
        .filter_map(|d| d.position.as_ref().ok().map(|p| (&d.instance, p)))
        .collect();

    if let Some(wanted) = requested {
        let Some(d) = drained.iter().find(|d| &d.instance == wanted) else {
            return Err(format!("{wanted} is not a replica of this set"));
        };
        if let Some(why) = &d.diverged {
            return Err(format!(
                "{wanted} is never promoted: it diverged from the master ({why})"
            ));
        }
        let position = match &d.position {
            Ok(p) => p.clone(),
            Err(e) => return Err(format!("{wanted} cannot be promoted: {e}")),
        };
        if !force {
            if let Some((_, why)) = excluded.iter().find(|(i, _)| i == wanted) {
                return Err(format!(
                    "{wanted} is not eligible ({why}); use --force to promote it anyway"
                ));
            }
            let ahead: Vec<String> = all_positions
                .iter()
                .filter(|(i, p)| *i != wanted && !position.contains(p))
                .map(|(i, p)| format!("{i} at {p}"))
                .collect();
            if !ahead.is_empty() {
                return Err(format!(
                    "{wanted} (at {position}) is behind {}; promoting it would lose those \
                     transactions: use --force to accept that",
                    ahead.join(", ")
                ));
            }
        }
        return Ok(Choice {
            candidate: wanted.clone(),
            position,
            excluded,
        });
    }

    let top: Vec<&(&Drained, &Position)> = eligible
        .iter()
        .filter(|(_, p)| eligible.iter().all(|(_, q)| p.contains(q)))
        .collect();
    if top.is_empty() {
        if eligible.is_empty() {
            return Err(format!(
                "no replica can be promoted: {}",
                excluded
                    .iter()
                    .map(|(i, why)| format!("{i}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        return Err(format!(
            "the replicas have diverged ({}); choose a candidate with --candidate and --force",
            eligible
                .iter()
                .map(|(d, p)| format!("{} at {p}", d.instance))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let best = top
        .iter()
        .min_by_key(|(d, _)| {
            (
                d.rule,
                d.zone != master_zone,
                std::cmp::Reverse(d.priority),
                d.instance.clone(),
            )
        })
        .expect("not empty");
    Ok(Choice {
        candidate: best.0.instance.clone(),
        position: best.1.clone(),
        excluded,
    })
}

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
    failsafes: std::sync::Mutex<HashMap<ReplicaSetId, crate::backoff::Retries>>,
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
        let changed = match m.get(set) {
            None => !matches!(v, Verdict::Healthy),
            Some(held) => std::mem::discriminant(held) != std::mem::discriminant(v),
        };
        m.insert(set.clone(), v.clone());
        changed
    }
}

/// Runs the detector until `stop`.
pub async fn watch(c: Arc<Conductor>, stop: CancellationToken) {
    let started = c.started;
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
        for set in sets {
            if busy.contains(&set.id) {
                c.failover_watch.busy(&set.id);
                continue;
            }
            examine(&c, &set, started);
        }
    }
}

fn seen(c: &Conductor, id: &InstanceId, started: Instant) -> Seen {
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

fn examine(c: &Arc<Conductor>, set: &ReplicaSet, started: Instant) {
    let f = &c.settings.failover;
    let master = &set.master;
    let seen_master = seen(c, master, started);
    let replicas: Vec<(InstanceId, Seen)> = set
        .replicas()
        .map(|r| (r.clone(), seen(c, r, started)))
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
            start_failover(c, set, reason)
        }
        Verdict::Healthy => {
            // A failed member that is back: fenced by the epoch and compared with the
            // master, then rejoined or quarantined. First, so an old master that came
            // back writable is made read-only before anything else.
            for m in &set.members {
                if m.role != IntendedRole::Failed {
                    continue;
                }
                let s = seen(c, &m.instance, started);
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
                    return;
                }
            }
            // A replica whose agent says its history split from the master's (a write
            // of its own, or one it cannot apply): quarantined, never left as a
            // candidate or a source.
            for m in &set.members {
                if m.role != IntendedRole::Replica {
                    continue;
                }
                let s = seen(c, &m.instance, started);
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
                    return;
                }
            }
            // A replica on the wrong source (left behind by a failover, re-pointed or
            // delayed by hand) is brought back to the intent, one at a time, with a
            // growing hold between tries of the same one.
            for m in &set.members {
                let s = seen(c, &m.instance, started);
                let Some(r) = s
                    .report
                    .as_ref()
                    .filter(|_| s.age < f.detect_after)
                    .filter(|_| c.failover_watch.after_last_workflow(&set.id, s.age))
                else {
                    continue;
                };
                if !crate::drift::repointable(m, r, c.intended_delay_s(&m.instance)) {
                    continue;
                }
                let now = Instant::now();
                let mut repoints = c.failover_watch.repoints.lock().expect("poisoned");
                let tries = repoints.entry(m.instance.clone()).or_default();
                if !tries.hold(now).is_zero() {
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
                return;
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
                    return;
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
                let Some(master_report) = fresh(seen(c, master, started)) else {
                    return;
                };
                let replica_reports: Vec<(InstanceId, Option<StatusReport>)> = set
                    .replicas()
                    .map(|r| (r.clone(), fresh(seen(c, r, started))))
                    .collect();
                if crate::failsafe::out_of_date(set, Some(&master_report), &replica_reports) {
                    let now = Instant::now();
                    let mut sent = c.failover_watch.failsafes.lock().expect("poisoned");
                    let tries = sent.entry(set.id.clone()).or_default();
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
                }
            }
        }
        _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::*;

    fn settings() -> FailoverSettings {
        FailoverSettings {
            automatic: true,
            detect_after: Duration::from_millis(1500),
            drain_timeout: Duration::from_secs(5),
            max_lag_s: 30.0,
            flap_window: Duration::from_secs(600),
            lease_margin: Duration::from_millis(250),
            semi_sync_timeout: Duration::from_secs(5),
            fence: None,
            failsafe: true,
        }
    }

    fn i(s: &str) -> InstanceId {
        s.parse().unwrap()
    }

    fn report(health: Health, from: Option<&str>, receiving: bool) -> StatusReport {
        StatusReport {
            role: Role::Replica,
            writable: Some(false),
            replicates_from: from.map(i),
            replication: from.map(|_| ReplicationState {
                receiving,
                applying: true,
                last_receive_error: None,
                last_apply_error: None,
                received: None,
                diverged: None,
                delay_s: 0,
            }),
            health,
            lease_ms: Some(1500),
            ..crate::registry::sample_report("x")
        }
    }

    fn seen(r: StatusReport, age_ms: u64) -> Seen {
        Seen {
            report: Some(r),
            age: Duration::from_millis(age_ms),
        }
    }

    fn replicas(receiving: &[bool]) -> Vec<(InstanceId, Seen)> {
        receiving
            .iter()
            .enumerate()
            .map(|(n, r)| {
                (
                    i(&format!("db-{}", n + 2)),
                    seen(report(Health::Healthy, Some("db-1"), *r), 100),
                )
            })
            .collect()
    }

    #[test]
    fn a_master_is_lost_only_when_its_replicas_confirm_and_its_lease_has_run_out() {
        let f = settings();
        let m = i("db-1");
        let master_ok = seen(report(Health::Healthy, None, false), 200);
        assert_eq!(
            judge(&m, &master_ok, &replicas(&[false, false]), &f),
            Verdict::Healthy
        );

        // The engine died and the agent says so: lost once the replicas agree.
        let engine_down = seen(report(Health::EngineDown, None, false), 100);
        assert!(matches!(
            judge(&m, &engine_down, &replicas(&[true, false]), &f),
            Verdict::Suspected { reason } if reason.contains("db-2 still receive")
        ));
        assert!(matches!(
            judge(&m, &engine_down, &replicas(&[false, false]), &f),
            Verdict::Lost { .. }
        ));

        // The agent is silent: the replicas must agree and the lease must have run out.
        let silent = seen(report(Health::Healthy, None, false), 1600);
        assert!(matches!(
            judge(&m, &silent, &replicas(&[true, true]), &f),
            Verdict::Suspected { .. }
        ));
        assert!(matches!(
            judge(&m, &silent, &replicas(&[false, false]), &f),
            Verdict::WaitingForLease {
                remaining_ms: 150,
                ..
            }
        ));
        let long_silent = seen(report(Health::Healthy, None, false), 1800);
        assert!(matches!(
            judge(&m, &long_silent, &replicas(&[false, false]), &f),
            Verdict::Lost { .. }
        ));

        // No replica reports in time: nobody can confirm, no failover.
        let stale: Vec<(InstanceId, Seen)> = vec![(
            i("db-2"),
            seen(report(Health::Healthy, Some("db-1"), false), 5000),
        )];
        assert!(matches!(
            judge(&m, &long_silent, &stale, &f),
            Verdict::Suspected { reason } if reason.contains("no replica")
        ));

        // A master without a lease is never failed over automatically on silence.
        let mut no_lease = report(Health::Healthy, None, false);
        no_lease.lease_ms = None;
        assert!(matches!(
            judge(&m, &seen(no_lease, 5000), &replicas(&[false]), &f),
            Verdict::Suspected { reason } if reason.contains("no lease")
        ));
    }

    fn drained(name: &str, gtid: Result<&str, &str>, zone: &str) -> Drained {
        Drained {
            instance: i(name),
            position: gtid
                .map(|g| Position::Gtid(g.parse().unwrap()))
                .map_err(String::from),
            zone: zone.into(),
            lag_s: Some(0.1),
            rule: PromotionRule::Neutral,
            priority: 0,
            delayed: false,
            diverged: None,
        }
    }

    #[test]
    fn the_most_advanced_eligible_replica_is_chosen_and_ties_go_to_the_masters_zone() {
        let d = vec![
            drained("db-2", Ok("0-1-10"), "b"),
            drained("db-3", Ok("0-1-12"), "b"),
            drained("db-4", Ok("0-1-12"), "a"),
            drained("db-5", Err("engine down"), "a"),
        ];
        let c = choose(&d, "a", 30.0, None, false).unwrap();
        assert_eq!(
            c.candidate,
            i("db-4"),
            "same position: the master's zone wins"
        );
        assert_eq!(c.excluded.len(), 1);

        // The most advanced is never promotable: the next best that contains the rest.
        let mut d2 = d.clone();
        d2[1].rule = PromotionRule::MustNot;
        d2[2].delayed = true;
        let c = choose(&d2, "a", 30.0, None, false).unwrap();
        assert_eq!(c.candidate, i("db-2"));

        // A lagging replica is never chosen.
        let mut d3 = d.clone();
        d3[2].lag_s = Some(100.0);
        assert_eq!(
            choose(&d3, "a", 30.0, None, false).unwrap().candidate,
            i("db-3")
        );

        // Prefer beats zone; priority breaks the remaining tie.
        let mut d4 = d.clone();
        d4[1].rule = PromotionRule::Prefer;
        assert_eq!(
            choose(&d4, "a", 30.0, None, false).unwrap().candidate,
            i("db-3")
        );
        let mut d5 = d.clone();
        d5[1].zone = "a".into();
        d5[1].priority = 5;
        assert_eq!(
            choose(&d5, "a", 30.0, None, false).unwrap().candidate,
            i("db-3")
        );
    }

    #[test]
    fn a_requested_candidate_that_is_behind_is_refused_unless_forced() {
        let d = vec![
            drained("db-2", Ok("0-1-10"), "a"),
            drained("db-3", Ok("0-1-12"), "a"),
        ];
        let err = choose(&d, "a", 30.0, Some(&i("db-2")), false).unwrap_err();
        assert!(err.contains("behind db-3"), "{err}");
        let c = choose(&d, "a", 30.0, Some(&i("db-2")), true).unwrap();
        assert_eq!(c.candidate, i("db-2"));
        assert_eq!(
            choose(&d, "a", 30.0, Some(&i("db-3")), false)
                .unwrap()
                .candidate,
            i("db-3")
        );
        assert!(choose(&d, "a", 30.0, Some(&i("db-9")), true).is_err());
    }

    #[test]
    fn an_errant_replica_is_never_chosen_not_even_when_most_advanced_or_forced() {
        // db-3 holds a transaction of its own (domain 99): by the partial order it is
        // ahead of everyone, which is exactly why the agent's word must exclude it.
        let mut d = vec![
            drained("db-2", Ok("0-1-12"), "a"),
            drained("db-3", Ok("0-1-12,99-3-1"), "a"),
        ];
        d[1].diverged = Some("holds 99-3-1, written on it".into());
        let c = choose(&d, "a", 30.0, None, false).unwrap();
        assert_eq!(c.candidate, i("db-2"));
        assert!(c
            .excluded
            .iter()
            .any(|(x, why)| x == &i("db-3") && why.contains("diverged: holds 99-3-1")));
        for force in [false, true] {
            let err = choose(&d, "a", 30.0, Some(&i("db-3")), force).unwrap_err();
            assert!(
                err.contains("never promoted") && err.contains("99-3-1"),
                "{err}"
            );
        }
        d[0].diverged = Some("out-of-order transaction".into());
        let err = choose(&d, "a", 30.0, None, false).unwrap_err();
        assert!(err.contains("no replica can be promoted"), "{err}");
    }

    #[test]
    fn diverged_or_ineligible_replicas_give_no_candidate() {
        let d = vec![
            drained("db-2", Ok("0-1-10,1-2-3"), "a"),
            drained("db-3", Ok("0-1-12"), "a"),
        ];
        assert!(choose(&d, "a", 30.0, None, false)
            .unwrap_err()
            .contains("diverged"));
        let d = vec![drained("db-2", Err("unreachable"), "a")];
        assert!(choose(&d, "a", 30.0, None, false)
            .unwrap_err()
            .contains("no replica can be promoted"));
    }
}
