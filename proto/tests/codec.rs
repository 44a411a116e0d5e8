//! Round-trip property tests for everything on the wire, forward-compatibility cases
//! (unknown fields, unknown commands) and arbitrary bytes fed to the decoder.

use proptest::prelude::*;
use tandem_proto::codec::{decode, encode, from_json, to_json};
use tandem_proto::*;

fn instance_id() -> impl Strategy<Value = InstanceId> {
    "[a-z0-9_-]{1,20}".prop_map(|s| InstanceId::new(s).unwrap())
}

fn gtid_set() -> impl Strategy<Value = GtidSet> {
    prop::collection::btree_map(0u32..4, (1u32..100, 0u64..u64::MAX), 0..4).prop_map(|m| {
        let mut set = GtidSet::empty();
        for (domain, (server_id, sequence)) in m {
            set.insert(Gtid {
                domain,
                server_id,
                sequence,
            });
        }
        set
    })
}

fn backup_id() -> impl Strategy<Value = BackupId> {
    "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,20}".prop_map(|s| BackupId::new(s).unwrap())
}

fn position() -> impl Strategy<Value = Position> {
    prop_oneof![
        gtid_set().prop_map(Position::Gtid),
        (
            1..5u32,
            any::<u64>(),
            proptest::collection::vec((1..5u32, any::<u64>()), 0..3)
        )
            .prop_map(|(timeline, lsn, history)| Position::Wal(WalPosition {
                timeline: Timeline(timeline),
                lsn: Lsn(lsn),
                history: history
                    .into_iter()
                    .map(|(t, e)| TimelineSwitch {
                        timeline: Timeline(t),
                        ended_at: Lsn(e),
                    })
                    .collect(),
            })),
    ]
}

fn source() -> impl Strategy<Value = SourceEndpoint> {
    (instance_id(), "[a-z0-9.]{1,15}", any::<u16>()).prop_map(|(instance, host, port)| {
        SourceEndpoint {
            instance,
            host,
            port,
        }
    })
}

fn sealed() -> impl Strategy<Value = Sealed> {
    prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| Sealed::from_bytes(&b))
}

fn credentials() -> impl Strategy<Value = ReplicationCredentials> {
    (".{0,10}", sealed()).prop_map(|(user, password)| ReplicationCredentials { user, password })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Ping),
        Just(Command::GetStatus),
        Just(Command::SetReadOnly),
        Just(Command::SetWritable),
        prop::option::of(any::<u64>()).prop_map(|t| Command::EnableAsMaster {
            semi_sync: t.map(|timeout_ms| SemiSyncSettings { timeout_ms })
        }),
        (instance_id(), any::<[u8; 32]>()).prop_map(|(replica, key)| {
            Command::CreateReplicationUser {
                replica,
                from: None,
                seal_to: AgentKey::from_bytes(key),
            }
        }),
        instance_id().prop_map(|replica| Command::DropReplicationUser { replica }),
        (source(), credentials(), prop::option::of(position())).prop_map(
            |(source, credentials, position)| Command::AttachToSource {
                source,
                credentials,
                semi_sync: position.is_some(),
                delay_s: 0,
                paused: None,
                filter: None,
                peer: false,
                position,
            }
        ),
        Just(Command::Detach),
        Just(Command::Demote),
        Just(Command::GetLatestPosition),
        (position(), any::<u64>()).prop_map(|(position, timeout_ms)| Command::WaitForPosition {
            position,
            timeout_ms
        }),
        any::<u64>().prop_map(|timeout_ms| Command::DrainReceived { timeout_ms }),
        (backup_id(), prop::option::of(any::<u64>())).prop_map(|(backup_id, time_limit_s)| {
            Command::TakeBackup(BackupRequest {
                backup_id,
                kind: BackupKind::Full,
                time_limit_s,
            })
        }),
        (backup_id(), backup_id()).prop_map(|(backup_id, parent)| Command::TakeBackup(
            BackupRequest {
                backup_id,
                kind: BackupKind::Incremental { parent },
                time_limit_s: None,
            }
        )),
        backup_id().prop_map(|backup_id| Command::Restore(RestoreRequest {
            backup_id,
            time_limit_s: Some(60),
        })),
        backup_id().prop_map(|backup_id| Command::DeleteBackup { backup_id }),
        (sealed(), any::<u64>()).prop_map(|(token, ttl_ms)| Command::OfferSeed { token, ttl_ms }),
        (instance_id(), ".{0,10}", any::<u16>(), sealed()).prop_map(
            |(instance, host, port, token)| {
                Command::SeedFrom(SeedSource {
                    instance,
                    host,
                    port,
                    token,
                    time_limit_s: None,
                })
            }
        ),
        Just(Command::StopEngine),
        Just(Command::StartEngine),
        Just(Command::StopWrites),
        (position(), any::<u64>()).prop_map(|(position, timeout_ms)| Command::TakeOverWrites {
            position,
            timeout_ms
        }),
        Just(Command::CancelOperation {
            operation: MessageId::random()
        }),
    ]
}

fn envelope<B: std::fmt::Debug + Clone>(
    body: impl Strategy<Value = B>,
) -> impl Strategy<Value = Envelope<B>> {
    (
        instance_id(),
        any::<u64>(),
        any::<u64>(),
        prop::option::of(any::<u64>()),
        any::<bool>(),
        body,
    )
        .prop_map(|(target, epoch, issued, expires, correlated, body)| {
            let mut e = Envelope::new(
                Sender::Conductor {
                    name: "conductor-1".into(),
                },
                target,
                Epoch::new(epoch),
                body,
            );
            e.issued_at = Timestamp(issued);
            e.expires_at = expires.map(Timestamp);
            if correlated {
                e.correlation_id = Some(MessageId::random());
            }
            e
        })
}

fn status_report() -> impl Strategy<Value = StatusReport> {
    (
        instance_id(),
        prop::option::of(instance_id()),
        prop::collection::vec(instance_id(), 0..3),
        prop::option::of(position()),
        prop::option::of(any::<bool>()),
        any::<u64>(),
        prop::option::of((0.0f64..1e6, any::<bool>())),
    )
        .prop_map(
            |(instance, from, to, position, writable, seq, lag)| StatusReport {
                instance,
                zone: "zone-a".into(),
                host_id: None,
                tags: vec!["ssd".into()],
                agent_version: "0.1.0".into(),
                protocol: VersionRange::OURS,
                engine: EngineKind::Mariadb,
                engine_version: Some("10.11.19-MariaDB".into()),
                seed_endpoint: Some(Endpoint {
                    host: "10.0.0.7".into(),
                    port: 4444,
                }),
                endpoint: Some(Endpoint {
                    host: "10.0.0.1".into(),
                    port: 3306,
                }),
                role: if from.is_some() {
                    Role::Replica
                } else {
                    Role::Master
                },
                writable,
                replicates_from: from,
                replicates_to: to,
                position: position.clone(),
                lag: lag.map(|(seconds, hb)| Lag {
                    seconds,
                    source: if hb {
                        LagSource::HeartbeatTable
                    } else {
                        LagSource::SecondsBehindMaster
                    },
                }),
                seconds_behind_master: Some(3),
                replication: Some(ReplicationState {
                    receiving: true,
                    applying: false,
                    last_receive_error: None,
                    last_apply_error: Some("Duplicate entry".into()),
                    received: position,
                    diverged: None,
                    delay_s: 0,
                    filter: None,
                }),
                health: Health::Degraded,
                last_error: None,
                host: HostMetrics {
                    cpu_percent: 1.5,
                    memory_used_bytes: 1 << 30,
                    memory_total_bytes: 1 << 34,
                    data_dir_free_bytes: Some(1 << 35),
                    agent_rss_bytes: Some(6 << 20),
                },
                highest_epoch: Epoch::new(seq / 2),
                sequence: seq,
                taken_at: Timestamp::now(),
                operations: vec![OperationProgress {
                    operation: MessageId::random(),
                    command: "take_backup".into(),
                    phase: "copying".into(),
                    bytes_done: seq,
                    bytes_total: Some(seq.saturating_add(1)),
                    started_at: Timestamp(seq),
                    rate_bytes_per_sec: Some(seq / 3),
                    eta_seconds: None,
                }],
                engine_settings: [("sync_binlog".to_string(), "1".to_string())].into(),
                fenced: seq % 2 == 0,
                lease_ms: Some(1500),
                semi_sync: Some(SemiSync::FallenBack),
                fencing_hazards: Vec::new(),
                restart_needed: Vec::new(),
                failsafe: None,
                refused_commands: 0,
                pair_side: None,
            },
        )
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        Just(Reply::Ok(ReplyBody::Done)),
        position().prop_map(|p| Reply::Ok(ReplyBody::Position { position: p })),
        credentials().prop_map(|c| Reply::Ok(ReplyBody::Credentials { credentials: c })),
        (backup_id(), any::<u64>(), prop::option::of(position())).prop_map(
            |(id, size, position)| {
                Reply::Ok(ReplyBody::Backup {
                    backup: Box::new(BackupInfo {
                        backup_id: id,
                        kind: BackupKind::Full,
                        instance: InstanceId::new("db-1").unwrap(),
                        engine: EngineKind::Mariadb,
                        engine_version: "10.11".into(),
                        position,
                        size_bytes: size,
                        sha256: "ab".repeat(32),
                        checkpoint: Some(size.to_string()),
                        data_bytes: Some(size),
                        created_at: Timestamp(size),
                        location: "/var/lib/tandem-agent/backups/x.xb.zst".into(),
                    }),
                })
            }
        ),
        status_report().prop_map(|s| Reply::Ok(ReplyBody::Status {
            report: Box::new(s)
        })),
        Just(Reply::Ok(ReplyBody::Pong {
            agent_version: "0.1.0".into(),
            protocol: VersionRange::OURS
        })),
        (
            prop_oneof![
                Just(ErrorKind::BadRequest),
                Just(ErrorKind::Fenced),
                Just(ErrorKind::EngineRefused),
                Just(ErrorKind::EngineUnavailable),
                Just(ErrorKind::TimedOut),
                Just(ErrorKind::Unsupported),
                Just(ErrorKind::Internal),
            ],
            ".{0,30}",
            any::<bool>()
        )
            .prop_map(|(kind, message, retryable)| Reply::Err(CommandError {
                kind,
                message,
                retryable
            })),
    ]
}

proptest! {
    #[test]
    fn commands_round_trip(e in envelope(command())) {
        let bytes = encode(&e).unwrap();
        prop_assert_eq!(&decode::<Envelope<Command>>(&bytes).unwrap(), &e);
        let text = to_json(&e).unwrap();
        prop_assert_eq!(&from_json::<Envelope<Command>>(&text).unwrap(), &e);
    }

    #[test]
    fn replies_round_trip(e in envelope(reply())) {
        let bytes = encode(&e).unwrap();
        prop_assert_eq!(&decode::<Envelope<Reply>>(&bytes).unwrap(), &e);
        let text = to_json(&e).unwrap();
        prop_assert_eq!(&from_json::<Envelope<Reply>>(&text).unwrap(), &e);
    }

    #[test]
    fn events_round_trip(e in envelope(reply().prop_map(|result| Event::OperationFinished {
        operation: MessageId::random(),
        command: "take_backup".into(),
        result,
    }))) {
        let bytes = encode(&e).unwrap();
        prop_assert_eq!(&decode::<Envelope<Event>>(&bytes).unwrap(), &e);
    }

    #[test]
    fn status_reports_round_trip(e in envelope(status_report())) {
        let bytes = encode(&e).unwrap();
        prop_assert_eq!(&decode::<Envelope<StatusReport>>(&bytes).unwrap(), &e);
        let text = to_json(&e).unwrap();
        prop_assert_eq!(&from_json::<Envelope<StatusReport>>(&text).unwrap(), &e);
    }

    /// The decoder's contract: arbitrary bytes give an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Envelope<Command>>(&bytes);
        let _ = decode::<Envelope<Reply>>(&bytes);
        let _ = decode::<Envelope<StatusReport>>(&bytes);
    }

    /// Truncating a valid message anywhere gives an error, never a panic or a wrong value.
    #[test]
    fn truncated_messages_are_errors(e in envelope(command()), cut in 0usize..1000) {
        let bytes = encode(&e).unwrap();
        let cut = cut % bytes.len();
        prop_assert!(decode::<Envelope<Command>>(&bytes[..cut]).is_err());
    }
}

/// A message as a newer conductor might send it: an extra envelope field, a command
/// this build has never heard of, with arguments.
fn future_message() -> serde_json::Value {
    let e = Envelope::new(
        Sender::Conductor { name: "c".into() },
        InstanceId::new("db-1").unwrap(),
        Epoch::new(4),
        Command::Ping,
    );
    let mut v = serde_json::to_value(&e).unwrap();
    v["trace_parent"] = serde_json::json!("00-abc-01");
    v["body"] = serde_json::json!({"command": "resize_volume", "gigabytes": 40});
    v
}

#[test]
fn an_unknown_command_decodes_to_unknown_and_keeps_the_envelope() {
    let v = future_message();
    let bytes = rmp_serde::to_vec_named(&v).unwrap();
    let e: Envelope<Command> = decode(&bytes).unwrap();
    assert_eq!(e.body, Command::Unknown);
    assert_eq!(e.epoch, Epoch::new(4));
    assert_eq!(e.target.as_str(), "db-1");

    let e: Envelope<Command> = from_json(&v.to_string()).unwrap();
    assert_eq!(e.body, Command::Unknown);
}

#[test]
fn unknown_fields_are_ignored_and_missing_optional_fields_default() {
    let mut v = future_message();
    v["body"] = serde_json::json!({"command": "wait_for_position",
        "position": {"gtid": "0-1-9"}, "timeout_ms": 500, "priority": "high"});
    v.as_object_mut().unwrap().remove("expires_at");
    v.as_object_mut().unwrap().remove("correlation_id");
    let bytes = rmp_serde::to_vec_named(&v).unwrap();
    let e: Envelope<Command> = decode(&bytes).unwrap();
    assert_eq!(e.expires_at, None);
    assert_eq!(
        e.body,
        Command::WaitForPosition {
            position: Position::Gtid("0-1-9".parse().unwrap()),
            timeout_ms: 500
        }
    );
}

#[test]
fn a_bad_field_value_is_a_clear_error() {
    let mut v = future_message();
    v["target"] = serde_json::json!("Not An Id");
    let bytes = rmp_serde::to_vec_named(&v).unwrap();
    let err = decode::<Envelope<Command>>(&bytes).unwrap_err().to_string();
    assert!(err.contains("contains 'N'"), "{err}");

    let mut v = future_message();
    v["body"] = serde_json::json!({"command": "wait_for_position",
        "position": {"gtid": "zero"}, "timeout_ms": 1});
    let err = from_json::<Envelope<Command>>(&v.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a GTID"), "{err}");
}

#[test]
fn the_json_form_is_readable() {
    let e = Envelope::new(
        Sender::Agent {
            instance: InstanceId::new("db-2").unwrap(),
        },
        InstanceId::new("db-2").unwrap(),
        Epoch::new(1),
        Reply::Ok(ReplyBody::Position {
            position: Position::Gtid("0-1-42".parse().unwrap()),
        }),
    );
    let text = to_json(&e).unwrap();
    assert!(text.contains(r#""gtid": "0-1-42""#), "{text}");
    assert!(text.contains(r#""kind": "agent""#), "{text}");
}

/// A command renamed to a word both engines share still reads under its first name.
#[test]
fn the_drain_command_reads_under_its_first_name() {
    let old = r#"{"command": "drain_relay_log", "timeout_ms": 5}"#;
    let cmd: Command = serde_json::from_str(old).unwrap();
    assert_eq!(cmd, Command::DrainReceived { timeout_ms: 5 });
    assert_eq!(
        serde_json::to_value(&cmd).unwrap()["command"],
        "drain_received"
    );
}

/// A backup id names files: anything that could leave the store's directory, hide a
/// file or break a name is refused where it arrives.
#[test]
fn backup_ids_that_are_not_plain_file_names_are_refused() {
    for bad in ["", "..", ".hidden", "a/b", "a b", "x\0", &"a".repeat(129)] {
        assert!(BackupId::new(bad).is_err(), "{bad:?} accepted");
        let json = serde_json::json!({"command": "delete_backup", "backup_id": bad});
        assert!(serde_json::from_value::<Command>(json).is_err(), "{bad:?}");
    }
    for good in ["db-1-1733400000000", "b1", "full.2026-12-05"] {
        assert_eq!(BackupId::new(good).unwrap().as_str(), good);
    }
}
