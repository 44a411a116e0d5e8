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
