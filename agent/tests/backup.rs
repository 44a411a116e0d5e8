//! Backups, restores and seeding through the agent binary, against real `mariadbd`
//! instances, `mariabackup`, the real broker and a backup store shared by the agents.

mod common;
use common::*;

use tandem_proto::{BackupKind, BackupRequest, SeedSource};

/// The objects of a store as the test sees them, bypassing the agent.
enum Raw<'a> {
    Local(&'a std::path::Path),
    Swift(&'a tandem_testkit::Swift),
}

impl Raw<'_> {
    fn get(&self, key: &str) -> Vec<u8> {
        match self {
            Raw::Local(dir) => std::fs::read(dir.join(key)).unwrap(),
            Raw::Swift(s) => s
                .get(key)
                .unwrap()
                .unwrap_or_else(|| panic!("no object {key}")),
        }
    }
    fn put(&self, key: &str, data: &[u8]) {
        match self {
            Raw::Local(dir) => std::fs::write(dir.join(key), data).unwrap(),
            Raw::Swift(s) => s.put(key, data).unwrap(),
        }
    }
}

/// Copies stored backup `from` as `to`, with its data passed through `damage` and its
/// metadata through `edit`: how a broken backup is made without a broken disk.
fn forge(
    store: &Raw,
    from: &str,
    to: &str,
    damage: impl FnOnce(&mut Vec<u8>),
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let mut data = store.get(&format!("{from}.xb.zst"));
    damage(&mut data);
    store.put(&format!("{to}.xb.zst"), &data);
    let mut meta: serde_json::Value =
        serde_json::from_slice(&store.get(&format!("{from}.json"))).unwrap();
    meta["backup_id"] = to.into();
    edit(&mut meta);
    store.put(&format!("{to}.json"), &serde_json::to_vec(&meta).unwrap());
}

#[tokio::test]
async fn a_backup_is_accepted_at_once_finished_by_an_event_and_repeats_are_answered_from_the_record(
) {
    let store = tempfile::tempdir().unwrap();
    let h = Harness::with_env(&["db-1"], &local_store(store.path())).await;
    master_with_rows(&h, "db-1", 2).await;
    let db = &h.node("db-1").db;
    let mut events = h.client.subscribe_events("#");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = gtid(db);
    let take = envelope(
        "db-1",
        Epoch::new(1),
        Command::TakeBackup(BackupRequest {
            backup_id: "b1".parse().unwrap(),
            kind: BackupKind::Full,
            time_limit_s: None,
        }),
    );
    let accepted = h.send(&take).await.unwrap();
    assert_eq!(
        accepted,
        ReplyBody::Accepted {
            operation: take.message_id
        }
    );
    let event = tokio::time::timeout(Duration::from_secs(60), events.next())
        .await
        .expect("the backup finishes within a minute")
        .unwrap();
    let tandem_proto::Event::OperationFinished {
        operation,
        command,
        result,
    } = event.body
    else {
        panic!("{event:?}")
    };
    assert_eq!(
        (operation, command.as_str()),
        (take.message_id, "take_backup")
    );
    let backup = match result.into_result() {
        Ok(ReplyBody::Backup { backup }) => *backup,
        other => panic!("{other:?}"),
    };
    assert_eq!(backup.instance, id("db-1"));
    // The master's agent writes heartbeats, so the position moves on by itself.
    let at = backup.position.clone().unwrap();
    assert!(before <= at && at <= gtid(db), "{before} <= {at} <= now");
    assert!(
        backup.checkpoint.is_some(),
        "a full backup records where an incremental continues"
    );

    // The stored bytes are what the metadata says.
    let file = store.path().join("b1.xb.zst");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), backup.size_bytes);
    let sum = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sum.stdout).starts_with(&backup.sha256));

    // A re-send is answered with the result on record, and runs nothing.
    assert_eq!(
        h.send(&take).await.unwrap(),
        ReplyBody::Backup {
            backup: Box::new(backup.clone())
        }
    );
    assert!(h.status("db-1").await.operations.is_empty());

    // The same id again is refused in the result. (A bad id, `../etc` say, cannot even
    // be decoded: `BackupId` holds only plain file names; proto's codec tests say so.)
    let dup = backup_err(&h, "b1").await;
    assert_eq!(dup.kind, ErrorKind::BadRequest);
    assert!(dup.message.contains("already exists"), "{}", dup.message);
    assert!(tandem_proto::BackupId::new("../etc").is_err());
    // Deleting removes both objects; a second delete is done too (a delete is done
    // when the backup is gone), and changes nothing.
    h.ok(
        "db-1",
        1,
        Command::DeleteBackup {
            backup_id: "b1".parse().unwrap(),
        },
    )
    .await;
    assert!(!file.exists() && !store.path().join("b1.json").exists());
    h.ok(
        "db-1",
        1,
        Command::DeleteBackup {
            backup_id: "b1".parse().unwrap(),
        },
    )
    .await;
    assert!(!file.exists() && !store.path().join("b1.json").exists());
}

async fn backup_err(h: &Harness, id: &str) -> CommandError {
    let request = BackupRequest {
        backup_id: id.parse().unwrap(),
        kind: BackupKind::Full,
        time_limit_s: None,
    };
    long(h, "db-1", 1, Command::TakeBackup(request))
        .await
        .unwrap_err()
}

/// Full and incremental backups of db-1 restore on db-2 (the incremental applied on its
/// full), and db-2 then replicates from the backup's position; broken backups and a
/// broken chain are refused with db-2 left exactly as it was.
async fn restores_verify_and_incrementals_apply_on_their_full(
    env: Vec<(String, String)>,
    store: Raw<'_>,
) {
    let h = Harness::with_env(&["db-1", "db-2"], &env).await;
    master_with_rows(&h, "db-1", 3).await;
    let (master, target) = (&h.node("db-1").db, &h.node("db-2").db);
    let full = backup(&h, "db-1", "full-1", BackupKind::Full).await;
    insert(master, 4..=6);
    let before = gtid(master);
    let inc = backup(
        &h,
        "db-1",
        "inc-1",
        BackupKind::Incremental {
            parent: "full-1".parse().unwrap(),
        },
    )
    .await;
    let at_incremental = inc.position.clone().unwrap();
    assert!(before <= at_incremental && at_incremental <= gtid(master));
    assert!(
        inc.size_bytes < full.size_bytes,
        "an incremental holds only the changes"
    );
    insert(master, 7..=9);
    mark(target);
    let target_pid = target.pid();

    {
        let store = &store;
        forge(
            store,
            "full-1",
            "flipped",
            |d| {
                let m = d.len() / 2;
                d[m] ^= 0x01
            },
            |_| {},
        );
        forge(
            store,
            "full-1",
            "truncated",
            |d| d.truncate(d.len() - 100),
            |_| {},
        );
        forge(
            store,
            "full-1",
            "foreign",
            |_| {},
            |m| m["engine"] = "postgresql".into(),
        );
        forge(
            store,
            "inc-1",
            "orphan",
            |_| {},
            |m| m["kind"]["parent"] = "gone".into(),
        );
        let cases = [
            ("flipped", "backup flipped is corrupt: its SHA-256"),
            ("truncated", "backup truncated is truncated or grown"),
            (
                "foreign",
                "backup foreign is a postgresql backup; this is a mariadb server",
            ),
            ("missing", "there is no backup missing"),
            ("orphan", "the chain of backup orphan is broken at orphan"),
        ];
        for (backup_id, expected) in cases {
            let err = restore(&h, "db-2", backup_id).await.unwrap_err();
            assert!(
                err.message.contains(expected),
                "{backup_id}: {}",
                err.message
            );
            assert!(still_marked(target), "{backup_id} changed the target");
            assert_eq!(target.pid(), target_pid, "{backup_id} restarted the target");
        }
    }

    let position = restore(&h, "db-2", "inc-1").await.unwrap();
    assert_eq!(position, at_incremental);
    assert_eq!(count(target), "6", "the incremental's rows, not later ones");
    assert!(!still_marked(target), "the data directory was replaced");
    assert_eq!(target.sql("SELECT @@read_only").unwrap(), "1");
    let report = h.status("db-2").await;
    assert_eq!(report.role, tandem_proto::Role::Standalone);
    assert!(report.operations.is_empty());

    attach_at(&h, "db-1", "db-2", position).await;
    insert(master, 10..=10);
    eventually(Duration::from_secs(20), "db-2 to catch up", async || {
        (count(target) == "10").then_some(())
    })
    .await;

    // A chain whose full is gone is refused before anything is touched.
    h.ok(
        "db-1",
        1,
        Command::DeleteBackup {
            backup_id: "full-1".parse().unwrap(),
        },
    )
    .await;
    let err = restore(&h, "db-2", "inc-1").await.unwrap_err();
    assert!(
        err.message.contains("the chain of backup inc-1 is broken"),
        "{}",
        err.message
    );
    assert_eq!(count(target), "10");
    assert_eq!(h.status("db-2").await.role, tandem_proto::Role::Replica);
}

#[tokio::test]
async fn restores_verify_and_incrementals_apply_on_their_full_in_a_local_store() {
    let store = tempfile::tempdir().unwrap();
    restores_verify_and_incrementals_apply_on_their_full(
        local_store(store.path()),
        Raw::Local(store.path()),
    )
    .await;
}

#[tokio::test]
async fn restores_verify_and_incrementals_apply_on_their_full_in_a_swift_store() {
    let swift = tandem_testkit::Swift::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let env = swift.agent_env(keys.path()).unwrap();
    restores_verify_and_incrementals_apply_on_their_full(env, Raw::Swift(&swift)).await;
}

#[tokio::test]
async fn a_stream_seeded_replica_catches_up_and_an_interrupted_seed_leaves_the_target_as_it_was() {
    let store = tempfile::tempdir().unwrap();
    let mut h = Harness::with_env(&["db-1", "db-2", "db-3"], &local_store(store.path())).await;
    master_with_rows(&h, "db-1", 3).await;
    // Enough data that a copy takes a while, so it can be interrupted in the middle.
    h.node("db-1")
        .db
        .sql(
            "CREATE TABLE app.big (id INT PRIMARY KEY, pad VARCHAR(1000)); \
              USE app; INSERT INTO big SELECT seq, REPEAT('x', 900) FROM seq_1_to_150000",
        )
        .unwrap();
    let seed_at = h
        .status("db-1")
        .await
        .seed_endpoint
        .expect("the agent advertises its seed listener");
    // Tokens sealed to the agent that uses them, as the conductor sends them.
    let source = |target: &str, token: &str| SeedSource {
        instance: id("db-1"),
        host: seed_at.host.clone(),
        port: seed_at.port,
        token: h.seal(target, token),
        time_limit_s: None,
    };
    let offer = |token: &str| Command::OfferSeed {
        token: h.seal("db-1", token),
        ttl_ms: 60_000,
    };

    h.ok("db-1", 1, offer("token-one-0123456789")).await;
    let position = match long(
        &h,
        "db-2",
        1,
        Command::SeedFrom(source("db-2", "token-one-0123456789")),
    )
    .await
    {
        Ok(ReplyBody::Position { position }) => position,
        other => panic!("{other:?}"),
    };
    assert!(position <= gtid(&h.node("db-1").db));
    attach_at(&h, "db-1", "db-2", position).await;
    insert(&h.node("db-1").db, 4..=5);
    eventually(Duration::from_secs(20), "db-2 to catch up", async || {
        (count(&h.node("db-2").db) == "5").then_some(())
    })
    .await;
    assert_eq!(
        h.node("db-2")
            .db
            .sql("SELECT COUNT(*) FROM app.big")
            .unwrap(),
        "150000"
    );

    // A token is good once.
    mark(&h.node("db-3").db);
    let err = long(
        &h,
        "db-3",
        1,
        Command::SeedFrom(source("db-3", "token-one-0123456789")),
    )
    .await
    .unwrap_err();
    assert!(
        err.message.contains("unknown, expired or already used"),
        "{}",
        err.message
    );
    assert!(still_marked(&h.node("db-3").db));

    // The source's agent dies in the middle of a copy: the target is left as it was.
    h.ok("db-1", 1, offer("token-two-0123456789")).await;
    let seed = envelope(
        "db-3",
        Epoch::new(1),
        Command::SeedFrom(source("db-3", "token-two-0123456789")),
    );
    h.send(&seed).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the copy to start arriving",
        async || {
            let report = h.status("db-3").await;
            let op = report.operations.first()?;
            (op.phase == "copying" && op.bytes_done > 0).then_some(())
        },
    )
    .await;
    h.node_mut("db-1").agent.kill();
    let err = eventually(
        Duration::from_secs(90),
        "the seed to fail",
        async || match h.send(&seed).await {
            Ok(ReplyBody::Accepted { .. }) => None,
            other => Some(other.unwrap_err()),
        },
    )
    .await;
    assert!(
        err.message
            .contains("closed the connection before the copy was complete")
            || err.message.contains("broke"),
        "{}",
        err.message
    );
    let target = &h.node("db-3").db;
    assert!(still_marked(target), "the target was touched");
    assert!(
        !target.datadir().with_file_name("data.tandem-seed").exists(),
        "staging left behind"
    );
    let report = h.status("db-3").await;
    assert_eq!(report.role, tandem_proto::Role::Standalone);
    assert_eq!(report.health, Health::Healthy);
    assert!(report.operations.is_empty());
}

#[tokio::test]
async fn a_seed_over_mutual_tls_replicates_and_agents_without_a_certificate_from_the_ca_are_refused(
) {
    let store = tempfile::tempdir().unwrap();
    let ca = tandem_testkit::TestCa::new("tandem seed CA").unwrap();
    let stranger = tandem_testkit::TestCa::new("another CA").unwrap();
    // db-1 (the source) and db-2 hold certificates from the CA; db-3 speaks plain TCP;
    // db-4 holds a certificate from another CA.
    let h = Harness::with_envs(&["db-1", "db-2", "db-3", "db-4"], |name| {
        let mut env = local_store(store.path());
        env.extend(match name {
            "db-1" | "db-2" => ca.seed_env(name).unwrap(),
            "db-4" => stranger.seed_env(name).unwrap(),
            _ => vec![],
        });
        env
    })
    .await;
    master_with_rows(&h, "db-1", 3).await;
    let seed_at = h.status("db-1").await.seed_endpoint.unwrap();
    let seed = async |target: &str, token: &str| {
        h.ok(
            "db-1",
            1,
            Command::OfferSeed {
                token: h.seal("db-1", token),
                ttl_ms: 60_000,
            },
        )
        .await;
        let source = SeedSource {
            instance: id("db-1"),
            host: seed_at.host.clone(),
            port: seed_at.port,
            token: h.seal(target, token),
            time_limit_s: None,
        };
        long(&h, target, 1, Command::SeedFrom(source)).await
    };

    let position = match seed("db-2", "token-tls-0123456789").await {
        Ok(ReplyBody::Position { position }) => position,
        other => panic!("{other:?}"),
    };
    attach_at(&h, "db-1", "db-2", position).await;
    insert(&h.node("db-1").db, 4..=5);
    eventually(Duration::from_secs(20), "db-2 to catch up", async || {
        (count(&h.node("db-2").db) == "5").then_some(())
    })
    .await;

    for (target, token) in [
        ("db-3", "token-plain-0123456789"),
        ("db-4", "token-alien-0123456789"),
    ] {
        mark(&h.node(target).db);
        let err = seed(target, token).await.unwrap_err();
        assert!(err.message.contains("TLS"), "{target}: {}", err.message);
        assert!(still_marked(&h.node(target).db), "{target} was touched");
        assert_eq!(h.status(target).await.role, tandem_proto::Role::Standalone);
    }
}
