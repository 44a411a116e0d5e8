//! Issue 5's acceptance, end to end: the real broker, three `mariadbd`, three agent
//! processes and the conductor process, driven through the `tandem` CLI; every state
//! checked against the engines.

use std::time::Duration;

use tandem_api::{ApiEvent, JournalEntry, StepOutcome, WorkflowState};
use tandem_e2e::{eventually, Cluster};
use tandem_proto::Role;

#[test]
fn a_replica_set_is_created_switched_over_and_detached_with_the_contract_true_at_every_step() {
    let c = Cluster::start(3);

    // Create the set and add two replicas.
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--wait"]);
    assert_eq!(c.converged("s1"), "db-1");
    c.write_and_see_everywhere("s1", "db-1", 1);
    let topology = c.cli_ok(&["topology"]);
    assert!(
        topology.contains("db-1 @zone-a/? [master writable healthy]"),
        "{topology}"
    );
    assert!(
        topology.contains("db-2 @zone-a/? [replica read-only healthy]"),
        "{topology}"
    );

    // Switchover: db-2 becomes master, db-1 a read-only replica of it.
    let epoch_before = c.set("s1").epoch.get();
    c.cli_ok(&["promote", "s1", "db-2", "--wait"]);
    assert_eq!(c.converged("s1"), "db-2");
    assert!(c.set("s1").epoch.get() > epoch_before);
    c.write_and_see_everywhere("s1", "db-2", 2);
    // Nothing written before the switchover was lost.
    assert_eq!(c.db("db-2").sql("SELECT COUNT(*) FROM app.t").unwrap(), "2");

    // Detach db-3: it becomes an independent writable server.
    c.cli_ok(&["replica", "detach", "s1", "db-3", "--wait"]);
    assert_eq!(c.db("db-3").sql("SELECT @@read_only").unwrap(), "0");
    assert_eq!(c.db("db-3").sql("SHOW SLAVE STATUS").unwrap(), "");
    c.db("db-3").sql("INSERT INTO app.t VALUES (300)").unwrap();
    let set = c.set("s1");
    assert_eq!(set.members.len(), 2);
    assert_eq!(c.converged("s1"), "db-2");

    // The workflow history is there, step by step, with no password in it.
    let list = c.cli_ok(&["workflow", "list"]);
    assert_eq!(
        list.lines()
            .filter(|l| l.contains(" done") && !l.contains("failsafe"))
            .count(),
        5,
        "{list}"
    );
    let id = list
        .lines()
        .find(|l| l.contains("switchover"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let shown = c.cli_ok(&["--json", "workflow", "show", id]);
    assert!(shown.contains("candidate catches up"), "{shown}");
    assert!(shown.contains("\"password\": \"***\""), "{shown}");
}

#[test]
fn wrong_requests_are_refused_with_a_clear_message() {
    let c = Cluster::start(2);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["set", "create", "s1", "--master", "db-2"],
            "replica set s1 already exists",
        ),
        (
            &["set", "create", "s2", "--master", "db-1"],
            "db-1 is already a member of replica set s1",
        ),
        (
            &["set", "create", "s2", "--master", "db-9"],
            "no agent of instance db-9 has reported",
        ),
        (&["replica", "add", "nope", "db-2"], "no replica set nope"),
        (
            &["promote", "s1", "db-2"],
            "db-2 is not a replica of set s1",
        ),
        (
            &["replica", "detach", "s1", "db-1"],
            "db-1 is not a replica of set s1",
        ),
        (
            &["set", "create", "Bad Set", "--master", "db-2"],
            "replica set id",
        ),
        (&["metadata", "get", "db-1", "owner"], "has no metadata key"),
        (&["failover", "run", "nope"], "no replica set nope"),
        (
            &["failover", "run", "s1", "--candidate", "db-2"],
            "db-2 is not a replica of set s1",
        ),
        (&["failover", "run", "s1"], "is healthy: use a switchover"),
        (
            &["failover", "ack", "s1"],
            "no automatic failover to acknowledge",
        ),
        (&["failover", "pause", "nope"], "no replica set nope"),
    ];
    for (args, expected) in cases {
        let (ok, _, err) = c.cli(args);
        assert!(!ok, "tandem {args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(expected), "tandem {args:?}: {err}");
    }
    // Metadata round trip.
    c.cli_ok(&["metadata", "set", "db-1", "owner", "team-a"]);
    assert_eq!(c.cli_ok(&["metadata", "get", "db-1", "owner"]), "team-a\n");
    assert_eq!(c.cli_ok(&["metadata", "list", "db-1"]), "owner=team-a\n");
    c.cli_ok(&["metadata", "delete", "db-1", "owner"]);
    assert_eq!(c.cli_ok(&["metadata", "list", "db-1"]), "");
}

#[test]
fn two_switchovers_at_once_one_runs_and_the_other_is_refused() {
    let c = Cluster::start(3);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--wait"]);
    c.converged("s1");
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<(bool, String, String)> = std::thread::scope(|s| {
        let a = s.spawn(|| {
            barrier.wait();
            c.cli(&["promote", "s1", "db-2"])
        });
        let b = s.spawn(|| {
            barrier.wait();
            c.cli(&["promote", "s1", "db-3"])
        });
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let accepted = results.iter().filter(|r| r.0).count();
    assert_eq!(accepted, 1, "{results:?}");
    let refused = results.iter().find(|r| !r.0).unwrap();
    assert!(
        refused.2.contains("already has an active workflow"),
        "{}",
        refused.2
    );
    eventually(Duration::from_secs(30), "the switchover to end", || {
        let list = c.cli_ok(&["workflow", "list"]);
        list.lines()
            .find(|l| l.contains("switchover"))
            .filter(|l| l.contains(" done"))
            .map(|_| ())
    });
    let m = c.converged("s1");
    assert!(m == "db-2" || m == "db-3");
}

#[test]
fn a_switchover_whose_candidate_cannot_catch_up_rolls_back_and_says_so() {
    let c = Cluster::start(2);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.converged("s1");
    c.write_and_see_everywhere("s1", "db-1", 1);
    // The candidate stops applying; the master takes one more write it will not see.
    c.db("db-2").sql("STOP SLAVE SQL_THREAD").unwrap();
    c.db("db-1").sql("INSERT INTO app.t VALUES (2)").unwrap();

    let (ok, _, err) = c.cli(&[
        "promote",
        "s1",
        "db-2",
        "--catch-up-timeout-ms",
        "1000",
        "--wait",
    ]);
    assert!(!ok);
    assert!(err.contains("rolled_back"), "{err}");
    assert!(err.contains("not reached"), "{err}");
    assert!(err.contains("db-1 is the writable master again"), "{err}");

    // The old master takes writes again and the candidate is still its read-only replica.
    assert_eq!(c.db("db-1").sql("SELECT @@read_only").unwrap(), "0");
    assert_eq!(c.db("db-2").sql("SELECT @@read_only").unwrap(), "1");
    c.db("db-2").sql("START SLAVE SQL_THREAD").unwrap();
    assert_eq!(c.converged("s1"), "db-1");
    c.write_and_see_everywhere("s1", "db-1", 3);
}

#[test]
fn the_event_stream_and_the_audit_log_show_what_happened() {
    let c = Cluster::start(2);
    let mut follower = c
        .conductor
        .cli_command()
        .args(["--json", "events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.converged("s1");
    // Someone makes the replica writable behind the conductor's back: drift, shown in
    // the topology and raised as an event until it is put right.
    c.db("db-2").sql("SET GLOBAL read_only = 0").unwrap();
    let topology = eventually(Duration::from_secs(5), "the drift in the topology", || {
        let t = c.cli_ok(&["topology"]);
        t.contains("DRIFT: writable: wanted false, engine says true")
            .then_some(t)
    });
    assert!(topology.contains("db-2"), "{topology}");
    c.db("db-2").sql("SET GLOBAL read_only = 1").unwrap();
    c.converged("s1");
    // The master made read-only behind its back: the conductor gives writes back (a
    // healthy master must take writes), with a workflow that says so.
    c.db("db-1").sql("SET GLOBAL read_only = 1").unwrap();
    eventually(Duration::from_secs(10), "writes given back to db-1", || {
        let w = c.cli_ok(&["workflow", "list"]);
        (w.contains("restore_writes") && c.db("db-1").sql("SELECT @@read_only").ok()? == "0")
            .then_some(())
    });
    c.converged("s1");
    std::thread::sleep(Duration::from_millis(1500));
    follower.kill().unwrap();
    let _ = follower.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut follower.stdout.take().unwrap(), &mut out).unwrap();
    let events: Vec<ApiEvent> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event {l}: {e}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ApiEvent::WorkflowStarted { .. })),
        "{out}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ApiEvent::WorkflowStep { .. })),
        "{out}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            ApiEvent::WorkflowEnded {
                state: WorkflowState::Done,
                ..
            }
        )),
        "{out}"
    );
    // db-2 turned from a writable standalone server into a read-only replica of db-1.
    assert!(
        events.iter().any(|e| matches!(e,
            ApiEvent::InstanceChanged { instance, role: Role::Replica, writable: Some(false), replicates_from: Some(from), .. }
                if instance.as_str() == "db-2" && from.as_str() == "db-1")),
        "{out}"
    );

    let audit: Vec<JournalEntry> = c.cli_json(&["audit"]);
    let attach = audit
        .iter()
        .find(|e| e.command == "attach_to_source")
        .expect("the attach is in the audit log");
    assert_eq!(attach.target.as_str(), "db-2");
    assert_eq!(attach.outcome(), StepOutcome::Ok, "{attach:?}");
    let creds = audit
        .iter()
        .find(|e| e.command == "create_replication_user")
        .unwrap();
    // The reply itself is JSON (a replication password inside): redacted in the answer.
    let result = creds.result.as_ref().expect("the reply is recorded");
    assert_eq!(result["ok"]["credentials"]["password"], "***");
    let text = c.cli_ok(&["audit"]);
    assert!(
        text.lines()
            .any(|l| l.contains("attach_to_source") && l.contains("-> db-2")),
        "{text}"
    );
}
