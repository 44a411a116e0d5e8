use super::*;

/// Every closed set of words parses back from its own spelling, and an unknown word
/// is refused with the choices named.
#[test]
fn words_round_trip_and_refuse_strangers() {
    fn check<W: Word + PartialEq + std::fmt::Debug + serde::Serialize>() {
        for w in W::ALL {
            assert_eq!(W::parse_word(w.as_str()), Ok(*w));
            // The spelling is serde's spelling.
            assert_eq!(
                serde_json::to_value(w).unwrap(),
                serde_json::Value::String(w.as_str().into())
            );
        }
        let err = W::parse_word("nonsense").unwrap_err();
        assert!(err.contains(W::ALL[0].as_str()), "{err}");
    }
    check::<ErrorKind>();
    check::<IntendedRole>();
    check::<SeedMethod>();
    check::<FailoverAction>();
    check::<TakeBackupKind>();
    check::<WorkflowKind>();
    check::<WorkflowState>();
}

/// A spec's kind is its serde tag, so the stored `kind` column and the parameters can
/// never disagree.
#[test]
fn a_specs_kind_is_its_tag() {
    let set: tandem_proto::ReplicaSetId = "shop".parse().unwrap();
    let db: tandem_proto::InstanceId = "db-1".parse().unwrap();
    let specs = [
        WorkflowSpec::CreateSet {
            set: set.clone(),
            master: db.clone(),
        },
        WorkflowSpec::Switchover {
            set: set.clone(),
            candidate: db.clone(),
            from: "db-2".parse().unwrap(),
            epoch: tandem_proto::Epoch::new(7),
            catch_up_timeout_ms: None,
        },
        WorkflowSpec::RestoreWrites { set: set.clone() },
        WorkflowSpec::Provision {
            set: set.clone(),
            instances: vec![db.clone()],
            seed: Seed::Backup {
                backup_id: "b".parse().unwrap(),
            },
            options: ReplicaOptions::default(),
            source: Some("db-2".parse().unwrap()),
            make: Some(crate::MakeServers {
                count: 2,
                zone: Some("zone-b".into()),
            }),
        },
        WorkflowSpec::Reparent {
            set: set.clone(),
            lost: "db-2".parse().unwrap(),
        },
        WorkflowSpec::Reconfigure {
            set,
            instance: db,
            options: ReplicaOptions {
                delay_s: 60,
                paused: Some(Pause {
                    until: Some(tandem_proto::Position::Gtid("0-1-9".parse().unwrap())),
                    since: tandem_proto::Timestamp(5),
                }),
                filter: None,
            },
        },
    ];
    for spec in specs {
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["kind"], spec.kind().as_str());
        assert_eq!(serde_json::from_value::<WorkflowSpec>(v).unwrap(), spec);
    }
}

/// A switchover recorded before its parameters were typed (the old master and epoch
/// merged into the parameters as extra keys) still reads back, with its epoch.
#[test]
fn an_older_switchover_record_still_reads() {
    let stored = serde_json::json!({
        "kind": "switchover", "set": "shop", "candidate": "db-2",
        "from": "db-1", "epoch": 9, "catch_up_timeout_ms": 500
    });
    match serde_json::from_value::<WorkflowSpec>(stored).unwrap() {
        WorkflowSpec::Switchover {
            epoch,
            from,
            catch_up_timeout_ms,
            ..
        } => {
            assert_eq!(epoch.get(), 9);
            assert_eq!(from.as_str(), "db-1");
            assert_eq!(catch_up_timeout_ms, Some(500));
        }
        other => panic!("{other:?}"),
    }
    // Without its epoch it is refused, never read as epoch 0.
    let no_epoch = serde_json::json!({
        "kind": "switchover", "set": "shop", "candidate": "db-2", "from": "db-1"
    });
    assert!(serde_json::from_value::<WorkflowSpec>(no_epoch).is_err());
}

/// A redacted failed step still says why it failed.
#[test]
fn a_step_outcome_reads_the_error() {
    let entry = |result: Option<serde_json::Value>, command: &str| JournalEntry {
        workflow_id: "wf-1".into(),
        seq: 0,
        step: "s".into(),
        target: "db-1".parse().unwrap(),
        command: command.into(),
        message_id: tandem_proto::MessageId::random(),
        epoch: tandem_proto::Epoch::new(1),
        result,
        sent_at: tandem_proto::Timestamp(0),
    };
    assert_eq!(entry(None, "ping").outcome(), StepOutcome::InFlight);
    let failed = serde_json::to_value(tandem_proto::Reply::Err(tandem_proto::CommandError::new(
        tandem_proto::ErrorKind::EngineRefused,
        "boom",
    )))
    .unwrap();
    assert_eq!(
        entry(Some(failed), "ping").outcome(),
        StepOutcome::Failed("boom".into())
    );
    let note = serde_json::json!({"err": "not a reply"});
    assert_eq!(entry(Some(note), "note").outcome(), StepOutcome::Ok);
}

/// Backup ids are map keys in the backup list: they travel as strings and read back.
#[test]
fn a_backup_list_reads_back() {
    let mut running = std::collections::BTreeMap::new();
    running.insert(
        "db-1-17".parse::<tandem_proto::BackupId>().unwrap(),
        BackupRunView {
            instance: "db-1".parse().unwrap(),
            state: BackupRunState::Failed,
            error: Some("disk full".into()),
        },
    );
    let list = BackupList {
        backups: Vec::new(),
        running,
    };
    let json = serde_json::to_string(&list).unwrap();
    assert!(json.contains("\"db-1-17\":"), "{json}");
    assert_eq!(serde_json::from_str::<BackupList>(&json).unwrap(), list);
}

#[test]
fn a_replica_with_a_pause_or_a_delay_is_never_promoted_nor_acknowledges() {
    let plain = ReplicaOptions::default();
    assert!(plain.acknowledges() && plain.never_promoted().is_none());
    assert_eq!(plain.to_string(), "as any replica");
    let delayed = ReplicaOptions {
        delay_s: 60,
        paused: None,
        filter: None,
    };
    assert_eq!(
        delayed.never_promoted().as_deref(),
        Some("a delayed replica (60 s)")
    );
    assert!(!delayed.acknowledges());
    let paused = ReplicaOptions {
        delay_s: 0,
        paused: Some(Pause {
            until: None,
            since: tandem_proto::Timestamp(1),
        }),
        filter: None,
    };
    assert_eq!(
        paused.never_promoted().as_deref(),
        Some("paused by an operator")
    );
    // A member stored before options existed reads as a plain replica.
    let member: Member = serde_json::from_str(
        r#"{"instance": "db-2", "role": "replica", "replicates_from": "db-1", "writable": false}"#,
    )
    .unwrap();
    assert_eq!(member.options, plain);
}
