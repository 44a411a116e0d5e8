//! The failure detector skips looks at a healthy set while nothing can have changed for
//! it, and looks again as soon as something could: a member falling silent, a report
//! saying something new, a change of the set.

use std::time::Duration;

use tandem_api::{Verdict, WorkflowKind};
use tandem_proto::{FailsafeState, Health, Role};
use tokio_util::sync::CancellationToken;

use super::fake::{i, s1, World};
use crate::store::{TopologyChange, WorkflowFilter};

/// db-1 the master of db-2 and db-3, every report as the intent and the failsafe
/// want it: a look finds nothing to do.
fn steady(w: &World) {
    let epoch = w.c.store.set(&s1()).unwrap().unwrap().epoch;
    w.report("db-1", |r| {
        r.role = Role::Master;
        r.failsafe = Some(FailsafeState::Master {
            epoch,
            peers: vec![i("db-2"), i("db-3")],
            held: 0,
        });
    });
    for name in ["db-2", "db-3"] {
        w.report(name, |r| {
            r.role = Role::Replica;
            r.writable = Some(false);
            r.replicates_from = Some(i("db-1"));
            r.replication = Some(crate::registry::sample_replication(true));
            r.failsafe = Some(FailsafeState::Replica { master: i("db-1") });
        });
    }
}

fn verdict(w: &World) -> Option<Verdict> {
    w.c.failover_watch.verdict(&s1())
}

fn workflows(w: &World) -> Vec<tandem_api::WorkflowRow> {
    let all = WorkflowFilter {
        limit: 100,
        ..Default::default()
    };
    w.c.store.workflows(&all).unwrap()
}

fn watching(w: &World) -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn(crate::detector::watch(w.c.clone(), stop.clone()));
    stop
}

async fn after(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn a_quiet_set_is_looked_at_again_once_its_members_could_have_fallen_silent() {
    let w = World::new();
    steady(&w);
    let _stop = watching(&w).drop_guard();
    let detect = w.c.settings.failover.detect_after;
    after(300).await;
    assert_eq!(verdict(&w), Some(Verdict::Healthy));
    // Nobody reports again. The ticks in between find the set quiet; the first one
    // after the detection time must look, and see the silence.
    tokio::time::sleep(detect - Duration::from_millis(400)).await;
    assert_eq!(verdict(&w), Some(Verdict::Healthy));
    after(250).await;
    assert!(
        matches!(verdict(&w), Some(Verdict::Suspected { .. })),
        "silent for the detection time: {:?}",
        verdict(&w)
    );
    let none_started = workflows(&w);
    assert!(none_started.is_empty(), "{none_started:?}");
}

#[tokio::test(start_paused = true)]
async fn a_report_saying_something_new_is_looked_at_at_the_next_tick() {
    let w = World::new();
    steady(&w);
    let _stop = watching(&w).drop_guard();
    after(500).await;
    assert_eq!(verdict(&w), Some(Verdict::Healthy));
    // Well within the detection time, so only the report can wake the look.
    w.report("db-1", |r| {
        r.role = Role::Master;
        r.health = Health::EngineDown;
    });
    after(150).await;
    assert!(
        matches!(verdict(&w), Some(Verdict::Suspected { reason }) if reason.contains("engine down")),
        "{:?}",
        verdict(&w)
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_of_a_quiet_set_is_looked_at_at_the_next_tick() {
    let w = World::new();
    steady(&w);
    let _stop = watching(&w).drop_guard();
    after(500).await;
    assert!(workflows(&w).is_empty(), "{:?}", workflows(&w));
    // db-3 leaves the set: the master's failsafe list is out of date, which nothing
    // reported says; only the change of the set can wake the look.
    w.c.store
        .apply(
            &s1(),
            &TopologyChange::RemoveReplica {
                instance: i("db-3"),
            },
        )
        .unwrap();
    after(150).await;
    let started = workflows(&w);
    assert!(
        started.iter().any(|r| r.kind == WorkflowKind::Failsafe),
        "{started:?}"
    );
}
