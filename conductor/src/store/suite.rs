//! One test suite for every store: each test here runs on SQLite and on PostgreSQL
//! (`store_suite!` in each store's tests), so both mean the same by every call.

use tandem_proto::{Epoch, InstanceId, ReplicaSetId, Timestamp};

use super::*;

/// A store a suite test runs on, and the same database opened again (what a restarted
/// conductor reads).
pub(crate) trait Opened {
    fn store(&self) -> &dyn Store;
    fn reopen(&self) -> Box<dyn Store>;
}

/// Instantiates every test of the suite, each on a store from `$open()`.
macro_rules! store_suite {
    ($open:path) => {
        store_suite!(@each $open,
            one_active_workflow_per_set_is_enforced_by_the_store,
            epochs_come_from_one_sequence_and_a_journaled_change_is_applied_once,
            the_sets_held_in_memory_are_what_the_database_holds_after_every_change,
            workflows_and_the_audit_page_newest_first_without_repeats_or_gaps_and_filter,
            every_sets_rules_are_read_at_once_as_each_set_reads_them,
            every_topology_change_reads_back_as_decided
        );
    };
    (@each $open:path, $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                crate::store::suite::$name(&$open());
            }
        )*
    };
}
pub(crate) use store_suite;

fn i(s: &str) -> InstanceId {
    s.parse().unwrap()
}
fn set(s: &str) -> ReplicaSetId {
    s.parse().unwrap()
}
fn wf(id: &str, set_id: &str) -> WorkflowRow {
    WorkflowRow {
        id: id.into(),
        kind: tandem_api::WorkflowKind::RestoreWrites,
        set_id: set(set_id),
        params: tandem_api::WorkflowSpec::RestoreWrites { set: set(set_id) },
        state: WorkflowState::Running,
        requested_by: "test".into(),
        error: None,
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
    }
}

pub(crate) fn one_active_workflow_per_set_is_enforced_by_the_store(db: &dyn Opened) {
    let s = db.store();
    s.start_workflow(&wf("a", "s1")).unwrap();
    let err = s.start_workflow(&wf("b", "s1")).unwrap_err();
    assert!(
        matches!(&err, StoreError::Busy { active, .. } if active == "a"),
        "{err}"
    );
    s.start_workflow(&wf("c", "s2")).unwrap();
    s.update_workflow("a", WorkflowState::Done, None).unwrap();
    s.start_workflow(&wf("b", "s1")).unwrap();
    assert_eq!(s.active_workflows().unwrap().len(), 2);
}

pub(crate) fn epochs_come_from_one_sequence_and_a_journaled_change_is_applied_once(
    db: &dyn Opened,
) {
    let s = db.store();
    let a = s.create_set(&set("s1"), &i("db-1")).unwrap();
    let b = s.create_set(&set("s2"), &i("db-5")).unwrap();
    assert!(b.epoch > a.epoch, "two sets never share an epoch");
    let add = TopologyChange::AddReplica {
        instance: i("db-2"),
        options: ReplicaOptions {
            delay_s: 60,
            paused: None,
            filter: None,
        },
        source: None,
    };
    let after = s.apply_step("w1", 0, "add", &set("s1"), &add).unwrap();
    assert!(after.epoch > b.epoch);
    assert_eq!(after.replicas().collect::<Vec<_>>(), vec![&i("db-2")]);
    assert_eq!(
        after.members[1].options.delay_s, 60,
        "options kept with the member"
    );
    // Replayed after a crash: nothing changes, the epoch is not bumped again.
    let again = s.apply_step("w1", 0, "add", &set("s1"), &add).unwrap();
    assert_eq!(again, after);
    // Membership rules.
    let err = s
        .apply(
            &set("s2"),
            &TopologyChange::AddReplica {
                instance: i("db-2"),
                options: ReplicaOptions::default(),
                source: None,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("already a member"), "{err}");
    let err = s.create_set(&set("s3"), &i("db-1")).unwrap_err();
    assert!(
        err.to_string()
            .contains("already a member of replica set s1"),
        "{err}"
    );
    let promoted = s
        .apply(
            &set("s1"),
            &TopologyChange::NewMaster {
                new_master: i("db-2"),
            },
        )
        .unwrap();
    assert_eq!(promoted.master, i("db-2"));
    let old = promoted
        .members
        .iter()
        .find(|m| m.instance == i("db-1"))
        .unwrap();
    assert_eq!(
        (old.role, old.writable, old.replicates_from.clone()),
        (IntendedRole::Replica, false, Some(i("db-2")))
    );
}

pub(crate) fn the_sets_held_in_memory_are_what_the_database_holds_after_every_change(
    db: &dyn Opened,
) {
    let s = db.store();
    // What a store opened afresh on the same database reads: the database's truth.
    let on_disk = || {
        let fresh = db.reopen();
        (fresh.sets().unwrap(), fresh.active_workflows().unwrap())
    };
    let same = |s: &dyn Store, why: &str| {
        let (sets, active) = on_disk();
        assert_eq!(s.sets().unwrap(), sets, "after {why}");
        assert_eq!(s.active_workflows().unwrap(), active, "after {why}");
        for set in &sets {
            assert_eq!(s.set(&set.id).unwrap().as_ref(), Some(set), "after {why}");
            for m in &set.members {
                assert_eq!(s.set_of(&m.instance).unwrap().as_ref(), Some(&set.id));
            }
        }
    };
    // Every change of a set shows in the generation (the detector's cue to look again).
    let generation = std::cell::Cell::new(s.sets_generation());
    assert!(generation.get().is_some(), "a cached store can tell");
    let moved = |why: &str| {
        let now = s.sets_generation();
        assert_ne!(now, generation.get(), "the generation after {why}");
        generation.set(now);
    };
    s.create_set(&set("s2"), &i("db-5")).unwrap();
    s.create_set(&set("s1"), &i("db-1")).unwrap();
    same(s, "create");
    moved("create");
    let add = |r: &str| TopologyChange::AddReplica {
        instance: i(r),
        options: ReplicaOptions::default(),
        source: None,
    };
    s.apply(&set("s1"), &add("db-2")).unwrap();
    s.apply_step("w", 0, "add", &set("s1"), &add("db-3"))
        .unwrap();
    same(s, "adding replicas");
    moved("adding replicas");
    s.apply(
        &set("s1"),
        &TopologyChange::NewMaster {
            new_master: i("db-2"),
        },
    )
    .unwrap();
    same(s, "a promotion");
    moved("a promotion");
    s.bump_epoch(&set("s2")).unwrap();
    same(s, "an epoch bump");
    moved("an epoch bump");
    // A refused change leaves both as they were.
    s.apply(&set("s2"), &add("db-2")).unwrap_err();
    same(s, "a refused change");
    s.apply(
        &set("s1"),
        &TopologyChange::RemoveReplica {
            instance: i("db-3"),
        },
    )
    .unwrap();
    assert_eq!(s.set_of(&i("db-3")).unwrap(), None);
    same(s, "a removal");
    moved("a removal");
    s.delete_set(&set("s2")).unwrap();
    assert_eq!(s.set(&set("s2")).unwrap(), None);
    assert_eq!(s.set_of(&i("db-5")).unwrap(), None);
    same(s, "a deletion");
    moved("a deletion");
    s.start_workflow(&wf("a", "s1")).unwrap();
    same(s, "a workflow started");
    s.update_workflow("a", WorkflowState::RollingBack, Some("why"))
        .unwrap();
    same(s, "a workflow rolling back");
    s.update_workflow("a", WorkflowState::Failed, None).unwrap();
    assert!(s.active_workflows().unwrap().is_empty());
    same(s, "a workflow ended");
}

pub(crate) fn workflows_and_the_audit_page_newest_first_without_repeats_or_gaps_and_filter(
    db: &dyn Opened,
) {
    let s = db.store();
    // Nine workflows, several created in the same millisecond (ties are ordered by id).
    for (n, at) in [5u64, 5, 5, 7, 7, 9, 3, 5, 8].into_iter().enumerate() {
        let mut w = wf(&format!("w{n}"), if n % 2 == 0 { "s1" } else { "s2" });
        w.created_at = Timestamp(at);
        w.state = if n % 3 == 0 {
            WorkflowState::Failed
        } else {
            WorkflowState::Done
        };
        s.start_workflow(&w).unwrap();
        for seq in 0..3u32 {
            s.journal_insert(&JournalEntry {
                workflow_id: w.id.clone(),
                seq,
                step: "step".into(),
                target: i(if seq == 1 { "db-2" } else { "db-1" }),
                command: "ping".into(),
                message_id: tandem_proto::MessageId::random(),
                epoch: Epoch::ZERO,
                result: None,
                sent_at: Timestamp(at * 10 + (seq as u64 % 2)),
            })
            .unwrap();
        }
    }
    let everything = s
        .workflows(&WorkflowFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(everything.len(), 9);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .workflows(&WorkflowFilter {
                after: after.clone(),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(WorkflowCursor::of(last));
        paged.extend(page);
    }
    let ids = |rows: &[WorkflowRow]| rows.iter().map(|w| w.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&paged),
        ids(&everything),
        "pages of 2 are the whole list"
    );
    assert!(everything
        .windows(2)
        .all(|p| (p[0].created_at, &p[1].id) >= (p[1].created_at, &p[0].id)));
    let s2_failed = s
        .workflows(&WorkflowFilter {
            set: Some(set("s2")),
            state: Some(WorkflowState::Failed),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&s2_failed), vec!["w3".to_string()]);

    let audit = |f: JournalFilter| s.journal_recent(&f).unwrap();
    let all = audit(JournalFilter {
        limit: 1000,
        ..Default::default()
    });
    assert_eq!(all.len(), 27);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = audit(JournalFilter {
            after: after.clone(),
            limit: 4,
            ..Default::default()
        });
        let Some(last) = page.last() else { break };
        after = Some(JournalCursor::of(last));
        paged.extend(page);
    }
    let keys = |e: &[JournalEntry]| {
        e.iter()
            .map(|e| (e.workflow_id.clone(), e.seq))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&paged), keys(&all), "pages of 4 are the whole audit");
    let to_db2_of_s1 = audit(JournalFilter {
        target: Some(i("db-2")),
        set: Some(set("s1")),
        limit: 1000,
        ..Default::default()
    });
    assert_eq!(
        to_db2_of_s1.len(),
        5,
        "one step to db-2 in each of s1's five"
    );
    assert!(to_db2_of_s1
        .iter()
        .all(|e| e.target == i("db-2") && e.seq == 1));
    let one = audit(JournalFilter {
        workflow: Some("w4".into()),
        limit: 1000,
        ..Default::default()
    });
    assert_eq!(one.len(), 3);
}

pub(crate) fn every_sets_rules_are_read_at_once_as_each_set_reads_them(db: &dyn Opened) {
    use tandem_api::{PlacementRule, RuleId};
    let s = db.store();
    let rule = |name: &str, bits: u64| PlacementRule {
        name: name.into(),
        created_at: Timestamp(bits),
        id: RuleId::from_bits(bits as u32),
        ..crate::decide::placement::default_rule()
    };
    s.create_rule(&rule("b", 2)).unwrap();
    s.create_rule(&rule("a", 1)).unwrap();
    for (name, master) in [("s1", "db-1"), ("s2", "db-2"), ("s3", "db-3")] {
        s.create_set(&set(name), &i(master)).unwrap();
    }
    s.add_set_rules(&set("s1"), &[RuleId::from_bits(2), RuleId::from_bits(1)])
        .unwrap();
    s.add_set_rules(&set("s2"), &[RuleId::from_bits(2)])
        .unwrap();
    let all = s.all_set_rules().unwrap();
    assert_eq!(all.len(), 2, "s3 keeps none: {all:?}");
    for name in ["s1", "s2"] {
        assert_eq!(all[&set(name)], s.set_rules(&set(name)).unwrap(), "{name}");
    }
    assert_eq!(all[&set("s1")].len(), 2);
}

pub(crate) fn every_topology_change_reads_back_as_decided(db: &dyn Opened) {
    let s = db.store();
    let add = |r: &str, source: Option<&str>| TopologyChange::AddReplica {
        instance: i(r),
        options: ReplicaOptions::default(),
        source: source.map(i),
    };
    let dr = |primary: &str, mirror: &str| tandem_api::DrSettings {
        profile: "dr".into(),
        primary: primary.parse().unwrap(),
        dr: mirror.parse().unwrap(),
        ack_from: Default::default(),
    };
    let pair = |passive_written| PairRecord {
        first: i("db-7"),
        second: i("db-8"),
        passive_written,
    };
    s.create_set(&set("s1"), &i("db-1")).unwrap();
    s.create_set(&set("s2"), &i("db-7")).unwrap();
    s.pool_add(&[i("db-5")]).unwrap();
    let steps: Vec<(&str, TopologyChange)> = vec![
        ("s1", add("db-2", None)),
        ("s1", add("db-3", None)),
        ("s1", add("db-4", Some("db-3"))),
        ("s1", add("db-5", Some("db-4"))),
        (
            "s1",
            TopologyChange::SetOptions {
                instance: i("db-2"),
                options: ReplicaOptions {
                    delay_s: 30,
                    paused: None,
                    filter: None,
                },
            },
        ),
        (
            "s1",
            TopologyChange::Reparent {
                instance: i("db-4"),
                source: i("db-2"),
            },
        ),
        (
            "s1",
            TopologyChange::NewMaster {
                new_master: i("db-2"),
            },
        ),
        (
            "s1",
            TopologyChange::Failover {
                new_master: i("db-3"),
                failed: i("db-2"),
            },
        ),
        (
            "s1",
            TopologyChange::Rejoin {
                instance: i("db-2"),
            },
        ),
        (
            "s1",
            TopologyChange::Quarantine {
                instance: i("db-2"),
            },
        ),
        (
            "s1",
            TopologyChange::Rejoin {
                instance: i("db-2"),
            },
        ),
        (
            "s1",
            TopologyChange::SiteSwitch {
                new_master: i("db-1"),
                dr: dr("b", "a"),
            },
        ),
        (
            "s1",
            TopologyChange::SiteFailover {
                new_master: i("db-2"),
                failed: vec![i("db-1"), i("db-4")],
                dr: dr("a", "b"),
            },
        ),
        (
            "s1",
            TopologyChange::RemoveReplica {
                instance: i("db-5"),
            },
        ),
        ("s2", add("db-8", None)),
        ("s2", TopologyChange::PairUp { pair: pair(0) }),
        (
            "s2",
            TopologyChange::PairSwitch {
                new_active: i("db-8"),
                pair: pair(4),
            },
        ),
    ];
    for (name, change) in &steps {
        let before = s.set(&set(name)).unwrap().unwrap();
        let decided = before.after(change).unwrap();
        let stored = s.apply(&set(name), change).unwrap();
        assert!(stored.epoch > before.epoch, "{change}: the epoch rises");
        assert_eq!(
            (&stored.master, &stored.members),
            (&decided.master, &decided.members),
            "{change}"
        );
        let fresh = db.reopen();
        assert_eq!(
            fresh.set(&set(name)).unwrap().as_ref(),
            Some(&stored),
            "{change}"
        );
        assert_eq!(
            fresh.set_of(&i("db-1")).unwrap(),
            Some(set("s1")),
            "{change}"
        );
    }
    assert!(
        s.pool().unwrap().is_empty(),
        "a server in a set leaves the pool"
    );
    assert_eq!(s.dr_settings(&set("s1")).unwrap(), Some(dr("a", "b")));
    assert_eq!(s.pair(&set("s2")).unwrap(), Some(pair(4)));
    let s1 = s.set(&set("s1")).unwrap().unwrap();
    assert_eq!(s1.master, i("db-2"));
    assert_eq!(
        s1.member(&i("db-1")).map(|m| m.role),
        Some(IntendedRole::Failed)
    );
    let s2 = s.set(&set("s2")).unwrap().unwrap();
    assert_eq!(
        (
            s2.master.clone(),
            s2.member(&i("db-7")).unwrap().replicates_from.clone()
        ),
        (i("db-8"), Some(i("db-8"))),
        "the passive side replicates from the active one"
    );

    // Refused changes are refused alike, and change nothing.
    let refused = [
        (
            TopologyChange::Reparent {
                instance: i("db-3"),
                source: i("db-3"),
            },
            "a cycle",
        ),
        (add("db-8", None), "already a member"),
        (
            TopologyChange::RemoveReplica {
                instance: i("db-1"),
            },
            "is not a replica",
        ),
        (
            TopologyChange::Rejoin {
                instance: i("db-3"),
            },
            "cannot be rejoined",
        ),
    ];
    for (change, why) in refused {
        let err = s.apply(&set("s1"), &change).unwrap_err();
        assert!(err.to_string().contains(why), "{change}: {err}");
        assert_eq!(s.set(&set("s1")).unwrap().as_ref(), Some(&s1));
        assert_eq!(db.reopen().set(&set("s1")).unwrap().as_ref(), Some(&s1));
    }
}
