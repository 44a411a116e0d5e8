//! Paused and delayed replicas (issue 16): what an operator asks of one replica, set on
//! its engine, kept through a failover, never promoted, and undone on request. Three
//! real MariaDB servers, their agents, the conductor and the broker.

use std::time::{Duration, Instant};

use tandem_api::{MemberView, WorkflowKind, WorkflowRow, WorkflowState};
use tandem_e2e::promise::{failed_over, failover_summary, member, three, workflows_of_kind};
use tandem_e2e::{eventually, Cluster, ClusterOptions};
use tandem_proto::Position;

fn count(c: &Cluster, name: &str, table: &str) -> u64 {
    c.db(name)
        .sql(&format!("SELECT COUNT(*) FROM {table}"))
        .map(|s| s.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

fn view_of(c: &Cluster, name: &str) -> MemberView {
    member(&c.set("s1"), name).clone()
}

/// The engine's GTID position, as `SELECT @@gtid_current_pos` says.
fn gtid(c: &Cluster, name: &str) -> String {
    c.db(name)
        .sql("SELECT @@gtid_current_pos")
        .unwrap()
        .trim()
        .to_owned()
}

/// Runs a CLI command that starts a workflow and waits for it; returns its record.
fn done(c: &Cluster, args: &[&str]) -> WorkflowRow {
    let mut with_wait = args.to_vec();
    with_wait.push("--wait");
    c.cli_ok(&with_wait);
    let all: Vec<WorkflowRow> = c.cli_json(&["workflow", "list"]);
    let last = all
        .into_iter()
        .filter(|w| w.kind == WorkflowKind::Reconfigure)
        .max_by_key(|w| w.created_at)
        .expect("a reconfigure workflow");
    assert_eq!(last.state, WorkflowState::Done, "{last:?}");
    last
}

/// db-1's engine is killed: db-2 is promoted, and the failover's summary excludes
/// db-3 for a reason that says `why`.
fn master_killed_and_db3_excluded(c: &mut Cluster, why: &str) {
    c.node_mut("db-1").db.kill();
    let master = failed_over(c, "db-1", Duration::from_secs(20));
    assert_eq!(master, "db-2");
    let summary = failover_summary(c);
    assert!(
        summary
            .excluded
            .iter()
            .any(|(i, said)| i.as_str() == "db-3" && said.contains(why)),
        "{summary:?}"
    );
}

#[test]
fn a_delayed_replica_holds_rows_back_is_never_promoted_and_catches_up_on_request() {
    let mut c = three(false, ClusterOptions::read_only_at_start());
    done(&c, &["replica", "delay", "s1", "db-3", "6"]);
    eventually(Duration::from_secs(10), "db-3's engine delayed", || {
        (view_of(&c, "db-3").engine_delay_s == Some(6)).then_some(())
    });
    // The metadata key shows the engine's delay, and is not to be set by hand.
    assert_eq!(
        c.cli_ok(&["metadata", "get", "db-3", "replication_delay_s"])
            .trim(),
        "6"
    );
    let (ok, _, err) = c.cli(&["metadata", "set", "db-3", "replication_delay_s", "0"]);
    assert!(!ok && err.contains("read-only"), "{err}");

    // Rows reach db-2 at once and db-3 only after its delay.
    let written = Instant::now();
    c.db("db-1")
        .sql("INSERT INTO app.t VALUES (100), (101)")
        .unwrap();
    eventually(Duration::from_secs(5), "db-2 has the rows", || {
        (count(&c, "db-2", "app.t") == count(&c, "db-1", "app.t")).then_some(())
    });
    assert!(
        count(&c, "db-3", "app.t") < count(&c, "db-1", "app.t"),
        "db-3 applied rows before its delay"
    );
    eventually(Duration::from_secs(15), "db-3 has the rows", || {
        (count(&c, "db-3", "app.t") == count(&c, "db-1", "app.t")).then_some(())
    });
    assert!(
        written.elapsed() >= Duration::from_secs(5),
        "db-3 applied the rows after {:?}, before its delay of 6 s",
        written.elapsed()
    );

    // The master is lost: db-2 is promoted, db-3 is excluded for its delay and follows
    // the new master, still delayed.
    master_killed_and_db3_excluded(&mut c, "delayed");
    eventually(Duration::from_secs(30), "db-3 on the new master", || {
        let m = view_of(&c, "db-3");
        let observed = m.observed.as_ref()?;
        (observed.replicates_from.as_ref()?.as_str() == "db-2"
            && m.engine_delay_s == Some(6)
            && m.drift.is_empty())
        .then_some(())
    });

    // Caught up on request: the delay is gone on the engine and in the intent.
    c.db("db-2").sql("INSERT INTO app.t VALUES (102)").unwrap();
    done(&c, &["replica", "catch-up", "s1", "db-3"]);
    let caught_up = Instant::now();
    eventually(Duration::from_secs(5), "db-3 caught up", || {
        (count(&c, "db-3", "app.t") == count(&c, "db-2", "app.t")).then_some(())
    });
    assert!(caught_up.elapsed() < Duration::from_secs(5));
    let m = view_of(&c, "db-3");
    assert_eq!(m.intended.options.delay_s, 0);
    assert_eq!(m.engine_delay_s, Some(0));
}

#[test]
fn a_paused_replica_falls_behind_is_never_promoted_and_catches_up_after_resume() {
    let mut c = three(false, ClusterOptions::read_only_at_start());
    done(&c, &["replica", "pause", "s1", "db-3"]);
    let paused_at = gtid(&c, "db-3");
    for id in 200..210 {
        c.db("db-1")
            .sql(&format!("INSERT INTO app.t VALUES ({id})"))
            .unwrap();
    }
    eventually(Duration::from_secs(5), "db-2 has the rows", || {
        (count(&c, "db-2", "app.t") == count(&c, "db-1", "app.t")).then_some(())
    });
    // Paused: nothing applied, shown as paused with a growing lag, and no drift.
    let m = eventually(Duration::from_secs(10), "db-3's lag grows", || {
        let m = view_of(&c, "db-3");
        (m.lag_seconds? > 2.0).then_some(m)
    });
    assert!(m.intended.options.paused.is_some(), "{m:?}");
    assert_eq!(m.applying, Some(false));
    assert!(m.drift.is_empty(), "{m:?}");
    assert_eq!(gtid(&c, "db-3"), paused_at);
    let topology = c.cli_ok(&["topology"]);
    assert!(topology.contains("PAUSED"), "{topology}");
    // A switchover to it is refused, saying why.
    let (ok, _, err) = c.cli(&["promote", "s1", "db-3"]);
    assert!(!ok && err.contains("paused"), "{err}");

    // The master is lost: db-2 is promoted; db-3 is excluded for its pause and stays
    // paused on the new master.
    master_killed_and_db3_excluded(&mut c, "paused");
    eventually(Duration::from_secs(30), "db-3 paused on db-2", || {
        let m = view_of(&c, "db-3");
        (m.observed.as_ref()?.replicates_from.as_ref()?.as_str() == "db-2"
            && m.applying == Some(false)
            && m.drift.is_empty())
        .then_some(())
    });
    assert_eq!(gtid(&c, "db-3"), paused_at, "a paused replica applied rows");

    // Resumed: it applies everything, with no duplicate or GTID error.
    done(&c, &["replica", "resume", "s1", "db-3"]);
    c.converged_without("s1", "db-1");
    c.write_and_see_everywhere("s1", "db-2", 3);
    assert_eq!(count(&c, "db-3", "app.t"), count(&c, "db-2", "app.t"));
}

/// The "undo a bad DROP" procedure: a delayed replica is paused just before the bad
/// transaction, then detached as an independent server holding the table.
#[test]
fn a_delayed_replica_paused_before_a_bad_drop_keeps_the_table() {
    let c = three(false, ClusterOptions::read_only_at_start());
    done(&c, &["replica", "delay", "s1", "db-3", "8"]);
    c.db("db-1")
        .sql("INSERT INTO app.t VALUES (300), (301)")
        .unwrap();
    let before_drop = gtid(&c, "db-1");
    c.db("db-1").sql("DROP TABLE app.t").unwrap();
    done(
        &c,
        &[
            "replica",
            "pause",
            "s1",
            "db-3",
            "--until-position",
            &before_drop,
        ],
    );
    eventually(
        Duration::from_secs(20),
        "db-3 at the position before the drop",
        || (gtid(&c, "db-3") == before_drop).then_some(()),
    );
    // Well past its delay, it still holds the table and stands where it was told.
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(gtid(&c, "db-3"), before_drop);
    assert!(count(&c, "db-3", "app.t") >= 3, "db-3 lost the table");
    let m = view_of(&c, "db-3");
    let until: Position = before_drop.parse().unwrap();
    assert_eq!(
        m.intended
            .options
            .paused
            .as_ref()
            .and_then(|p| p.until.clone()),
        Some(until)
    );
    // Detached: an independent writable server with the table.
    c.cli_ok(&["replica", "detach", "s1", "db-3", "--wait"]);
    c.db("db-3").sql("INSERT INTO app.t VALUES (302)").unwrap();
    assert!(count(&c, "db-3", "app.t") >= 4);
}

#[test]
fn a_backup_of_a_paused_replica_is_restored_at_its_recorded_position() {
    let c = Cluster::start(4);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.write_and_see_everywhere("s1", "db-1", 1);
    done(&c, &["replica", "pause", "s1", "db-2"]);
    let paused_at = gtid(&c, "db-2");
    // The master moves on while db-2 is backed up.
    c.db("db-1").sql("INSERT INTO app.t VALUES (400)").unwrap();
    c.cli_ok(&["backup", "create", "db-2", "--wait"]);
    let backups: tandem_api::BackupList = c.cli_json(&["backup", "list"]);
    let info = backups
        .backups
        .iter()
        .find(|b| b.instance.as_str() == "db-2")
        .expect("db-2's backup");
    let recorded = info.position.clone().expect("a recorded position");
    assert_eq!(recorded, paused_at.parse::<Position>().unwrap());
    // db-3 restored from it starts there and replicates the rest, row 400 included.
    c.cli_ok(&[
        "replica",
        "add",
        "s1",
        "db-3",
        "--seed",
        "backup",
        "--backup",
        info.backup_id.as_str(),
        "--wait",
    ]);
    done(&c, &["replica", "resume", "s1", "db-2"]);
    c.converged("s1");
    c.write_and_see_everywhere("s1", "db-1", 2);
    assert_eq!(count(&c, "db-3", "app.t"), count(&c, "db-1", "app.t"));
}

#[test]
fn wrong_replica_options_are_refused_and_change_nothing() {
    let c = three(true, ClusterOptions::read_only_at_start());
    let before = c.set("s1");
    let refused: &[(&[&str], &str)] = &[
        (&["replica", "delay", "s1", "db-3", "-5"], "-5"),
        (&["replica", "delay", "s1", "db-3", "99999999"], "longest"),
        (&["replica", "pause", "s1", "db-9"], "not a replica"),
        (&["replica", "pause", "s1", "db-1"], "not a replica"),
        (&["replica", "pause", "s9", "db-2"], "no replica set s9"),
        (&["replica", "resume", "s1", "db-2"], "not paused"),
        (&["replica", "catch-up", "s1", "db-2"], "already"),
        (
            &["replica", "pause", "s1", "db-2", "--until-position", "soon"],
            "soon",
        ),
        (&["replica", "add", "s1", "db-9", "--delay", "x"], "x"),
        (
            &["replica", "add", "s1", "db-2", "--databases", "x'y"],
            "not a database name",
        ),
        (
            &["replica", "filter", "s1", "db-3", "--databases", "a,a"],
            "named twice",
        ),
        (&["replica", "filter", "s1", "db-3"], "name the databases"),
        (&["replica", "filter", "s1", "db-3", "--all"], "already"),
    ];
    for (args, said) in refused {
        let (ok, _, err) = c.cli(args);
        assert!(!ok && err.contains(said), "{args:?}: {err}");
    }
    // Semi-sync: one replica may pause, the last acknowledging one only by force.
    done(&c, &["replica", "pause", "s1", "db-2"]);
    let (ok, _, err) = c.cli(&["replica", "pause", "s1", "db-3"]);
    assert!(!ok && err.contains("last replica acknowledging"), "{err}");
    let (ok, _, err) = c.cli(&["replica", "delay", "s1", "db-3", "60"]);
    assert!(!ok && err.contains("last replica acknowledging"), "{err}");
    let after = c.set("s1");
    assert_eq!(
        member(&after, "db-3").intended.options,
        member(&before, "db-3").intended.options
    );
    assert_eq!(
        workflows_of_kind(&c, WorkflowKind::Reconfigure).len(),
        1,
        "a refused request started a workflow"
    );
    // A pause at a position the replica has passed is refused by its engine; the
    // workflow rolls back and the options stay.
    let passed = gtid(&c, "db-1");
    c.db("db-1").sql("INSERT INTO app.t VALUES (500)").unwrap();
    eventually(Duration::from_secs(5), "db-3 past it", || {
        (gtid(&c, "db-3") != passed).then_some(())
    });
    let row: WorkflowRow = c.cli_json(&[
        "replica",
        "pause",
        "s1",
        "db-3",
        "--until-position",
        &passed,
        "--force",
    ]);
    let ended = eventually(Duration::from_secs(20), "the pause workflow ends", || {
        let d = c.workflow(&row.id);
        (d.workflow.state != WorkflowState::Running).then_some(d)
    });
    assert_eq!(ended.workflow.state, WorkflowState::RolledBack, "{ended:?}");
    assert!(
        ended
            .workflow
            .error
            .as_deref()
            .is_some_and(|e| e.contains("beyond")),
        "{ended:?}"
    );
    assert!(view_of(&c, "db-3").intended.options.paused.is_none());
    c.converged("s1");
}

/// Whether database `name` exists on `server`.
fn has_database(c: &Cluster, server: &str, name: &str) -> bool {
    c.db(server)
        .sql(&format!(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{name}'"
        ))
        .unwrap()
        .trim()
        == "1"
}

#[test]
fn filtered_replicas_hold_only_their_databases_and_are_never_candidates() {
    let mut c = Cluster::start(3);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&[
        "replica",
        "add",
        "s1",
        "db-2",
        "--databases",
        "sales",
        "--wait",
    ]);
    c.cli_ok(&[
        "replica",
        "add",
        "s1",
        "db-3",
        "--exclude-databases",
        "sales",
        "--wait",
    ]);
    // Neither database exists yet: accepted, with a warning in the workflow's record.
    let attach = workflows_of_kind(&c, WorkflowKind::Attach)
        .into_iter()
        .find(|w| {
            matches!(&w.params, tandem_api::WorkflowSpec::Attach { instance, .. } if instance.as_str() == "db-2")
        })
        .expect("db-2's attach");
    let detail = c.workflow(&attach.id);
    let warning = detail
        .steps
        .iter()
        .find(|s| s.is_note() && s.step == "warning")
        .unwrap_or_else(|| panic!("no warning: {detail:?}"));
    assert!(
        warning
            .result
            .as_ref()
            .is_some_and(|r| r.to_string().contains("has no database sales")),
        "{warning:?}"
    );
    // Sent as an application would, without `USE`: the filter judges by table.
    c.db("db-1")
        .sql(
            "CREATE DATABASE sales; CREATE DATABASE stock; \
             CREATE TABLE sales.t (id INT PRIMARY KEY); CREATE TABLE stock.t (id INT PRIMARY KEY); \
             INSERT INTO sales.t VALUES (1), (2); INSERT INTO stock.t VALUES (1)",
        )
        .unwrap();
    eventually(Duration::from_secs(10), "each replica's databases", || {
        (count(&c, "db-2", "sales.t") == 2 && count(&c, "db-3", "stock.t") == 1).then_some(())
    });
    assert!(!has_database(&c, "db-2", "stock"), "db-2 got stock");
    assert!(!has_database(&c, "db-3", "sales"), "db-3 got sales");
    // Shown in the set view and the topology, with no drift.
    let view = c.set("s1");
    for (name, filter) in [
        (
            "db-2",
            tandem_proto::DatabaseFilter::Only(vec!["sales".into()]),
        ),
        (
            "db-3",
            tandem_proto::DatabaseFilter::Except(vec!["sales".into()]),
        ),
    ] {
        let m = member(&view, name);
        assert_eq!(m.intended.options.filter.as_ref(), Some(&filter), "{m:?}");
        assert_eq!(m.engine_filter.as_ref(), Some(&filter), "{m:?}");
        assert!(m.drift.is_empty(), "{m:?}");
    }
    assert!(c.cli_ok(&["topology"]).contains("FILTERED only sales"));
    let (ok, _, err) = c.cli(&["promote", "s1", "db-2"]);
    assert!(!ok && err.contains("filtered"), "{err}");

    // Narrowed later, by a workflow: stock stops reaching db-3.
    c.cli_ok(&[
        "replica",
        "filter",
        "s1",
        "db-3",
        "--exclude-databases",
        "sales,stock",
        "--wait",
    ]);
    c.db("db-1")
        .sql("INSERT INTO stock.t VALUES (2); INSERT INTO sales.t VALUES (3)")
        .unwrap();
    eventually(Duration::from_secs(10), "db-2 has sales row 3", || {
        (count(&c, "db-2", "sales.t") == 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&c, "db-3", "stock.t"),
        1,
        "a filtered-out row arrived"
    );

    // The master is lost: no filtered replica is promoted; the failover says why.
    c.node_mut("db-1").db.kill();
    let failed = eventually(Duration::from_secs(30), "the failover gives up", || {
        workflows_of_kind(&c, WorkflowKind::Failover)
            .into_iter()
            .find(|w| w.state == WorkflowState::Failed)
    });
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("db-2: a filtered replica") && error.contains("db-3: a filtered replica"),
        "{error}"
    );
    assert_eq!(c.set("s1").master.as_str(), "db-1");
}
