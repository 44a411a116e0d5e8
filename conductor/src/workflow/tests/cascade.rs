//! Cascaded replicas: they stay under their source through a switchover, and follow
//! the nearest member above a source that is lost; their accounts come from the master.

use tandem_api::WorkflowState;
use tandem_proto::Command;

use super::fake::{i, lines, s1, World};
use crate::store::TopologyChange;
use crate::workflow::Spec;

/// db-1 → db-2 → db-3: db-3 cascaded under db-2.
fn cascade() -> World {
    let w = World::new();
    w.c.store
        .apply(
            &s1(),
            &TopologyChange::Reparent {
                instance: i("db-3"),
                source: i("db-2"),
            },
        )
        .unwrap();
    w
}

fn source_of(w: &World, name: &str) -> Option<String> {
    let set = w.c.store.set(&s1()).unwrap().unwrap();
    set.member(&i(name))
        .and_then(|m| m.replicates_from.as_ref())
        .map(|f| f.to_string())
}

#[tokio::test(start_paused = true)]
async fn a_cycle_is_refused_and_nothing_changes() {
    let w = cascade();
    let err =
        w.c.store
            .apply(
                &s1(),
                &TopologyChange::Reparent {
                    instance: i("db-2"),
                    source: i("db-3"),
                },
            )
            .unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
    assert_eq!(source_of(&w, "db-2").as_deref(), Some("db-1"));
}

#[tokio::test(start_paused = true)]
async fn a_switchover_moves_the_direct_replicas_and_leaves_the_cascaded_ones() {
    let w = cascade();
    // The candidate is db-2, db-3's source: db-1 goes under it, db-3 stays.
    let row = w.run(w.switchover_to("db-2")).await;
    assert_eq!(row.state, WorkflowState::Done, "{:?}", row.error);
    assert_eq!(w.master(), "db-2");
    assert_eq!(source_of(&w, "db-3").as_deref(), Some("db-2"));
    assert_eq!(source_of(&w, "db-1").as_deref(), Some("db-2"));
    let sent = w.agents.sent();
    assert!(
        !sent.iter().any(|s| s.is("db-3", "attach_to_source")),
        "db-3 was re-attached though its source did not change:\n{}",
        lines(&sent)
    );
}

#[tokio::test(start_paused = true)]
async fn the_replicas_of_a_lost_source_go_to_the_master_with_their_accounts_from_it() {
    let w = cascade();
    // db-2 stopped reporting long ago.
    tokio::time::advance(w.c.settings.failover.detect_after * 2).await;
    w.report("db-1", |r| r.role = tandem_proto::Role::Master);
    w.report("db-3", |_| {});
    let row = w
        .run(Spec::Reparent {
            set: s1(),
            lost: i("db-2"),
        })
        .await;
    let sent = w.agents.sent();
    assert_eq!(
        row.state,
        WorkflowState::Done,
        "{:?}\n{}",
        row.error,
        lines(&sent)
    );
    assert_eq!(source_of(&w, "db-3").as_deref(), Some("db-1"));
    assert!(sent.iter().any(|s| s.is("db-1", "create_replication_user")));
    assert!(sent.iter().any(|s| matches!(&s.command,
        Command::AttachToSource { source, .. }
            if s.target.as_str() == "db-3" && source.instance.as_str() == "db-1")));
    assert!(
        !sent.iter().any(|s| s.target.as_str() == "db-2"),
        "the lost source was asked something:\n{}",
        lines(&sent)
    );
}

#[tokio::test(start_paused = true)]
async fn a_cascaded_replica_gets_its_account_from_the_master_and_waits_for_it_on_its_source() {
    let w = cascade();
    let row = w
        .run(Spec::Repoint {
            set: s1(),
            instance: i("db-3"),
        })
        .await;
    let sent = w.agents.sent();
    assert_eq!(
        row.state,
        WorkflowState::Done,
        "{:?}\n{}",
        row.error,
        lines(&sent)
    );
    let order: Vec<String> = sent
        .iter()
        .map(|s| format!("{} {}", s.target, s.name()))
        .collect();
    let at = |what: &str| {
        order
            .iter()
            .position(|o| o == what)
            .unwrap_or_else(|| panic!("no {what}:\n{}", lines(&sent)))
    };
    assert!(at("db-1 create_replication_user") < at("db-2 wait_for_position"));
    assert!(at("db-2 wait_for_position") < at("db-3 attach_to_source"));
}
