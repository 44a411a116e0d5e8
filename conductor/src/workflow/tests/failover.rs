//! The failover waits for the lost master's lease before it promotes anyone, and
//! stands down when the master reports again meanwhile.

use std::time::Duration;

use tandem_api::WorkflowState;
use tandem_proto::{Command, ReplyBody};

use super::fake::{gtid, healthy, i, lines, s1, Answer, World};
use crate::workflow::Spec;

fn failover() -> Spec {
    Spec::Failover {
        set: s1(),
        failed: i("db-1"),
        candidate: None,
        force: false,
        automatic: true,
        reason: Some("test".into()),
        site: false,
    }
}

/// db-1's host froze: its agent answers nothing; the replicas lost it.
fn frozen_master(w: &World) {
    w.agents.script(|s| {
        if s.target.as_str() == "db-1" {
            Answer::Silent
        } else {
            healthy(s)
        }
    });
}

#[tokio::test(start_paused = true)]
async fn nobody_is_promoted_before_the_lost_masters_lease_and_margin_run_out() {
    let w = World::new();
    w.report("db-1", |r| {
        r.role = tandem_proto::Role::Master;
        r.lease_ms = Some(5000);
    });
    let last_report = tokio::time::Instant::now();
    frozen_master(&w);
    // The detector acts once the master has been silent for detect_after.
    tokio::time::advance(w.c.settings.failover.detect_after).await;
    let row = w.run(failover()).await;
    let sent = w.agents.sent();
    assert_eq!(
        row.state,
        WorkflowState::Done,
        "{:?}\n{}",
        row.error,
        lines(&sent)
    );
    assert_eq!(w.master(), "db-2");
    let promoted = sent
        .iter()
        .find(|s| s.name() == "detach")
        .expect("a candidate detaches");
    let lease = Duration::from_millis(5000) + w.c.settings.failover.lease_margin;
    assert!(
        promoted.at - last_report >= lease,
        "promoted {:?} after the master's last report, within its lease of {lease:?}",
        promoted.at - last_report
    );
    // Every replica was drained before anyone was promoted.
    let drains = sent.iter().filter(|s| s.name() == "drain_received").count();
    assert_eq!(drains, 2, "{}", lines(&sent));
}

#[tokio::test(start_paused = true)]
async fn a_failover_stands_down_when_the_master_reports_again_before_its_lease_ends() {
    let w = World::new();
    frozen_master(&w);
    tokio::time::advance(w.c.settings.failover.detect_after).await;
    let epoch = w.epoch();
    let row = w.start(failover());
    let c = w.c.clone();
    let running = tokio::spawn(crate::workflow::run(c, row.clone()));
    // The master thaws while the workflow waits for its lease: it reports again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    w.report("db-1", |r| r.role = tandem_proto::Role::Master);
    w.agents.script(healthy);
    running.await.unwrap();
    let row = w.c.store.workflow(&row.id).unwrap().unwrap();
    let sent = w.agents.sent();
    assert_eq!(
        row.state,
        WorkflowState::RolledBack,
        "{:?}\n{}",
        row.error,
        lines(&sent)
    );
    assert!(
        row.error.as_deref().unwrap().contains("reports again"),
        "{:?}",
        row.error
    );
    assert_eq!(w.master(), "db-1");
    assert_eq!(w.epoch(), epoch, "nothing was recorded");
    assert!(
        !sent.iter().any(|s| s.name() == "detach"),
        "{}",
        lines(&sent)
    );
    // The drained replicas replicate from db-1 again.
    for r in ["db-2", "db-3"] {
        assert!(
            sent.iter().any(|s| matches!(&s.command,
                Command::AttachToSource { source, .. } if s.target.as_str() == r && source.instance.as_str() == "db-1")),
            "{r} not re-attached:\n{}",
            lines(&sent)
        );
    }
}

/// db-1's host froze, and db-3 (an acknowledging replica) answers nothing either.
fn frozen_master_and_silent_replica(w: &World) {
    w.agents.script(|s| {
        if matches!(s.target.as_str(), "db-1" | "db-3") {
            Answer::Silent
        } else {
            healthy(s)
        }
    });
}

fn semi_sync(w: &World) {
    let mut state = w.c.store.failover_state(&s1()).unwrap();
    state.semi_sync = true;
    w.c.store.set_failover_state(&s1(), &state).unwrap();
}

#[tokio::test(start_paused = true)]
async fn with_semi_sync_nobody_is_promoted_while_an_acknowledging_replica_is_unheard() {
    let w = World::new();
    semi_sync(&w);
    frozen_master_and_silent_replica(&w);
    tokio::time::advance(w.c.settings.failover.detect_after).await;
    let epoch = w.epoch();
    let row = w.run(failover()).await;
    let sent = w.agents.sent();
    assert_eq!(
        row.state,
        WorkflowState::RolledBack,
        "{:?}\n{}",
        row.error,
        lines(&sent)
    );
    let error = row.error.unwrap();
    assert!(
        error.contains("db-3") && error.contains("acknowledged"),
        "{error}"
    );
    assert_eq!(w.master(), "db-1");
    assert_eq!(w.epoch(), epoch, "nothing was recorded");
    assert!(
        !sent.iter().any(|s| s.name() == "detach"),
        "{}",
        lines(&sent)
    );

    // Without semi-sync no replica holds a commit the master acknowledged for it: the
    // heard one is promoted, the silent one left behind (and said so).
    let w = World::new();
    frozen_master_and_silent_replica(&w);
    tokio::time::advance(w.c.settings.failover.detect_after).await;
    let row = w.run(failover()).await;
    assert_eq!(row.state, WorkflowState::Done, "{:?}", row.error);
    assert_eq!(w.master(), "db-2");

    // An operator may accept the loss.
    let w = World::new();
    semi_sync(&w);
    frozen_master_and_silent_replica(&w);
    tokio::time::advance(w.c.settings.failover.detect_after).await;
    let mut forced = failover();
    if let Spec::Failover {
        force, automatic, ..
    } = &mut forced
    {
        *force = true;
        *automatic = false;
    }
    let row = w.run(forced).await;
    assert_eq!(row.state, WorkflowState::Done, "{:?}", row.error);
    assert_eq!(w.master(), "db-2");
}

#[tokio::test(start_paused = true)]
async fn with_semi_sync_a_candidate_lacking_what_an_unpromotable_replica_holds_is_not_promoted() {
    let w = World::new();
    semi_sync(&w);
    // db-3 received more than db-2 before the master froze, and must never be promoted.
    w.c.store
        .set_metadata(&i("db-3"), "promotion_rule", "must_not")
        .unwrap();
    w.agents.script(|s| match s.target.as_str() {
        "db-1" => Answer::Silent,
        "db-3" if s.name() == "drain_received" => Answer::ok(ReplyBody::Position {
            position: gtid("0-1-12"),
        }),
        _ => healthy(s),
    });
    tokio::time::advance(w.c.settings.failover.detect_after).await;
    let row = w.run(failover()).await;
    let sent = w.agents.sent();
    assert_eq!(row.state, WorkflowState::RolledBack, "{}", lines(&sent));
    let error = row.error.unwrap();
    assert!(
        error.contains("db-3 at") && error.contains("0-1-12") && error.contains("lacks"),
        "{error}"
    );
    assert_eq!(w.master(), "db-1");
    assert!(
        !sent.iter().any(|s| s.name() == "detach"),
        "{}",
        lines(&sent)
    );
}
