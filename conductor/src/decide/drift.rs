//! Drift: how an instance's engine differs from what the conductor wants of it. The
//! contract shown to users is the observed one; these are the differences shown beside
//! it, raised as events, and closed by the detector's re-point workflow when that is
//! safe.

use tandem_proto::{Health, InstanceId, ReplicationState, StatusReport};

use crate::store::{IntendedRole, Member};

/// Every difference between `m`'s intent (its source, writability and replica options)
/// and what its agent last reported; empty when they agree.
pub fn drift(m: &Member, report: Option<&StatusReport>) -> Vec<String> {
    let mut drift = Vec::new();
    let Some(r) = report else {
        drift.push("no status report yet".to_string());
        return drift;
    };
    if r.writable != Some(m.writable) {
        drift.push(format!(
            "writable: wanted {}, engine says {}",
            m.writable,
            r.writable
                .map(|w| w.to_string())
                .unwrap_or_else(|| "unknown".into())
        ));
    }
    if r.replicates_from != m.replicates_from {
        let name = |i: &Option<InstanceId>| {
            i.as_ref()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "none".into())
        };
        drift.push(format!(
            "replicates_from: wanted {}, engine says {}",
            name(&m.replicates_from),
            name(&r.replicates_from),
        ));
    }
    if m.role == IntendedRole::Replica {
        if let Some(state) = &r.replication {
            drift.extend(options_drift(m, state));
        }
    }
    drift
}

/// How a replica's engine differs from its options: the delay it applies with, and
/// whether it applies at all (an operator's pause; a pause with a stop position applies
/// until it gets there, so only a pause without one must not be applying).
fn options_drift(m: &Member, state: &ReplicationState) -> Vec<String> {
    let mut drift = Vec::new();
    let wanted = m.options.delay_s;
    if state.delay_s != wanted {
        drift.push(format!(
            "replication delay: wanted {wanted} s, engine says {} s",
            state.delay_s
        ));
    }
    if state.filter != m.options.filter {
        let name = |f: &Option<tandem_proto::DatabaseFilter>| {
            f.as_ref()
                .map_or("every database".to_owned(), |f| f.to_string())
        };
        drift.push(format!(
            "databases: wanted {}, engine applies {}",
            name(&m.options.filter),
            name(&state.filter)
        ));
    }
    let stopped = !state.receiving && !state.applying;
    let broken = state.last_apply_error.is_some() || state.last_receive_error.is_some();
    match &m.options.paused {
        Some(p) if p.until.is_none() && state.applying => {
            drift.push("paused: wanted, engine applies".into())
        }
        None if stopped && !broken && state.diverged.is_none() => {
            drift.push("replicating: wanted, engine stopped (not paused by the conductor)".into())
        }
        _ => {}
    }
    drift
}

/// Whether the drift of a replica is one the re-point workflow closes: its engine is
/// up and it replicates from the wrong source, from none, with the wrong delay, or
/// paused when it should not be (or the other way round), and it is not diverged (a
/// diverged one is quarantined instead).
pub fn repointable(m: &Member, report: &StatusReport) -> bool {
    let state = report.replication.as_ref();
    m.role == IntendedRole::Replica
        && matches!(report.health, Health::Healthy | Health::Degraded)
        && state.is_none_or(|s| s.diverged.is_none())
        && (report.replicates_from != m.replicates_from
            || state.is_some_and(|s| !options_drift(m, s).is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_api::{Pause, ReplicaOptions};
    use tandem_proto::Role;

    fn replica_of(master: &str) -> Member {
        Member {
            instance: "db-3".parse().unwrap(),
            role: IntendedRole::Replica,
            replicates_from: Some(master.parse().unwrap()),
            writable: false,
            options: ReplicaOptions::default(),
        }
    }

    /// db-3's report: replicating from `from` (None: from an address no command named,
    /// or not at all), with `delay_s`, maybe diverged.
    fn report(from: Option<&str>, delay_s: u64, diverged: bool, health: Health) -> StatusReport {
        StatusReport {
            role: Role::Replica,
            writable: Some(false),
            replicates_from: from.map(|f| f.parse().unwrap()),
            replication: Some(ReplicationState {
                receiving: true,
                applying: !diverged,
                last_receive_error: None,
                last_apply_error: None,
                received: None,
                diverged: diverged.then(|| "out-of-order transaction".into()),
                delay_s,
                filter: None,
            }),
            health,
            ..crate::registry::sample_report("db-3")
        }
    }

    #[test]
    fn drift_names_each_difference_and_only_source_or_delay_is_repointed() {
        let m = replica_of("db-1");
        // (report, intended delay, differences expected, re-pointed?)
        let cases: &[(StatusReport, u64, &[&str], bool)] = &[
            (
                report(Some("db-1"), 0, false, Health::Healthy),
                0,
                &[],
                false,
            ),
            (
                report(Some("db-2"), 0, false, Health::Healthy),
                0,
                &["replicates_from: wanted db-1, engine says db-2"],
                true,
            ),
            (
                report(None, 0, false, Health::Degraded),
                0,
                &["replicates_from: wanted db-1, engine says none"],
                true,
            ),
            (
                report(Some("db-1"), 600, false, Health::Healthy),
                0,
                &["replication delay: wanted 0 s, engine says 600 s"],
                true,
            ),
            (
                report(Some("db-1"), 0, false, Health::Healthy),
                5,
                &["replication delay: wanted 5 s, engine says 0 s"],
                true,
            ),
            // Diverged: quarantined, never re-pointed.
            (
                report(Some("db-2"), 0, true, Health::Degraded),
                0,
                &["replicates_from: wanted db-1, engine says db-2"],
                false,
            ),
            // Its engine is down: nothing to re-point now.
            (
                report(Some("db-2"), 0, false, Health::EngineDown),
                0,
                &["replicates_from: wanted db-1, engine says db-2"],
                false,
            ),
        ];
        for (r, delay, expected, repoint) in cases {
            let mut m = m.clone();
            m.options.delay_s = *delay;
            assert_eq!(drift(&m, Some(r),), *expected, "{r:?}");
            assert_eq!(repointable(&m, r), *repoint, "{r:?}");
        }
        // Only a replica is ever re-pointed.
        let mut master = replica_of("db-1");
        master.role = IntendedRole::Master;
        master.replicates_from = None;
        assert!(!repointable(&master, &cases[1].0));
        assert_eq!(drift(&m, None), ["no status report yet"]);
    }

    #[test]
    fn a_pause_is_kept_and_only_an_intended_one_is_left_alone() {
        let stopped = |r: &mut StatusReport| {
            let s = r.replication.as_mut().unwrap();
            s.receiving = false;
            s.applying = false;
        };
        let running = report(Some("db-1"), 0, false, Health::Healthy);
        let mut halted = running.clone();
        stopped(&mut halted);

        let mut paused = replica_of("db-1");
        paused.options.paused = Some(Pause {
            until: None,
            since: tandem_proto::Timestamp(1),
        });
        assert!(drift(&paused, Some(&halted)).is_empty());
        assert_eq!(
            drift(&paused, Some(&running)),
            ["paused: wanted, engine applies"]
        );
        assert!(repointable(&paused, &running));

        // Paused at a position: it applies until it gets there.
        let mut until = paused.clone();
        until.options.paused.as_mut().unwrap().until =
            Some(tandem_proto::Position::Gtid("0-1-9".parse().unwrap()));
        assert!(drift(&until, Some(&running)).is_empty());

        // Not paused by the conductor, yet stopped without an error: started again.
        let plain = replica_of("db-1");
        assert_eq!(
            drift(&plain, Some(&halted)),
            ["replicating: wanted, engine stopped (not paused by the conductor)"]
        );
        assert!(repointable(&plain, &halted));
    }
}
