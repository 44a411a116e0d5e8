//! Drift repaired: a replica left on the wrong source (re-pointed by hand, or left
//! behind by a failover that could not reach it) or with a delay other than its
//! intended one is brought back to the intent by the conductor, with no operator.
//! Three real MariaDB servers, their agents, the conductor and the broker.

use std::time::{Duration, Instant};

use tandem_api::IntendedRole;
use tandem_api::{WorkflowKind, WorkflowState};
use tandem_e2e::promise::{failed_over, member, three, workflows_of_kind};
use tandem_e2e::{eventually, Cluster, ClusterOptions};

/// `name`'s replication source port and delay, as its engine says; `None` when it
/// does not replicate.
fn source_and_delay(c: &Cluster, name: &str) -> Option<(u16, u64)> {
    // SHOW SLAVE STATUS in batch mode: one tab-separated row; Master_Port is the 4th
    // column, SQL_Delay the 6th from the end (after Parallel_Mode, MariaDB 10.11).
    let status = c.db(name).sql("SHOW SLAVE STATUS").ok()?;
    let columns: Vec<&str> = status.split('\t').collect();
    let port = columns.get(3)?.trim().parse().ok()?;
    let delay = columns
        .get(columns.len().checked_sub(6)?)?
        .trim()
        .parse()
        .ok()?;
    Some((port, delay))
}

#[test]
fn a_replica_on_the_wrong_source_or_delay_is_brought_back_to_the_intent() {
    let c = three(false, ClusterOptions::read_only_at_start());
    let port = |name: &str| c.db(name).port();

    // Re-pointed by hand to the other replica (its replication account came to db-2
    // through replication, so the engine accepts it).
    c.db("db-3")
        .sql(&format!(
            "STOP SLAVE; CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}; START SLAVE",
            port("db-2")
        ))
        .unwrap();
    eventually(Duration::from_secs(20), "db-3 back on db-1", || {
        let (p, _) = source_and_delay(&c, "db-3")?;
        (p == port("db-1")).then_some(())
    });
    assert!(!workflows_of_kind(&c, WorkflowKind::Repoint).is_empty());

    // A delay set by hand differs from the intent (none): put back.
    c.db("db-2")
        .sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 600; START SLAVE")
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "db-2's hand-set delay removed",
        || (source_and_delay(&c, "db-2")? == (port("db-1"), 0)).then_some(()),
    );

    // The delay is the replica's option: its metadata key is a read-only view.
    let (ok, _, err) = c.cli(&["metadata", "set", "db-3", "replication_delay_s", "5"]);
    assert!(!ok && err.contains("read-only"), "{err}");
    let (ok, _, err) = c.cli(&["metadata", "delete", "db-3", "replication_delay_s"]);
    assert!(!ok && err.contains("read-only"), "{err}");

    // The intent names a delay: the engine gets it, and the metadata key shows it.
    c.cli_ok(&["replica", "delay", "s1", "db-3", "5", "--wait"]);
    eventually(Duration::from_secs(20), "db-3 delayed by 5 s", || {
        (source_and_delay(&c, "db-3")? == (port("db-1"), 5)).then_some(())
    });
    eventually(
        Duration::from_secs(5),
        "the metadata view of the delay",
        || {
            let shown = c.cli_ok(&["metadata", "get", "db-3", "replication_delay_s"]);
            (shown.trim() == "5").then_some(())
        },
    );
    // A delay taken away by hand is put back: the option is the intent.
    c.db("db-3")
        .sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE")
        .unwrap();
    eventually(Duration::from_secs(20), "db-3 delayed again", || {
        (source_and_delay(&c, "db-3")? == (port("db-1"), 5)).then_some(())
    });
    c.cli_ok(&["replica", "catch-up", "s1", "db-3", "--wait"]);
    eventually(Duration::from_secs(20), "db-3 no longer delayed", || {
        (source_and_delay(&c, "db-3")? == (port("db-1"), 0)).then_some(())
    });
    c.converged("s1");
    c.write_and_see_everywhere("s1", "db-1", 2);
}

#[test]
fn a_replica_a_failover_could_not_reach_is_re_pointed_when_it_is_back() {
    let mut c = three(false, ClusterOptions::read_only_at_start());
    // db-3's agent is stopped while the master dies: the failover cannot drain it and
    // leaves it replicating (trying to) from the dead master.
    c.node_mut("db-3").agent.pause().unwrap();
    let crash = Instant::now();
    c.node_mut("db-1").db.kill();
    let master = failed_over(&c, "db-1", Duration::from_secs(20));
    assert_eq!(master, "db-2");
    let summary = tandem_e2e::promise::failover_summary(&c);
    assert!(
        summary.not_repointed.iter().any(|r| r.contains("db-3")),
        "{summary:?}"
    );
    // The failover ended done: it promoted db-2, and says what it left.
    let failover = workflows_of_kind(&c, WorkflowKind::Failover);
    assert_eq!(failover[0].state, WorkflowState::Done, "{failover:?}");

    c.node_mut("db-3").agent.resume().unwrap();
    let role = eventually(
        Duration::from_secs(30),
        "db-3 re-pointed or quarantined",
        || {
            let view = c.set("s1");
            let m = member(&view, "db-3");
            let on_master =
                source_and_delay(&c, "db-3").is_some_and(|(p, _)| p == c.db(&master).port());
            if on_master && m.drift.is_empty() {
                return Some("replica".to_string());
            }
            (m.intended.role == IntendedRole::Quarantined).then(|| "quarantined".to_string())
        },
    );
    eprintln!(
        "db-3 {} {} ms after the crash",
        role,
        crash.elapsed().as_millis()
    );
    if role == "replica" {
        c.write_and_see_everywhere("s1", &master, 3);
    }
}
