//! Failure detection, automatic failover, fencing and rejoin, with three real MariaDB
//! servers, their agents, the conductor and the broker. A client inserts unique rows
//! and records which were acknowledged; an observer samples every 50 ms how many
//! servers accept writes. "Nothing acknowledged lost" and "never two writable" are
//! asserted from those records.

use std::time::{Duration, Instant};

use tandem_api::{IntendedRole, Verdict};
use tandem_e2e::load::{Observer, Writer};
use tandem_e2e::promise::{
    assert_all_acknowledged_on, assert_never_two_writable, failed_over, failover_summary, member,
    three,
};
use tandem_e2e::{eventually, tail, ClusterOptions};
use tandem_proto::SemiSync;

#[test]
fn a_crashed_master_is_replaced_with_no_acknowledged_write_lost_rejoins_and_a_second_failover_waits_for_an_operator(
) {
    let mut c = three(true, ClusterOptions::read_only_at_start());
    eventually(Duration::from_secs(20), "semi-sync active on db-1", || {
        (member(&c.set("s1"), "db-1").semi_sync == Some(SemiSync::Active)).then_some(())
    });
    // A healthy master is not ejected: that is a switchover's job.
    let (ok, _, err) = c.cli(&["failover", "run", "s1"]);
    assert!(!ok && err.contains("healthy"), "{err}");
    let observer = Observer::start(c.addresses());
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(800));

    // kill -9 of the master's engine, under load.
    let crash = Instant::now();
    c.node_mut("db-1").db.kill();
    let master = failed_over(&c, "db-1", Duration::from_secs(20));
    let first = eventually(Duration::from_secs(10), "a write on the new master", || {
        writer.first_ack_after(crash)
    });
    eprintln!(
        "engine crash: first write on the new master {master} {} ms after the kill",
        (first.at - crash).as_millis()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    eprintln!("{}", tail(&c.conductor.log(), 40));
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, &master, &acked);
    c.converged_without("s1", "db-1");
    let view = c.set("s1");
    assert_eq!(member(&view, "db-1").intended.role, IntendedRole::Failed);
    let summary = &failover_summary(&c);
    assert_eq!(summary.failed_master.as_str(), "db-1");
    assert_eq!(summary.new_master.as_str(), master.as_str());
    assert_eq!(summary.lost_transactions, Some(0), "{summary:?}");

    // The old master comes back (read-only, as every server starts): fenced by the
    // epoch, compared, rejoined as a replica.
    c.node_mut("db-1").db.restart().unwrap();
    eventually(Duration::from_secs(30), "db-1 to rejoin", || {
        (member(&c.set("s1"), "db-1").intended.role == IntendedRole::Replica).then_some(())
    });
    assert_eq!(c.converged("s1"), master);
    c.write_and_see_everywhere("s1", &master, 2);
    assert_all_acknowledged_on(&c, "db-1", &acked);

    // A second failure inside the anti-flapping window: held back, and shown.
    c.node_mut(&master.clone()).db.kill();
    let blocked = eventually(Duration::from_secs(20), "the block to show", || {
        let v = c.set("s1");
        v.failover.state.blocked.clone()
    });
    assert!(
        blocked.contains("anti") || blocked.contains("flap"),
        "{blocked}"
    );
    assert_eq!(
        c.set("s1").master.as_str(),
        master.as_str(),
        "failed over anyway"
    );
    let topology = c.cli_ok(&["topology"]);
    assert!(topology.contains("BLOCKED"), "{topology}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.set("s1").master.as_str(),
        master.as_str(),
        "failed over anyway"
    );

    // An operator acknowledges: the failover goes ahead.
    c.cli_ok(&["failover", "ack", "s1"]);
    let third = failed_over(&c, &master, Duration::from_secs(20));
    assert_ne!(third, master);
    c.converged_without("s1", &master);
    eprintln!("conductor log tail:\n{}", tail(&c.conductor.log(), 5));
}

#[test]
fn a_lagging_replica_is_not_chosen_and_a_returning_master_with_an_extra_transaction_is_quarantined()
{
    let mut c = three(false, ClusterOptions::read_only_at_start());
    // db-2 (first by name, so the choice is not an accident of ordering) stops
    // receiving: it falls behind.
    c.db("db-2").sql("STOP SLAVE IO_THREAD").unwrap();
    for id in 10..20 {
        c.db("db-1")
            .sql(&format!("INSERT INTO app.t VALUES ({id})"))
            .unwrap();
    }
    eventually(Duration::from_secs(10), "db-3 to have the rows", || {
        (c.db("db-3").sql("SELECT COUNT(*) FROM app.t").ok()? == "11").then_some(())
    });
    // Automatic failover paused: the loss is detected and shown, nothing is promoted.
    c.cli_ok(&["failover", "pause", "s1"]);
    c.node_mut("db-1").db.kill();
    eventually(Duration::from_secs(10), "the loss to show", || {
        let t = c.cli_ok(&["topology"]);
        (t.contains("failover paused") && t.contains("master lost")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        c.set("s1").master.as_str(),
        "db-1",
        "failed over while paused"
    );
    // An operator ejects the master, naming the lagging replica: refused.
    let (ok, _, err) = c.cli(&["failover", "run", "s1", "--candidate", "db-2", "--wait"]);
    assert!(!ok && err.contains("behind db-3"), "{err}");
    assert_eq!(c.set("s1").master.as_str(), "db-1");
    // Without a candidate, the rule picks the replica that had everything.
    c.cli_ok(&["failover", "run", "s1", "--wait"]);
    c.cli_ok(&["failover", "resume", "s1"]);
    let master = failed_over(&c, "db-1", Duration::from_secs(20));
    assert_eq!(master, "db-3", "the replica that had everything");
    let summary = &failover_summary(&c);
    assert_eq!(summary.lost_transactions, Some(0), "{summary:?}");
    // db-2 is re-pointed to db-3 and catches up from it.
    c.converged_without("s1", "db-1");
    c.write_and_see_everywhere("s1", "db-3", 100);
    assert_eq!(
        c.db("db-2").sql("SELECT COUNT(*) FROM app.t").unwrap(),
        "12"
    );

    // The old master comes back holding a transaction nobody else has: its agent is
    // held while the engine restarts and takes a local write, so the conductor only
    // hears of it afterwards.
    c.node_mut("db-1").agent.pause().unwrap();
    c.node_mut("db-1").db.restart().unwrap();
    c.db("db-1").sql("INSERT INTO app.t VALUES (666)").unwrap();
    c.node_mut("db-1").agent.resume().unwrap();
    eventually(Duration::from_secs(30), "db-1 to be quarantined", || {
        (member(&c.set("s1"), "db-1").intended.role == IntendedRole::Quarantined).then_some(())
    });
    assert_eq!(c.db("db-1").sql("SELECT @@read_only").unwrap(), "1");
    assert_eq!(c.db("db-1").sql("SHOW SLAVE STATUS").unwrap(), "");
    let audit = c.cli_ok(&["--json", "audit"]);
    assert!(
        audit.contains("errant"),
        "the audit log names it; the newest entries:\n{}\n{}",
        c.cli(&["audit"])
            .1
            .lines()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        c.node_logs()
    );
    let topology = c.cli_ok(&["topology"]);
    assert!(topology.contains("QUARANTINED"), "{topology}");
    // The set goes on without it.
    c.write_and_see_everywhere("s1", "db-3", 101);
    let (ok, _, err) = c.cli(&["replica", "add", "s1", "db-1"]);
    assert!(!ok && err.contains("re-seed"), "{err}");

    // Re-seeded from the master, it replicates again, without its errant row.
    c.cli_ok(&["replica", "add", "s1", "db-1", "--seed", "stream", "--wait"]);
    assert_eq!(c.converged("s1"), "db-3");
    c.write_and_see_everywhere("s1", "db-3", 102);
    assert_eq!(
        c.db("db-1")
            .sql("SELECT COUNT(*) FROM app.t WHERE id = 666")
            .unwrap(),
        "0"
    );
}

#[test]
fn a_master_the_conductor_cannot_hear_is_not_failed_over_while_its_replicas_replicate_and_its_lease_fences_it(
) {
    let c = three(false, ClusterOptions::read_only_at_start());
    let observer = Observer::start(c.addresses());
    let writer = Writer::start(c.addresses(), Duration::from_millis(20));
    // The master's agent hangs: no reports, no lease renewals; its engine and its
    // replicas carry on.
    c.nodes[0].agent.pause().unwrap();
    let verdict = eventually(
        Duration::from_secs(10),
        "the master to be suspected",
        || match c.set("s1").failover.verdict {
            Some(Verdict::Suspected { reason }) => Some(reason),
            _ => None,
        },
    );
    assert!(verdict.contains("still receive"), "{verdict}");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        c.set("s1").master.as_str(),
        "db-1",
        "failed over a master whose replicas had it"
    );

    // The agent comes back: its lease ran out long ago, so it fences its engine at
    // once; the conductor sees a healthy, fenced master and gives writes back.
    let resumed = Instant::now();
    c.nodes[0].agent.resume().unwrap();
    eventually(Duration::from_secs(10), "the fence to be reported", || {
        c.nodes[0]
            .agent
            .log()
            .contains("lease expired")
            .then_some(())
    });
    eventually(Duration::from_secs(10), "writes to be given back", || {
        let v = c.set("s1");
        let m = member(&v, "db-1");
        (m.observed.as_ref().and_then(|o| o.writable) == Some(true) && !m.fenced).then_some(())
    });
    eventually(Duration::from_secs(10), "writes on db-1 again", || {
        writer.first_ack_after(resumed + Duration::from_millis(500))
    });
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    assert_never_two_writable(&samples);
    assert_eq!(c.converged("s1"), "db-1");
    assert_all_acknowledged_on(&c, "db-1", &acked);
    let workflows = c.cli_ok(&["--json", "workflow", "list"]);
    assert!(!workflows.contains("\"failover\""), "{workflows}");
    assert!(workflows.contains("restore_writes"), "{workflows}");

    // Semi-sync switched on for the running set, then off again.
    c.cli_ok(&["set", "semi-sync", "s1", "on", "--wait"]);
    c.write_and_see_everywhere("s1", "db-1", 50);
    eventually(Duration::from_secs(20), "semi-sync active", || {
        let v = c.set("s1");
        (member(&v, "db-1").semi_sync == Some(SemiSync::Active)
            && member(&v, "db-2").semi_sync == Some(SemiSync::Acknowledging))
        .then_some(())
    });
    c.cli_ok(&["set", "semi-sync", "s1", "off", "--wait"]);
    eventually(Duration::from_secs(20), "semi-sync off", || {
        let v = c.set("s1");
        (member(&v, "db-1").semi_sync.is_none() && member(&v, "db-3").semi_sync.is_none())
            .then_some(())
    });
    assert_eq!(c.converged("s1"), "db-1");
}

#[test]
fn a_hung_master_host_is_failed_over_after_its_lease_and_fences_itself_when_it_wakes() {
    let c = three(true, ClusterOptions::read_only_at_start());
    eventually(Duration::from_secs(20), "semi-sync active on db-1", || {
        (member(&c.set("s1"), "db-1").semi_sync == Some(SemiSync::Active)).then_some(())
    });
    let observer = Observer::start(c.addresses());
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(800));

    // The whole host hangs: engine and agent.
    let hang = Instant::now();
    c.nodes[0].db.pause().unwrap();
    c.nodes[0].agent.pause().unwrap();
    let master = failed_over(&c, "db-1", Duration::from_secs(20));
    let first = eventually(Duration::from_secs(10), "a write on the new master", || {
        writer.first_ack_after(hang)
    });
    eprintln!(
        "host hang: first write on the new master {master} {} ms after the hang",
        (first.at - hang).as_millis()
    );
    std::thread::sleep(Duration::from_millis(300));

    // The host wakes (its agent first, as its timers fire before the engine serves
    // anyone): the agent finds its lease long gone and fences the engine.
    c.nodes[0].agent.resume().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.nodes[0].db.resume().unwrap();
    eventually(
        Duration::from_secs(30),
        "db-1 to rejoin or be quarantined",
        || {
            let role = member(&c.set("s1"), "db-1").intended.role;
            matches!(role, IntendedRole::Replica | IntendedRole::Quarantined).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, &master, &acked);
    assert_eq!(c.db("db-1").sql("SELECT @@read_only").unwrap(), "1");
}

#[test]
fn a_master_cut_off_by_the_network_fences_itself_is_failed_over_and_rejoins_when_healed() {
    let mut options = ClusterOptions::read_only_at_start();
    options.isolated = vec!["db-1".into()];
    // Only db-1 has a host of its own: the others reach it from the root namespace's
    // link address, not from the address they advertise, as replicas behind NAT would.
    options.conductor_env = vec![(
        "TANDEM_CONDUCTOR_REPLICATION_ACCOUNTS_FROM".into(),
        "any".into(),
    )];
    let c = three(true, options);
    eventually(Duration::from_secs(20), "semi-sync active on db-1", || {
        (member(&c.set("s1"), "db-1").semi_sync == Some(SemiSync::Active)).then_some(())
    });
    let observer = Observer::start(c.addresses());
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(800));

    // db-1's host loses the network: its agent cannot reach the broker, its replicas
    // cannot reach its engine, and clients cannot either; everything on it runs on.
    let host = c.nodes[0].host.as_ref().unwrap();
    let cut = Instant::now();
    host.cut().unwrap();
    let master = failed_over(&c, "db-1", Duration::from_secs(20));
    let first = eventually(Duration::from_secs(10), "a write on the new master", || {
        writer.first_ack_after(cut)
    });
    eprintln!(
        "network cut: first write on the new master {master} {} ms after the cut",
        (first.at - cut).as_millis()
    );
    // Its lease ran out before anyone was promoted: the engine on the far side of the
    // cut is read-only (asked over its socket, which the cut does not touch).
    assert_eq!(c.db("db-1").sql("SELECT @@read_only").unwrap(), "1");
    assert!(c.nodes[0].agent.log().contains("lease expired"));

    std::thread::sleep(Duration::from_millis(300));
    host.heal().unwrap();
    // It rejoins; or, when a commit was in flight at the cut (in its binary log, never
    // acknowledged), it holds a transaction the new master lacks and is quarantined,
    // then re-seeded.
    let role = eventually(Duration::from_secs(60), "db-1 to come back", || {
        let role = member(&c.set("s1"), "db-1").intended.role;
        matches!(role, IntendedRole::Replica | IntendedRole::Quarantined).then_some(role)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, &master, &acked);
    if role == IntendedRole::Quarantined {
        c.cli_ok(&["replica", "add", "s1", "db-1", "--seed", "stream", "--wait"]);
    }
    assert_eq!(c.converged("s1"), master);
    c.write_and_see_everywhere("s1", &master, 2);
}
