//! A replica that holds what its master never had (an errant transaction) is never
//! promoted, by a switchover or a failover, and is quarantined; a replica whose applier
//! stops on an out-of-order transaction is reported diverged at once. Three real
//! MariaDB servers, their agents, the conductor and the broker; the writer and the
//! observer (ordinary and privileged account) keep the promise's records.

use std::time::{Duration, Instant};

use tandem_api::IntendedRole;
use tandem_api::{WorkflowKind, WorkflowRow, WorkflowState};
use tandem_e2e::load::{Observer, Writer};
use tandem_e2e::promise::{
    assert_all_acknowledged_on, assert_never_two_writable, failed_over, failover_summary, member,
    three,
};
use tandem_e2e::{eventually, ClusterOptions};
use tandem_proto::SemiSync;

/// An admin writes on a replica in a GTID domain of its own, as in the field: nothing
/// stops the replica's applier, and by the position order it is "ahead" of everyone.
const ERRANT_WRITE: &str =
    "SET SESSION gtid_domain_id = 99; INSERT INTO app.t VALUES (990); SET SESSION gtid_domain_id = 0";

#[test]
fn an_errant_replica_is_refused_by_switchover_skipped_by_failover_and_quarantined() {
    let mut c = three(true, ClusterOptions::read_only_at_start());
    eventually(Duration::from_secs(20), "semi-sync active on db-1", || {
        (member(&c.set("s1"), "db-1").semi_sync == Some(SemiSync::Active)).then_some(())
    });

    // Switchover to db-3 right after its errant write (before its agent has seen it
    // twice): the candidate caught up, but holds 99-…-1 that db-1 never had.
    c.db("db-3").sql(ERRANT_WRITE).unwrap();
    let (ok, out, err) = c.cli(&["promote", "s1", "db-3", "--wait"]);
    assert!(!ok, "promoted an errant replica: {out}");
    assert!(
        err.contains("errant") || err.contains("diverged") || err.contains("quarantined"),
        "{err}"
    );
    assert!(
        err.contains("99-"),
        "the refusal names the errant position: {err}"
    );
    assert_eq!(c.set("s1").master.as_str(), "db-1");
    assert_eq!(c.db("db-1").sql("SELECT @@read_only").unwrap(), "0");

    // Its agent reports it diverged and the conductor quarantines it: out of
    // replication, read-only, shown in the topology and the audit log.
    eventually(Duration::from_secs(15), "db-3 quarantined", || {
        (member(&c.set("s1"), "db-3").intended.role == IntendedRole::Quarantined).then_some(())
    });
    let topology = c.cli_ok(&["topology"]);
    assert!(topology.contains("QUARANTINED"), "{topology}");
    assert!(c.cli_ok(&["--json", "audit"]).contains("99-"));
    eventually(Duration::from_secs(10), "db-3 out of replication", || {
        (c.db("db-3").sql("SHOW SLAVE STATUS").ok()?.is_empty()).then_some(())
    });
    assert_eq!(c.db("db-3").sql("SELECT @@read_only").unwrap(), "1");
    let (ok, _, err) = c.cli(&["promote", "s1", "db-3", "--wait"]);
    assert!(!ok, "a quarantined member was promoted");
    assert!(!err.is_empty());

    // Re-seeded in place it replicates again, without the stray row, and never
    // became writable in between.
    let observer = Observer::every(c.addresses(), Duration::from_millis(20));
    c.cli_ok(&["replica", "add", "s1", "db-3", "--seed", "stream", "--wait"]);
    c.converged("s1");
    assert_never_two_writable(&observer.finish());
    assert!(!ids_on_t(&c, "db-3").contains(&990));

    // Now the same errant write, and the master crashes before the detector has
    // quarantined db-3: the failover drains it, its agent says it diverged, and db-2
    // (behind it by the partial order) is chosen.
    let observer = Observer::every(c.addresses(), Duration::from_millis(20));
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    c.db("db-3").sql(ERRANT_WRITE).unwrap();
    let crash = Instant::now();
    c.node_mut("db-1").db.kill();
    let master = failed_over(&c, "db-1", Duration::from_secs(20));
    assert_eq!(master, "db-2", "the errant replica was promoted");
    eventually(Duration::from_secs(10), "a write on db-2", || {
        writer.first_ack_after(crash)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (_, acked) = writer.finish();
    assert_never_two_writable(&observer.finish());
    assert_all_acknowledged_on(&c, "db-2", &acked);
    assert!(
        !ids_on_t(&c, "db-2").contains(&990),
        "the stray row reached the master"
    );
    eventually(Duration::from_secs(15), "db-3 quarantined again", || {
        (member(&c.set("s1"), "db-3").intended.role == IntendedRole::Quarantined).then_some(())
    });
    // The failover that promoted correctly is done, and says what it left and why.
    let summary = failover_summary(&c);
    assert!(
        summary
            .not_repointed
            .iter()
            .any(|l| l.contains("db-3") && l.contains("diverged")),
        "{summary:?}"
    );
    let workflows: Vec<WorkflowRow> = c.cli_json(&["workflow", "list"]);
    let failover = workflows
        .iter()
        .rev()
        .find(|w| w.kind == WorkflowKind::Failover)
        .expect("a failover workflow");
    assert_eq!(failover.state, WorkflowState::Done, "{failover:?}");
}

#[test]
fn an_out_of_order_transaction_on_a_replica_is_reported_diverged_and_quarantined() {
    let c = three(false, ClusterOptions::read_only_at_start());
    // An admin writes on db-2 in the master's own domain; the master's next
    // transaction then arrives with a sequence db-2 already used.
    c.db("db-2").sql("INSERT INTO app.t VALUES (991)").unwrap();
    let written = Instant::now();
    c.db("db-1").sql("INSERT INTO app.t VALUES (992)").unwrap();
    // Reported at once (the probe sees the applier stop): in the status while it is
    // a replica, and the quarantine that follows within moments keeps the reason.
    eventually(Duration::from_secs(5), "db-2 reported diverged", || {
        let diverged = c
            .cli_ok(&["status"])
            .lines()
            .any(|l| l.starts_with("db-2: DIVERGED: out-of-order"));
        let quarantined = member(&c.set("s1"), "db-2").intended.role == IntendedRole::Quarantined;
        (diverged || quarantined).then_some(())
    });
    eprintln!(
        "out-of-order transaction: db-2 reported diverged {} ms after the master's write",
        written.elapsed().as_millis()
    );
    eventually(Duration::from_secs(15), "db-2 quarantined", || {
        (member(&c.set("s1"), "db-2").intended.role == IntendedRole::Quarantined).then_some(())
    });
    let audit = c.cli_ok(&["--json", "audit"]);
    assert!(
        audit.contains("out-of-order"),
        "the audit log keeps why: {audit}"
    );
    assert!(c.cli_ok(&["topology"]).contains("QUARANTINED"));
    let (ok, _, err) = c.cli(&["promote", "s1", "db-2", "--wait"]);
    assert!(!ok, "a diverged replica was promoted");
    assert!(!err.is_empty());
    // The rest of the set is untouched.
    c.write_and_see_everywhere("s1", "db-1", 993);
    assert_eq!(c.set("s1").master.as_str(), "db-1");
}

fn ids_on_t(c: &tandem_e2e::Cluster, name: &str) -> Vec<u64> {
    c.db(name)
        .sql("SELECT id FROM app.t")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
