//! A replica's options: recorded first, applied on its engine, the old ones back when
//! the engine refuses; a paused replica re-pointed to a new master is attached paused.

use tandem_api::{Pause, ReplicaOptions, WorkflowState};
use tandem_proto::{Command, ErrorKind};

use super::fake::{gtid, healthy, i, lines, s1, Answer, World};
use crate::workflow::Spec;

fn options_of(w: &World, name: &str) -> ReplicaOptions {
    let set = w.c.store.set(&s1()).unwrap().unwrap();
    set.members
        .into_iter()
        .find(|m| m.instance.as_str() == name)
        .unwrap()
        .options
}

fn paused_at(position: &str) -> ReplicaOptions {
    ReplicaOptions {
        delay_s: 0,
        paused: Some(Pause {
            until: Some(gtid(position)),
            since: tandem_proto::Timestamp(1),
        }),
        filter: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_pause_the_engine_refuses_leaves_the_old_options() {
    let w = World::new();
    w.agents.script(|s| match &s.command {
        Command::PauseReplication { .. } => Answer::fail(
            ErrorKind::BadRequest,
            "it has already applied 0-1-12, beyond 0-1-9: it cannot stop there",
        ),
        _ => healthy(s),
    });
    let row = w
        .run(Spec::Reconfigure {
            set: s1(),
            instance: i("db-3"),
            options: paused_at("0-1-9"),
        })
        .await;
    assert_eq!(row.state, WorkflowState::RolledBack, "{row:?}");
    assert!(row.error.as_deref().unwrap().contains("beyond"), "{row:?}");
    assert_eq!(options_of(&w, "db-3"), ReplicaOptions::default());
}

#[tokio::test(start_paused = true)]
async fn a_new_delay_re_attaches_with_it_and_a_paused_replica_follows_a_switchover_paused() {
    let w = World::new();
    let row = w
        .run(Spec::Reconfigure {
            set: s1(),
            instance: i("db-3"),
            options: ReplicaOptions {
                delay_s: 60,
                paused: None,
                filter: None,
            },
        })
        .await;
    assert_eq!(row.state, WorkflowState::Done, "{row:?}");
    let sent = w.agents.sent();
    assert!(
        sent.iter().any(|s| matches!(&s.command,
            Command::AttachToSource { delay_s: 60, semi_sync: false, paused: None, .. }
                if s.target.as_str() == "db-3")),
        "{}",
        lines(&sent)
    );

    let row = w
        .run(Spec::Reconfigure {
            set: s1(),
            instance: i("db-2"),
            options: paused_at("0-1-9"),
        })
        .await;
    assert_eq!(row.state, WorkflowState::Done, "{row:?}");
    assert!(w
        .agents
        .sent()
        .iter()
        .any(|s| s.is("db-2", "pause_replication")));

    // A switchover to db-3 (delayed) would be refused by the API; db-1's demotion and
    // the re-pointing of db-2 under a new master keep db-2 paused where it was.
    let set = w.c.store.set(&s1()).unwrap().unwrap();
    let row = w
        .run(Spec::Switchover {
            set: s1(),
            candidate: i("db-3"),
            from: i("db-1"),
            epoch: set.epoch,
            catch_up_timeout_ms: None,
        })
        .await;
    assert_eq!(row.state, WorkflowState::Done, "{row:?}");
    let sent = w.agents.sent();
    let repointed = sent
        .iter()
        .rev()
        .find(|s| s.is("db-2", "attach_to_source"))
        .expect("db-2 re-pointed");
    assert!(
        matches!(&repointed.command,
            Command::AttachToSource { paused: Some(p), source, .. }
                if p.until == Some(gtid("0-1-9")) && source.instance.as_str() == "db-3"),
        "{}",
        lines(&sent)
    );
    assert_eq!(options_of(&w, "db-2"), paused_at("0-1-9"));
    // The promoted one has no options left.
    assert_eq!(options_of(&w, "db-3"), ReplicaOptions::default());
}
