//! The verdict on a set's master, from the reports of its members: a pure function of
//! what the registry holds and how old it is (no I/O, no clock), so that every case is
//! a unit test.
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
//! holds ([`lease_left`], which the failover workflow waits on too).

use std::time::Duration;

use tandem_proto::{Health, InstanceId, StatusReport};

use crate::config::FailoverSettings;

pub use tandem_api::Verdict;

/// What is known of one instance: its last report and the time since it arrived
/// (`None`: no report since this conductor started, `since_start` old).
#[derive(Clone)]
pub struct Seen {
    pub report: Option<std::sync::Arc<StatusReport>>,
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
            replication: from.map(|_| crate::registry::sample_replication(receiving)),
            health,
            lease_ms: Some(1500),
            ..crate::registry::sample_report("x")
        }
    }

    fn seen(r: StatusReport, age_ms: u64) -> Seen {
        Seen {
            report: Some(std::sync::Arc::new(r)),
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
}
