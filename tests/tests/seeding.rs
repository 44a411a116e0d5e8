//! Fresh replicas seeded through the conductor and the CLI: in parallel from a live
//! copy, from a backup, and a seeding that fails, all with real processes and engines.

use std::time::Duration;

use tandem_api::{
    BackupList, BackupRunState, BackupStarted, InstanceView, WorkflowDetail, WorkflowRow,
    WorkflowState,
};
use tandem_e2e::{eventually, Cluster};

/// Seeding is needed: the master's binary log no longer holds its first transactions,
/// so an empty replica could not catch up from it.
fn purge_binary_logs(c: &Cluster, master: &str) {
    c.db(master)
        .sql("FLUSH BINARY LOGS; DO SLEEP(1.1); PURGE BINARY LOGS BEFORE NOW()")
        .unwrap();
}

fn count(c: &Cluster, name: &str) -> String {
    c.db(name)
        .sql("SELECT COUNT(*) FROM app.t")
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn fresh_replicas_are_seeded_in_parallel_by_stream_and_from_a_backup_then_replicate() {
    let c = Cluster::start(5);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.write_and_see_everywhere("s1", "db-1", 1);
    c.db("db-1")
        .sql("USE app; INSERT INTO t SELECT seq FROM seq_100_to_5000")
        .unwrap();
    purge_binary_logs(&c, "db-1");

    // Two at once, each streamed straight from the master's agent.
    let out = c.cli_ok(&[
        "replica", "add", "s1", "db-2", "db-3", "--seed", "stream", "--wait",
    ]);
    assert!(out.contains("done"), "{out}");
    c.converged("s1");
    for r in ["db-2", "db-3"] {
        assert_eq!(
            count(&c, r),
            count(&c, "db-1"),
            "{r} holds the master's rows"
        );
    }
    let audit = c.cli_ok(&["audit"]);
    assert!(audit.contains("seed_from"), "{audit}");
    assert!(audit.contains("offer_seed"), "{audit}");

    // A backup, then a replica restored from it and attached at its position.
    let out = c.cli_ok(&["backup", "create", "db-1", "--wait"]);
    assert!(out.contains("db-1-") && out.contains("full"), "{out}");
    let list = c.cli_ok(&["backup", "list"]);
    let backup_id = list.split_whitespace().next().unwrap().to_owned();
    assert!(backup_id.starts_with("db-1-"), "{list}");
    c.write_and_see_everywhere("s1", "db-1", 2);
    c.cli_ok(&["replica", "add", "s1", "db-4", "--seed", "backup", "--wait"]);
    c.converged("s1");
    c.write_and_see_everywhere("s1", "db-1", 3);
    assert_eq!(count(&c, "db-4"), count(&c, "db-1"));
    // A clone of a replica (not the master) joins too.
    c.cli_ok(&[
        "replica", "add", "s1", "db-5", "--seed", "stream", "--from", "db-2", "--wait",
    ]);
    c.converged("s1");
    c.write_and_see_everywhere("s1", "db-1", 4);
    assert_eq!(count(&c, "db-5"), count(&c, "db-1"));
    let set = c.set("s1");
    assert_eq!(set.members.len(), 5);

    // An incremental continues it; the full cannot be deleted under it.
    let out = c.cli_ok(&["backup", "create", "db-1", "--incremental", "--wait"]);
    assert!(
        out.contains(&format!("incremental of {backup_id}")),
        "{out}"
    );
    let (ok, _, err) = c.cli(&["backup", "delete", &backup_id]);
    assert!(!ok && err.contains("depend on it"), "{err}");
    let inc = c
        .cli_ok(&["backup", "list"])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    c.cli_ok(&["backup", "delete", &inc]);
    c.cli_ok(&["backup", "delete", &backup_id]);
    assert!(!c.cli_ok(&["backup", "list"]).contains(&backup_id));
    assert!(!c
        .backups
        .path()
        .join(format!("{backup_id}.xb.zst"))
        .exists());
}

#[test]
fn a_seeding_that_fails_leaves_the_instance_as_it_was_and_out_of_the_set() {
    let mut c = Cluster::start(2);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.write_and_see_everywhere("s1", "db-1", 1);
    c.cli_ok(&["backup", "create", "db-1", "--wait"]);
    let list = c.cli_ok(&["backup", "list"]);
    let backup_id = list.split_whitespace().next().unwrap().to_owned();
    let file = c.backups.path().join(format!("{backup_id}.xb.zst"));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&file, bytes).unwrap();
    c.db("db-2")
        .sql("CREATE DATABASE mine; CREATE TABLE mine.x (v INT); INSERT INTO mine.x VALUES (7)")
        .unwrap();

    let read_only_before = c.db("db-2").sql("SELECT @@read_only").unwrap();

    let (ok, _, err) = c.cli(&["replica", "add", "s1", "db-2", "--seed", "backup", "--wait"]);
    assert!(!ok, "a corrupt backup must not seed a replica");
    assert!(err.contains("corrupt") && err.contains("db-2"), "{err}");
    let set = c.set("s1");
    assert_eq!(set.members.len(), 1, "{set:?}");
    assert_eq!(c.db("db-2").sql("SELECT v FROM mine.x").unwrap(), "7");
    assert_eq!(
        c.db("db-2").sql("SELECT @@read_only").unwrap(),
        read_only_before,
        "agent log:\n{}",
        tandem_e2e::tail(&c.nodes[1].agent.log(), 30)
    );
    eventually(Duration::from_secs(10), "db-2 reported standalone", || {
        let all: Vec<InstanceView> = c.cli_json(&["status"]);
        let me = all.iter().find(|i| i.id.as_str() == "db-2")?;
        (me.observed.replicates_from.is_none()
            && me.observed.writable == Some(read_only_before == "0"))
        .then_some(())
    });

    // Retention: with one full chain kept, a new full backup deletes the older one.
    c.conductor.stop();
    c.conductor
        .set_env("TANDEM_CONDUCTOR_BACKUP_KEEP", Some("1"));
    c.conductor.start_again().unwrap();
    eventually(Duration::from_secs(20), "the agents reported again", || {
        let out = c.cli(&["status"]).1;
        (out.contains("db-1") && out.contains("db-2")).then_some(())
    });
    c.cli_ok(&["backup", "create", "db-1", "--wait"]);
    let list = c.cli_ok(&["backup", "list"]);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(!list.contains(&backup_id), "{list}");
    assert!(
        !file.exists(),
        "the old backup's data is gone from the store"
    );

    // Wrong input is refused up front.
    for (args, expected) in [
        (
            vec!["replica", "add", "s1", "db-2", "--seed", "teleport"],
            "is not one of none, stream, backup, auto",
        ),
        (
            vec![
                "replica", "add", "s1", "db-2", "--seed", "stream", "--from", "db-9",
            ],
            "db-9 is not a member of set s1",
        ),
        (
            vec![
                "replica", "add", "s1", "db-2", "--seed", "backup", "--backup", "nope",
            ],
            "no backup nope is recorded",
        ),
        (
            vec!["backup", "create", "db-9"],
            "no agent of instance db-9",
        ),
        (
            vec!["backup", "delete", "nope"],
            "no backup nope is recorded",
        ),
    ] {
        let (ok, _, err) = c.cli(&args);
        assert!(!ok && err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn an_operator_cancels_a_running_seed_and_the_instance_is_left_as_it_was() {
    let c = Cluster::start(2);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.write_and_see_everywhere("s1", "db-1", 1);
    c.db("db-1")
        .sql(
            "CREATE TABLE app.big (id INT PRIMARY KEY, pad VARCHAR(1000)); \
             USE app; INSERT INTO big SELECT seq, REPEAT('x', 900) FROM seq_1_to_100000",
        )
        .unwrap();
    c.db("db-2")
        .sql("CREATE DATABASE mine; CREATE TABLE mine.x (v INT); INSERT INTO mine.x VALUES (7)")
        .unwrap();

    let row: WorkflowRow = c.cli_json(&["replica", "add", "s1", "db-2", "--seed", "stream"]);
    let wf = row.id;
    // The source's copy stops (as a stuck child would) as soon as it starts: only the
    // cancel ends it.
    let source = eventually(Duration::from_secs(60), "the source to copy", || {
        let child = c.nodes[0].agent.child("mariabackup")?;
        child.signal(tandem_testkit::Signal::SIGSTOP).ok()?;
        Some(child)
    });
    eventually(Duration::from_secs(30), "db-2 to be copying", || {
        let me = c.instance("db-2");
        (me.status.operations.first()?.phase == "copying").then_some(())
    });

    let out = c.cli_ok(&["workflow", "cancel", &wf]);
    assert!(out.contains("cancel requested"), "{out}");
    let ended = eventually(Duration::from_secs(60), "the workflow to end", || {
        let v: WorkflowDetail = c.cli_json(&["workflow", "show", &wf]);
        (!v.workflow.state.is_active()).then_some(v)
    });
    let error = ended.workflow.error.clone().unwrap_or_default();
    assert_eq!(ended.workflow.state, WorkflowState::RolledBack, "{ended:?}");
    assert!(error.starts_with("cancelled by an operator"), "{error}");
    assert!(
        error.contains("cancelled by the conductor while copying"),
        "{error}"
    );
    let shown = c.cli_ok(&["workflow", "show", &wf]);
    assert!(shown.contains("cancelled"), "{shown}");

    // db-2 is as it was: its own data, out of the set, nothing staged; the source's
    // stopped copy was ended too.
    assert_eq!(c.db("db-2").sql("SELECT v FROM mine.x").unwrap(), "7");
    assert_eq!(c.set("s1").members.len(), 1);
    let staged = c.db("db-2").datadir().with_file_name("data.tandem-seed");
    assert!(!staged.exists(), "{} left behind", staged.display());
    eventually(Duration::from_secs(90), "the source's copy to end", || {
        source.ended().then_some(())
    });

    // An ended workflow cannot be cancelled; an unknown one is not found.
    let (ok, _, err) = c.cli(&["workflow", "cancel", &wf]);
    assert!(!ok && err.contains("already ended"), "{err}");
    let (ok, _, err) = c.cli(&["workflow", "cancel", "wf-nothere"]);
    assert!(!ok && err.contains("no workflow wf-nothere"), "{err}");

    // Asked again, the seeding completes.
    c.cli_ok(&["replica", "add", "s1", "db-2", "--seed", "stream", "--wait"]);
    c.converged("s1");
    c.write_and_see_everywhere("s1", "db-1", 2);
}

#[test]
fn an_operator_cancels_a_running_backup_and_nothing_is_left_in_the_store() {
    let c = Cluster::start(1);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.db("db-1")
        .sql(
            "CREATE DATABASE app; CREATE TABLE app.big (id INT PRIMARY KEY, pad VARCHAR(1000)); \
             USE app; INSERT INTO big SELECT seq, REPEAT('x', 900) FROM seq_1_to_50000",
        )
        .unwrap();
    let started: BackupStarted = c.cli_json(&["backup", "create", "db-1"]);
    let backup = started.backup_id;
    // Its copy stops (as a stuck child would): only the cancel ends it.
    let stuck = eventually(Duration::from_secs(60), "the backup to copy", || {
        let child = c.nodes[0].agent.child("mariabackup")?;
        child.signal(tandem_testkit::Signal::SIGSTOP).ok()?;
        Some(child)
    });
    let out = c.cli_ok(&["backup", "cancel", backup.as_str()]);
    assert!(out.contains("cancel requested"), "{out}");
    let error = eventually(Duration::from_secs(60), "the backup to fail", || {
        let v: BackupList = c.cli_json(&["backup", "list"]);
        let run = v.running.get(&backup)?;
        (run.state == BackupRunState::Failed).then(|| run.error.clone().unwrap_or_default())
    });
    assert!(
        error.contains("cancelled by the conductor while copying"),
        "{error}"
    );
    eventually(
        Duration::from_secs(10),
        "the stopped mariabackup to end",
        || stuck.ended().then_some(()),
    );
    let left: Vec<_> = std::fs::read_dir(c.backups.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(backup.as_str()))
        .collect();
    assert!(left.is_empty(), "left in the store: {left:?}");
    let (ok, _, err) = c.cli(&["backup", "cancel", backup.as_str()]);
    assert!(!ok && err.contains("is not running"), "{err}");
    // The next backup is stored.
    let out = c.cli_ok(&["backup", "create", "db-1", "--wait"]);
    assert!(out.contains("full"), "{out}");
}
