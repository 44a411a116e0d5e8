//! Long operations never hang and always say why: backups, restores and seeding with a
//! stage of the pipeline stopped or killed, with full disks (size-limited tmpfs), when
//! cancelled, and when the agent dies in the middle. Real `mariadbd`, `mariabackup`,
//! `mbstream`, `zstd`, the agent binary and the broker.

mod common;
use common::*;

use tandem_proto::{BackupKind, BackupRequest, MessageId, RestoreRequest, SeedSource};
use tandem_testkit::{Signal, SmallDisk};

/// `master` with about 130 MiB of rows: a copy of it takes a few seconds, long enough
/// to be stopped in the middle.
async fn big_master(h: &Harness, master: &str) {
    master_with_rows(h, master, 3).await;
    h.node(master)
        .db
        .sql(
            "CREATE TABLE app.big (id INT PRIMARY KEY, pad VARCHAR(1000)); \
              USE app; INSERT INTO big SELECT seq, REPEAT('x', 900) FROM seq_1_to_150000",
        )
        .unwrap();
}

/// Waits until `target` runs a long operation in `phase` that has moved bytes.
async fn running_in(h: &Harness, target: &str, phases: &[&str]) {
    eventually(
        Duration::from_secs(60),
        &format!("{target} to be {phases:?}"),
        async || {
            let report = h.status(target).await;
            let op = report.operations.first()?;
            (phases.contains(&op.phase.as_str()) && op.bytes_done > 0).then_some(())
        },
    )
    .await;
}

/// The result of long command `env`, re-sent as the conductor does.
async fn result_of(
    h: &Harness,
    env: &Envelope<Command>,
    limit: Duration,
) -> Result<ReplyBody, CommandError> {
    eventually(limit, "the long command to end", async || {
        match h.send(env).await {
            Ok(ReplyBody::Accepted { .. }) => None,
            other => Some(other),
        }
    })
    .await
}

/// What the store holds of backup `id` (data or metadata).
fn stored(store: &std::path::Path, id: &str) -> Vec<String> {
    std::fs::read_dir(store)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(id))
        .collect()
}

/// Staging directories beside `db`'s data directory (`data.tandem-*`).
fn staged(db: &MariaDb) -> Vec<String> {
    let datadir = db.datadir();
    std::fs::read_dir(datadir.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tandem-"))
        .collect()
}

fn take_backup(target: &str, id: &str) -> Envelope<Command> {
    envelope(
        target,
        Epoch::new(1),
        Command::TakeBackup(BackupRequest {
            backup_id: id.parse().unwrap(),
            kind: BackupKind::Full,
            time_limit_s: None,
        }),
    )
}

fn restore_of(target: &str, id: &str) -> Envelope<Command> {
    envelope(
        target,
        Epoch::new(1),
        Command::Restore(RestoreRequest {
            backup_id: id.parse().unwrap(),
            time_limit_s: None,
        }),
    )
}

#[tokio::test]
async fn a_backup_whose_pipeline_stage_stops_or_dies_ends_with_that_reason_and_leaves_nothing() {
    let store = tempfile::tempdir().unwrap();
    let mut env = local_store(store.path());
    env.push(("TANDEM_AGENT_STALL_LIMIT_S".into(), "3".into()));
    let h = Harness::with_env(&["db-1"], &env).await;
    big_master(&h, "db-1").await;
    let agent = &h.node("db-1").agent;
    let scratch = agent.state_dir().with_file_name("backups");

    // mariabackup stopped (SIGSTOP) in the middle: the bytes stop moving, the
    // watchdog ends the backup saying so, and the stopped child is killed.
    let stopped = take_backup("db-1", "stopped-1");
    h.send(&stopped).await.unwrap();
    running_in(&h, "db-1", &["copying"]).await;
    let mariabackup = agent.child("mariabackup").expect("mariabackup runs");
    mariabackup.signal(Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let err = result_of(&h, &stopped, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.message.contains("no progress for"), "{err:?}");
    assert!(err.message.contains("copying"), "{err:?}");
    assert!(!err.retryable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    eventually(
        Duration::from_secs(10),
        "the stopped mariabackup to be gone",
        async || mariabackup.ended().then_some(()),
    )
    .await;
    assert_eq!(
        stored(store.path(), "stopped-1"),
        Vec::<String>::new(),
        "an orphan in the store"
    );

    // zstd killed in the middle: the backup ends naming zstd, not the broken pipe
    // mariabackup then ran into.
    let killed = take_backup("db-1", "killed-1");
    h.send(&killed).await.unwrap();
    running_in(&h, "db-1", &["copying"]).await;
    let zstd = agent.child("zstd").expect("zstd runs");
    zstd.signal(Signal::SIGKILL).unwrap();
    let err = result_of(&h, &killed, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.message.contains("zstd failed"), "{err:?}");
    assert!(err.message.contains("signal: 9"), "{err:?}");
    assert_eq!(
        stored(store.path(), "killed-1"),
        Vec::<String>::new(),
        "an orphan in the store"
    );

    // Nothing is wedged: the next backup completes, and no scratch is left.
    let info = backup(&h, "db-1", "after-1", BackupKind::Full).await;
    assert!(info.data_bytes.is_some_and(|b| b > 100 << 20), "{info:?}");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "scratch left in {}: {left:?}",
        scratch.display()
    );
    assert!(h.status("db-1").await.operations.is_empty());
}

#[tokio::test]
async fn a_backup_into_a_full_store_or_a_full_scratch_space_says_the_disk_is_full_and_keeps_nothing(
) {
    let store = SmallDisk::new(2 << 20).unwrap();
    let scratch = SmallDisk::new(1 << 20).unwrap();
    let roomy = tempfile::tempdir().unwrap();
    let h = Harness::with_envs(&["db-1", "db-2"], |name| {
        if name == "db-1" {
            return local_store(store.path());
        }
        let mut env = local_store(roomy.path());
        env.push((
            "TANDEM_AGENT_ENGINE__BACKUP_DIR".into(),
            scratch.path().display().to_string(),
        ));
        env
    })
    .await;
    big_master(&h, "db-1").await;
    let err = long(&h, "db-1", 1, take_backup("db-1", "big-1").body)
        .await
        .unwrap_err();
    assert!(err.message.contains("disk full"), "{err:?}");
    assert!(err.message.contains("backup store"), "{err:?}");
    assert!(!err.retryable, "{err:?}");
    assert_eq!(
        stored(store.path(), "big-1"),
        Vec::<String>::new(),
        "an orphan in the store"
    );

    // db-2's scratch space is full (other work took it): named as such.
    SmallDisk::fill(scratch.path(), 0).unwrap();
    let err = long(&h, "db-2", 1, take_backup("db-2", "db2-1").body)
        .await
        .unwrap_err();
    assert!(err.message.contains("disk full"), "{err:?}");
    assert!(
        err.message.contains(&scratch.path().display().to_string()),
        "{err:?}"
    );
    assert_eq!(stored(roomy.path(), "db2-1"), Vec::<String>::new());
}

#[tokio::test]
async fn a_cancelled_or_interrupted_restore_leaves_the_target_as_it_was_and_cleans_up() {
    let store = tempfile::tempdir().unwrap();
    let mut h = Harness::with_env(&["db-1", "db-2"], &local_store(store.path())).await;
    big_master(&h, "db-1").await;
    let full = backup(&h, "db-1", "full-1", BackupKind::Full).await;
    mark(&h.node("db-2").db);

    // Cancelled while it verifies or unpacks.
    let cancelled = restore_of("db-2", full.backup_id.as_str());
    h.send(&cancelled).await.unwrap();
    running_in(&h, "db-2", &["verifying", "unpacking"]).await;
    let cancel = Command::CancelOperation {
        operation: cancelled.message_id,
    };
    assert_eq!(h.ok("db-2", 0, cancel).await, ReplyBody::Done);
    let err = result_of(&h, &cancelled, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        err.message.contains("cancelled by the conductor"),
        "{err:?}"
    );
    assert!(still_marked(&h.node("db-2").db), "the target changed");
    assert_eq!(staged(&h.node("db-2").db), Vec::<String>::new());
    let report = h.status("db-2").await;
    assert!(report.operations.is_empty(), "{:?}", report.operations);
    assert_eq!(report.role, Role::Standalone);
    // The operation ended: a second cancel says so; one for an unknown id too.
    for operation in [cancelled.message_id, MessageId::random()] {
        let err = h
            .cmd("db-2", 0, Command::CancelOperation { operation })
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest, "{err:?}");
        assert!(err.message.contains("is not running"), "{err:?}");
    }

    // The agent dies (kill -9) while it unpacks: its pipeline dies with it; started
    // again, it ends the restore as interrupted (a re-send is told so, nothing runs
    // again blindly) and removes what the restore had staged.
    let interrupted = restore_of("db-2", full.backup_id.as_str());
    h.send(&interrupted).await.unwrap();
    running_in(&h, "db-2", &["unpacking"]).await;
    // A stage that cannot end on its own (stopped): it must not outlive its agent.
    let unpacker = h
        .node("db-2")
        .agent
        .child("mbstream")
        .expect("mbstream runs");
    unpacker.signal(Signal::SIGSTOP).unwrap();
    h.node_mut("db-2").agent.kill();
    eventually(
        Duration::from_secs(10),
        "the stopped mbstream to die with its agent",
        async || unpacker.ended().then_some(()),
    )
    .await;
    assert!(
        !staged(&h.node("db-2").db).is_empty(),
        "nothing was staged yet"
    );
    h.node_mut("db-2").agent.start().unwrap();
    h.wait_ready("db-2").await;
    let err = result_of(&h, &interrupted, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(err.message.contains("interrupted"), "{err:?}");
    assert!(!err.retryable, "{err:?}");
    eventually(
        Duration::from_secs(10),
        "the staging space to be removed",
        async || staged(&h.node("db-2").db).is_empty().then_some(()),
    )
    .await;
    assert!(still_marked(&h.node("db-2").db), "the target changed");

    // And the same restore, sent anew, completes.
    restore(&h, "db-2", full.backup_id.as_str()).await.unwrap();
    assert_eq!(count(&h.node("db-2").db), "3");
}

#[tokio::test]
async fn copies_into_a_disk_without_room_are_refused_up_front_and_one_that_fills_up_says_so() {
    let store = tempfile::tempdir().unwrap();
    let h = Harness::with_small_disks(
        &["db-1", "db-2"],
        |_| local_store(store.path()),
        |name| (name == "db-2").then_some(4 << 20),
    )
    .await;
    master_with_rows(&h, "db-1", 3).await;
    let full = backup(&h, "db-1", "full-1", BackupKind::Full).await;
    mark(&h.node("db-2").db);

    // The backup's metadata says how much room it needs: refused before anything.
    let started = Instant::now();
    let err = restore(&h, "db-2", full.backup_id.as_str())
        .await
        .unwrap_err();
    assert!(err.message.contains("not enough disk space"), "{err:?}");
    assert!(err.message.contains("needs about"), "{err:?}");
    assert!(err.message.contains("MiB are free"), "{err:?}");
    assert!(!err.retryable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(still_marked(&h.node("db-2").db), "the target changed");

    // So does a live copy: the source's header says its size.
    let seed_at = h.status("db-1").await.seed_endpoint.unwrap();
    h.ok(
        "db-1",
        1,
        Command::OfferSeed {
            token: h.seal("db-1", "token-room-0123456789"),
            ttl_ms: 60_000,
        },
    )
    .await;
    let err = long(
        &h,
        "db-2",
        1,
        Command::SeedFrom(SeedSource {
            instance: id("db-1"),
            host: seed_at.host.clone(),
            port: seed_at.port,
            token: h.seal("db-2", "token-room-0123456789"),
            time_limit_s: None,
        }),
    )
    .await
    .unwrap_err();
    assert!(err.message.contains("not enough disk space"), "{err:?}");
    assert!(err.message.contains("a copy of db-1"), "{err:?}");
    assert!(still_marked(&h.node("db-2").db), "the target changed");

    // A backup made before backups recorded their size passes the check and fills the
    // disk while it is unpacked: it ends, soon, saying the disk is full (final), the
    // target exactly as it was and its staging space cleaned. (It used to hang for
    // good: the agent waited for `zstd -d` while holding the pipe zstd wrote to.)
    let meta = store.path().join("full-1.json");
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("data_bytes");
    old["backup_id"] = "old-1".into();
    std::fs::write(store.path().join("old-1.json"), old.to_string()).unwrap();
    std::fs::copy(
        store.path().join("full-1.xb.zst"),
        store.path().join("old-1.xb.zst"),
    )
    .unwrap();
    let started = Instant::now();
    let err = restore(&h, "db-2", "old-1").await.unwrap_err();
    assert!(
        err.message.contains("disk full") && err.message.contains("No space left"),
        "{err:?}"
    );
    assert!(!err.retryable, "a full disk is final: {err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(still_marked(&h.node("db-2").db), "the target changed");
    assert_eq!(staged(&h.node("db-2").db), Vec::<String>::new());
}
