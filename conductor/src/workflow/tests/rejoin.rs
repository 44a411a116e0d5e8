//! A failed master that comes back rejoins only when it holds nothing the new master
//! lacks; otherwise it is quarantined, never silently rejoined.

use tandem_api::{IntendedRole, WorkflowState};
use tandem_proto::{Command, ReplyBody};

use super::fake::{gtid, healthy, i, lines, s1, Answer, World};
use crate::store::TopologyChange;
use crate::workflow::Spec;

/// db-1 failed and db-2 replaced it when db-2 stood at `0-1-10`.
fn failed_over() -> World {
    let w = World::new();
    w.c.store
        .apply(
            &s1(),
            &TopologyChange::Failover {
                new_master: i("db-2"),
                failed: i("db-1"),
            },
        )
        .unwrap();
    w.c.remember_failed_at(&s1(), &i("db-1"), &gtid("0-1-10"));
    w
}

fn returning_at(w: &World, position: &'static str) {
    w.agents.script(move |s| match &s.command {
        Command::GetLatestPosition if s.target.as_str() == "db-1" => {
            Answer::ok(ReplyBody::Position {
                position: gtid(position),
            })
        }
        _ => healthy(s),
    });
}

async fn rejoin(w: &World) -> tandem_api::WorkflowRow {
    w.run(Spec::Rejoin {
        set: s1(),
        instance: i("db-1"),
    })
    .await
}

fn role_of(w: &World, name: &str) -> IntendedRole {
    let set = w.c.store.set(&s1()).unwrap().unwrap();
    set.members
        .iter()
        .find(|m| m.instance.as_str() == name)
        .unwrap()
        .role
}

#[tokio::test(start_paused = true)]
async fn a_returning_master_with_nothing_extra_rejoins_as_a_replica() {
    let w = failed_over();
    returning_at(&w, "0-1-9");
    let row = rejoin(&w).await;
    let sent = w.agents.sent();
    assert_eq!(row.state, WorkflowState::Done, "{:?}", row.error);
    assert_eq!(role_of(&w, "db-1"), IntendedRole::Replica);
    // Fenced by the epoch first, attached to the new master last.
    assert!(sent[0].is("db-1", "set_read_only"), "{}", lines(&sent));
    assert!(sent.iter().any(|s| matches!(&s.command,
        Command::AttachToSource { source, .. } if s.target.as_str() == "db-1" && source.instance.as_str() == "db-2")));
}

#[tokio::test(start_paused = true)]
async fn a_returning_master_holding_a_transaction_the_new_one_lacks_is_quarantined() {
    let w = failed_over();
    returning_at(&w, "0-1-12");
    let row = rejoin(&w).await;
    let sent = w.agents.sent();
    assert_eq!(role_of(&w, "db-1"), IntendedRole::Quarantined, "{:?}", row);
    assert!(
        !sent.iter().any(|s| s.is("db-1", "attach_to_source")),
        "an errant server was attached:\n{}",
        lines(&sent)
    );
    assert!(!sent.iter().any(|s| s.is("db-1", "set_writable")));
}
