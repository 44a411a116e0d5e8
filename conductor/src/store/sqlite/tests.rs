use super::*;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    (dir, s)
}
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

#[test]
fn one_active_workflow_per_set_is_enforced_by_the_store() {
    let (_d, s) = store();
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

#[test]
fn epochs_come_from_one_sequence_and_a_journaled_change_is_applied_once() {
    let (_d, s) = store();
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

#[test]
fn the_sets_held_in_memory_are_what_the_database_holds_after_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = SqliteStore::open(&path).unwrap();
    // What a store opened afresh on the same file reads: the database's truth.
    let on_disk = || {
        let fresh = SqliteStore::open(&path).unwrap();
        (fresh.sets().unwrap(), fresh.active_workflows().unwrap())
    };
    let same = |s: &SqliteStore, why: &str| {
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
    s.create_set(&set("s2"), &i("db-5")).unwrap();
    s.create_set(&set("s1"), &i("db-1")).unwrap();
    same(&s, "create");
    let add = |r: &str| TopologyChange::AddReplica {
        instance: i(r),
        options: ReplicaOptions::default(),
        source: None,
    };
    s.apply(&set("s1"), &add("db-2")).unwrap();
    s.apply_step("w", 0, "add", &set("s1"), &add("db-3"))
        .unwrap();
    same(&s, "adding replicas");
    s.apply(
        &set("s1"),
        &TopologyChange::NewMaster {
            new_master: i("db-2"),
        },
    )
    .unwrap();
    same(&s, "a promotion");
    s.bump_epoch(&set("s2")).unwrap();
    same(&s, "an epoch bump");
    // A refused change leaves both as they were.
    s.apply(&set("s2"), &add("db-2")).unwrap_err();
    same(&s, "a refused change");
    s.apply(
        &set("s1"),
        &TopologyChange::RemoveReplica {
            instance: i("db-3"),
        },
    )
    .unwrap();
    assert_eq!(s.set_of(&i("db-3")).unwrap(), None);
    same(&s, "a removal");
    s.delete_set(&set("s2")).unwrap();
    assert_eq!(s.set(&set("s2")).unwrap(), None);
    assert_eq!(s.set_of(&i("db-5")).unwrap(), None);
    same(&s, "a deletion");
    s.start_workflow(&wf("a", "s1")).unwrap();
    same(&s, "a workflow started");
    s.update_workflow("a", WorkflowState::RollingBack, Some("why"))
        .unwrap();
    same(&s, "a workflow rolling back");
    s.update_workflow("a", WorkflowState::Failed, None).unwrap();
    assert!(s.active_workflows().unwrap().is_empty());
    same(&s, "a workflow ended");
}

#[test]
fn the_queries_of_a_fleet_use_an_index() {
    let (_d, s) = store();
    let plan = |sql: &str| -> String {
        s.with(|c| {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let rows: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(3))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows.join("; "))
        })
        .unwrap()
    };
    for (sql, index) in [
        (
            "SELECT instance FROM members WHERE set_id = 's1'",
            "members_by_set",
        ),
        (
            "SELECT id FROM workflows ORDER BY created_at DESC LIMIT 50",
            "workflows_by_created",
        ),
        (
            "SELECT seq FROM journal ORDER BY sent_at DESC LIMIT 50",
            "journal_by_sent",
        ),
    ] {
        let plan = plan(sql);
        assert!(plan.contains(index), "{sql}: {plan}");
    }
}

#[test]
fn workflows_and_the_audit_page_newest_first_without_repeats_or_gaps_and_filter() {
    let (_d, s) = store();
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

#[test]
fn a_cursor_reads_back_what_it_wrote() {
    let w = WorkflowCursor {
        created_at: Timestamp(1_700_000_000_123),
        id: "wf-1a2b~odd".into(),
    };
    let back: WorkflowCursor = w.to_string().parse().unwrap();
    assert_eq!(back.created_at, w.created_at);
    let j = JournalCursor {
        sent_at: Timestamp(5),
        workflow_id: "wf~x".into(),
        seq: 7,
    };
    assert_eq!(j.to_string().parse::<JournalCursor>().unwrap(), j);
    for bad in ["", "nonsense", "1~w", "x~w~1", "1~w~x"] {
        assert!(bad.parse::<JournalCursor>().is_err(), "{bad}");
    }
    assert!("12".parse::<WorkflowCursor>().is_err());
}

#[test]
fn every_sets_rules_are_read_at_once_as_each_set_reads_them() {
    use crate::store::PlacementStore;
    use tandem_api::{PlacementRule, RuleId};
    let (_d, s) = store();
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

#[test]
fn instances_are_recorded_many_at_once_and_an_unchanged_one_is_not_written() {
    let (_d, s) = store();
    let record = |id: &str, zone: &str| InstanceRecord {
        id: i(id),
        zone: zone.into(),
        engine: "mariadb".into(),
        host: Some("10.0.0.1".into()),
        port: Some(3306),
        host_id: None,
    };
    s.upsert_instances(&[record("db-1", "a"), record("db-2", "a")])
        .unwrap();
    let changes = |s: &SqliteStore| s.with(|c| Ok(c.total_changes())).unwrap();
    let before = changes(&s);
    // The same records again: nothing written.
    s.upsert_instances(&[record("db-1", "a"), record("db-2", "a")])
        .unwrap();
    assert_eq!(changes(&s), before);
    // One moved: only it.
    s.upsert_instances(&[record("db-1", "a"), record("db-2", "b")])
        .unwrap();
    assert_eq!(changes(&s), before + 1);
    assert_eq!(s.instance(&i("db-2")).unwrap().unwrap().zone, "b");
    assert_eq!(s.instance(&i("db-1")).unwrap().unwrap().zone, "a");
}
