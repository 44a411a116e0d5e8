//! Drift: how an instance's engine differs from what the conductor wants of it. The
//! contract shown to users is the observed one; these are the differences shown beside
//! it, raised as events, and closed by the detector's re-point workflow when that is
//! safe.

use tandem_proto::{Health, InstanceId, StatusReport};

use crate::store::{IntendedRole, Member};

/// Every difference between `m`'s intent (and its intended replication delay) and
/// what its agent last reported; empty when they agree.
pub fn drift(m: &Member, report: Option<&StatusReport>, intended_delay_s: u64) -> Vec<String> {
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
            if state.delay_s != intended_delay_s {
                drift.push(format!(
                    "replication delay: wanted {intended_delay_s} s, engine says {} s",
                    state.delay_s
                ));
            }
        }
    }
    drift
}

/// Whether the drift of a replica is one the re-point workflow closes: its engine is
/// up and it replicates from the wrong source, from none, or with the wrong delay, and
/// it is not diverged (a diverged one is quarantined instead).
pub fn repointable(m: &Member, report: &StatusReport, intended_delay_s: u64) -> bool {
    let state = report.replication.as_ref();
    m.role == IntendedRole::Replica
        && matches!(report.health, Health::Healthy | Health::Degraded)
        && !state.is_some_and(|s| s.diverged.is_some())
        && (report.replicates_from != m.replicates_from
            || state.is_some_and(|s| s.delay_s != intended_delay_s))
}
