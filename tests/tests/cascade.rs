//! Cascading replicas (issue 16): a master that serves one stream, replicas under
//! replicas two levels deep, the contract showing the tree as the engines run it, and
//! every replica still replicating, with every acknowledged row and no error, through a
//! switchover, a master's crash and the loss of an intermediate source. Four real
//! MariaDB servers, their agents, the conductor and the broker; a writer under load.

use std::time::Duration;

use tandem_api::{MemberView, SetView, WorkflowKind, WorkflowState};
use tandem_e2e::load::{self, Writer};
use tandem_e2e::promise::{assert_all_acknowledged_on, failed_over, member, workflows_of_kind};
use tandem_e2e::{eventually, Cluster, ClusterOptions};

/// db-1 → db-2 → db-3 → db-4: db-2 a replica of the master, db-3 cascaded under it,
/// db-4 under db-3.
fn chain() -> Cluster {
    let c = Cluster::start_with(4, ClusterOptions::read_only_at_start());
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--source", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-4", "--source", "db-3", "--wait"]);
    c.converged("s1");
    load::prepare(c.db("db-1"));
    c.write_and_see_everywhere("s1", "db-1", 1);
    c
}

fn from_and_to(view: &SetView, name: &str) -> (Option<String>, Vec<String>) {
    let m: &MemberView = member(view, name);
    let observed = m
        .observed
        .clone()
        .unwrap_or_else(|| panic!("{name} reported"));
    (
        observed.replicates_from.map(|f| f.to_string()),
        observed
            .replicates_to
            .iter()
            .map(|t| t.to_string())
            .collect(),
    )
}

/// Every member but `except` replicates with no error and holds every acknowledged row.
fn all_replicating_with(c: &Cluster, except: &str, acked: &[load::Ack]) {
    c.converged_without("s1", except);
    let view = c.set("s1");
    for m in view
        .members
        .iter()
        .filter(|m| m.instance.as_str() != except)
    {
        let name = m.instance.as_str();
        assert!(m.diverged.is_none(), "{name}: {m:?}");
        if m.instance != view.master {
            assert_eq!(m.applying, Some(true), "{name} does not apply: {m:?}");
            let status = c.db(name).sql("SHOW SLAVE STATUS").unwrap();
            assert!(
                !status.contains("Duplicate entry") && !status.contains("GTID"),
                "{name}: {status}"
            );
        }
        eventually(
            Duration::from_secs(20),
            &format!("every row on {name}"),
            || {
                let present = tandem_e2e::promise::ids_on(c, name);
                acked.iter().all(|a| present.contains(&a.id)).then_some(())
            },
        );
        assert_all_acknowledged_on(c, name, acked);
    }
}

#[test]
fn a_two_level_cascade_replicates_to_its_leaves_through_a_switchover_and_a_master_crash() {
    let mut c = chain();
    // The contract shows the tree as the engines run it.
    let view = eventually(Duration::from_secs(10), "the tree in the contract", || {
        let v = c.set("s1");
        (from_and_to(&v, "db-3").1 == ["db-4"]).then_some(v)
    });
    assert_eq!(from_and_to(&view, "db-1"), (None, vec!["db-2".to_string()]));
    assert_eq!(
        from_and_to(&view, "db-2"),
        (Some("db-1".into()), vec!["db-3".to_string()])
    );
    assert_eq!(
        from_and_to(&view, "db-3"),
        (Some("db-2".into()), vec!["db-4".to_string()])
    );
    assert_eq!(from_and_to(&view, "db-4"), (Some("db-3".into()), vec![]));
    // `tandem topology` draws it: each level indented under its source.
    let topology = c.cli_ok(&["topology"]);
    let indent = |name: &str| {
        let line = topology
            .lines()
            .find(|l| l.contains(&format!("{name} @")))
            .unwrap_or_else(|| panic!("{name} not drawn:\n{topology}"));
        line.find(name).unwrap()
    };
    assert!(
        indent("db-1") < indent("db-2")
            && indent("db-2") < indent("db-3")
            && indent("db-3") < indent("db-4"),
        "{topology}"
    );

    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    // A switchover to the intermediate db-2: the old master goes under it, db-3 and
    // db-4 stay where they are.
    c.cli_ok(&["promote", "s1", "db-2", "--wait"]);
    let view = c.set("s1");
    assert_eq!(view.master.as_str(), "db-2");
    for (name, source) in [("db-1", "db-2"), ("db-3", "db-2"), ("db-4", "db-3")] {
        assert_eq!(
            member(&view, name)
                .intended
                .replicates_from
                .as_ref()
                .map(|f| f.as_str()),
            Some(source),
            "{name}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));

    // The new master crashes: a direct replica takes over; the cascade keeps going.
    c.node_mut("db-2").db.kill();
    let master = failed_over(&c, "db-2", Duration::from_secs(20));
    // The summary says why the cascaded db-4 was not the candidate.
    let summary = tandem_e2e::promise::failover_summary(&c);
    assert!(
        summary
            .excluded
            .iter()
            .any(|(i, why)| i.as_str() == "db-4" && why.contains("cascaded under db-3")),
        "{summary:?}"
    );
    eventually(Duration::from_secs(10), "a write on the new master", || {
        let index = c
            .addresses()
            .iter()
            .position(|(_, p)| *p == c.db(&master).port())?;
        writer.first_ack_on_after(index, std::time::Instant::now() - Duration::from_secs(1))
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, acked) = writer.finish();
    assert!(acked.len() > 50, "the writer barely wrote: {}", acked.len());
    all_replicating_with(&c, "db-2", &acked);
    let view = c.set("s1");
    assert_eq!(
        member(&view, "db-4")
            .intended
            .replicates_from
            .as_ref()
            .map(|f| f.as_str()),
        Some("db-3"),
        "db-4 left its source"
    );
}

#[test]
fn the_replicas_of_a_lost_intermediate_source_move_up_with_nothing_missing() {
    let mut c = chain();
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    // db-3's whole host freezes (engine and agent): db-4 goes to db-2, the nearest
    // member above that is well.
    c.node_mut("db-3").agent.pause().unwrap();
    c.db("db-3").pause().unwrap();
    // Waited for by hand: when it does not come, what the conductor did is the story.
    let frozen = std::time::Instant::now();
    let reparent = loop {
        if let Some(w) = workflows_of_kind(&c, WorkflowKind::Reparent)
            .into_iter()
            .find(|w| w.state == WorkflowState::Done)
        {
            break w;
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(30),
            "db-4 was not moved up within 30 s; workflows: {:?}\n{}",
            c.api().workflows().map(|ws| ws
                .iter()
                .map(|w| format!("{} {:?} {:?} {:?}", w.id, w.kind, w.state, w.error))
                .collect::<Vec<_>>()),
            tandem_e2e::tail(&c.conductor.log(), 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{reparent:?}");
    eventually(Duration::from_secs(10), "db-4 on db-2", || {
        let v = c.set("s1");
        (from_and_to(&v, "db-4").0.as_deref() == Some("db-2")).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    // The host thaws: db-3 replicates from db-2 again, without db-4.
    c.db("db-3").resume().unwrap();
    c.node_mut("db-3").agent.resume().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let view = c.set("s1");
    for name in ["db-3", "db-4"] {
        assert_eq!(
            member(&view, name)
                .intended
                .replicates_from
                .as_ref()
                .map(|f| f.as_str()),
            Some("db-2"),
            "{name}"
        );
    }
    c.converged("s1");

    // Now db-2, the source of both, is killed: they go to the master.
    c.node_mut("db-2").db.kill();
    eventually(
        Duration::from_secs(30),
        "db-3 and db-4 on the master",
        || {
            let v = c.set("s1");
            (from_and_to(&v, "db-3").0.as_deref() == Some("db-1")
                && from_and_to(&v, "db-4").0.as_deref() == Some("db-1"))
            .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, acked) = writer.finish();
    all_replicating_with(&c, "db-2", &acked);
}

#[test]
fn wrong_sources_are_refused_and_change_nothing() {
    let c = chain();
    let before = c.set("s1");
    for (args, says) in [
        (
            vec!["replica", "add", "s1", "db-9", "--source", "db-2"],
            "db-9",
        ),
        (
            vec!["replica", "add", "s1", "db-5", "--source", "db-7"],
            "not a member of set s1",
        ),
        (
            vec!["replica", "detach", "s1", "db-3"],
            "the source of db-4",
        ),
        // db-2 under db-4 would close a loop: it is a member already.
        (
            vec!["replica", "add", "s1", "db-2", "--source", "db-4"],
            "already a member",
        ),
    ] {
        let (ok, _, err) = c.cli(&args);
        assert!(!ok && err.contains(says), "{args:?}: {err}");
    }
    let after = c.set("s1");
    for m in &before.members {
        assert_eq!(
            member(&after, m.instance.as_str()).intended,
            m.intended,
            "{}",
            m.instance
        );
    }
}
