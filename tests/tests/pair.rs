//! Single-zone failover's master-master pair, through the CLI, the conductor and real
//! agents and engines: built from a server that keeps taking writes, switched twenty
//! times under an independent writer and observer, a read replica following every
//! switch; a stray write on the passive side refusing a switch; wrong input refused.

use std::time::Duration;

use tandem_api::{PairView, SetView};
use tandem_e2e::load::{self, Observer, Writer};
use tandem_e2e::promise::{assert_all_acknowledged_on, assert_never_two_writable};
use tandem_e2e::{eventually, Cluster, ClusterOptions};
use tandem_proto::SemiSync;

fn pair_of(view: &SetView) -> &PairView {
    view.pair.as_ref().expect("a master-master pair")
}

/// Reported by the engines: each side replicates from the other, exactly the active
/// one is writable, and `reader` replicates from the active side.
fn contract_holds(c: &Cluster, active: &str, passive: &str, reader: &str) -> Option<()> {
    let view = c.set("pair1");
    let r = view.member(reader)?.observed.clone()?;
    let named = |i: &Option<tandem_proto::InstanceId>| i.as_ref().map(|i| i.to_string());
    let ok = r.writable == Some(false) && named(&r.replicates_from).as_deref() == Some(active);
    (ok && sides_hold(&view, active, passive)).then_some(())
}

/// Each side replicates from the other and only `active` is writable, as reported.
fn sides_hold(view: &SetView, active: &str, passive: &str) -> bool {
    let seen = |name: &str| view.member(name).and_then(|m| m.observed.clone());
    let (Some(a), Some(p)) = (seen(active), seen(passive)) else {
        return false;
    };
    let named = |i: &Option<tandem_proto::InstanceId>| i.as_ref().map(|i| i.to_string());
    named(&a.replicates_from).as_deref() == Some(passive)
        && named(&p.replicates_from).as_deref() == Some(active)
        && a.writable == Some(true)
        && p.writable == Some(false)
        && a.replicates_to.iter().any(|i| i.as_str() == passive)
        && p.replicates_to.iter().any(|i| i.as_str() == active)
}

/// pair1: db-1 (active) and db-2 (its peer, seeded from it when empty).
fn make_pair(c: &Cluster) {
    c.cli_ok(&[
        "set",
        "create",
        "pair1",
        "--master",
        "db-1",
        "--mode",
        "master-master",
        "--peer",
        "db-2",
        "--wait",
    ]);
}

/// pair1 with semi-sync, the `app` and `admin` accounts made, and `admin` unable to
/// write past read-only anywhere.
fn semi_sync_pair(c: &Cluster) {
    c.cli_ok(&[
        "set",
        "create",
        "pair1",
        "--master",
        "db-1",
        "--mode",
        "master-master",
        "--peer",
        "db-2",
        "--semi-sync",
        "--wait",
    ]);
    load::prepare(c.db("db-1"));
    c.read_only_binds("'admin'@'%'");
}

/// Mints one auto-increment key on `name` (as an application would); the key.
fn mint(c: &Cluster, name: &str) -> u64 {
    c.db(name)
        .sql("INSERT INTO app.minted (v) VALUES (1); SELECT LAST_INSERT_ID()")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_pair_built_under_writes_switches_twenty_times_with_nothing_lost_and_one_writer() {
    // Servers that start writable: db-1 is a standalone server taking writes.
    let c = Cluster::start(3);
    load::prepare(c.db("db-1"));
    c.db("db-1")
        .sql("CREATE TABLE app.minted (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT)")
        .unwrap();
    let db1 = c.addresses()[0].clone();
    let building = Writer::start(vec![db1], Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(300));
    // db-2 is empty: it is seeded from db-1 while the writes go on.
    make_pair(&c);
    c.cli_ok(&[
        "replica", "add", "pair1", "db-3", "--seed", "stream", "--wait",
    ]);
    let (_, built) = building.finish();
    assert!(
        built.len() > 20,
        "the writer barely wrote while the pair was built"
    );
    let view = c.set("pair1");
    let pair = pair_of(&view);
    assert_eq!(
        (pair.first.as_str(), pair.second.as_str()),
        ("db-1", "db-2")
    );
    assert_eq!(pair.active.as_str(), "db-1");
    assert_eq!(pair.stray_write, None);
    eventually(Duration::from_secs(20), "the pair's contract", || {
        contract_holds(&c, "db-1", "db-2", "db-3")
    });
    c.converged("pair1");
    let topology = c.cli_ok(&["topology"]);
    assert!(
        topology.contains("master-master pair: db-1 (active) <-> db-2 (passive)"),
        "{topology}"
    );
    c.read_only_binds("'admin'@'%'");

    let servers: Vec<(String, u16)> = c.addresses()[..2].to_vec();
    let writer = Writer::start_numbered(servers.clone(), Duration::from_millis(10), 1_000_000);
    let observer = Observer::every(servers, Duration::from_millis(25));
    let mut minted = vec![("db-1", mint(&c, "db-1"))];
    for round in 0..20 {
        let (to, from) = if round % 2 == 0 {
            ("db-2", "db-1")
        } else {
            ("db-1", "db-2")
        };
        c.cli_ok(&["promote", "pair1", to, "--wait"]);
        let view = c.set("pair1");
        assert_eq!(pair_of(&view).active.as_str(), to, "round {round}");
        assert_eq!(view.master.as_str(), to);
        eventually(
            Duration::from_secs(20),
            "the contract after a switch",
            || contract_holds(&c, to, from, "db-3"),
        );
        minted.push((to, mint(&c, to)));
    }
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    assert!(
        acked.len() > 100,
        "the writer barely wrote: {}",
        acked.len()
    );
    assert_never_two_writable(&samples);
    c.converged("pair1");
    for name in ["db-1", "db-2", "db-3"] {
        let all: Vec<_> = built.iter().chain(&acked).copied().collect();
        eventually(Duration::from_secs(20), "every acknowledged row", || {
            let ids = tandem_e2e::promise::ids_on(&c, name);
            all.iter().all(|a| ids.contains(&a.id)).then_some(())
        });
        assert_all_acknowledged_on(&c, name, &all);
    }
    // Keys minted on either side never collide: each side has its own offset.
    let mut keys: Vec<u64> = minted.iter().map(|(_, k)| *k).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), minted.len(), "a key minted twice: {minted:?}");
    for (side, key) in &minted {
        let odd = key % 2 == 1;
        assert_eq!(odd, *side == "db-1", "{side} minted {key}: {minted:?}");
    }
}

#[test]
fn a_stray_write_on_the_passive_side_refuses_the_switch_and_wrong_input_changes_nothing() {
    let c = Cluster::start_with(4, ClusterOptions::read_only_at_start());
    let refused = |args: &[&str], said: &str| {
        let (ok, _, err) = c.cli(args);
        assert!(!ok && err.contains(said), "{args:?}: {err}");
    };
    // db-3 holds a history of its own (a write nobody else has).
    c.db("db-3").sql("CREATE DATABASE own").unwrap();
    make_pair(&c);
    c.write_and_see_everywhere("pair1", "db-1", 1);
    let create = |master: &'static str, peer: &'static str| {
        vec![
            "set",
            "create",
            "p2",
            "--master",
            master,
            "--mode",
            "master-master",
            "--peer",
            peer,
        ]
    };
    refused(
        &create("db-4", "db-2"),
        "already a member of replica set pair1",
    );
    refused(&create("db-4", "db-3"), "does not hold db-4's data");
    refused(&create("db-4", "db-4"), "cannot be its own peer");
    refused(&create("db-4", "db-9"), "db-9");
    refused(
        &["set", "create", "p2", "--master", "db-4", "--mode", "ring"],
        "ring",
    );
    refused(
        &["set", "create", "p2", "--master", "db-4", "--peer", "db-3"],
        "`peer` goes with",
    );
    refused(
        &[
            "set",
            "create",
            "p2",
            "--master",
            "db-4",
            "--mode",
            "master-master",
        ],
        "needs its other side",
    );
    refused(
        &[
            "set",
            "create",
            "p2",
            "--master",
            "db-4",
            "--mode",
            "master-master",
            "--peer",
            "db-3",
            "--peer",
            "db-2",
        ],
        "--peer",
    );
    let sets = c.api().sets().unwrap();
    assert_eq!(sets.len(), 1, "{sets:?}");

    // A read replica under the pair is never its active side.
    c.cli_ok(&[
        "replica", "add", "pair1", "db-3", "--seed", "stream", "--wait",
    ]);
    refused(&["promote", "pair1", "db-3"], "read replica of the pair");

    // A stray write on the passive side (by an account that passes read-only): it
    // reaches the active side through the reverse channel, and still refuses the switch.
    c.db("db-2").sql("INSERT INTO app.t VALUES (999)").unwrap();
    let stray = eventually(Duration::from_secs(20), "the stray write shown", || {
        pair_of(&c.set("pair1")).stray_write.clone()
    });
    assert!(stray.starts_with("2-"), "{stray}");
    let (ok, _, err) = c.cli(&["promote", "pair1", "db-2", "--wait"]);
    assert!(
        !ok && err.contains("errant") && err.contains(&stray),
        "{err}"
    );
    let view = c.set("pair1");
    assert_eq!(pair_of(&view).active.as_str(), "db-1");
    eventually(Duration::from_secs(20), "db-1 writable again", || {
        (view.member("db-1")?.observed.as_ref()?.writable == Some(true)).then_some(())
    });
    c.write_and_see_everywhere("pair1", "db-1", 2);
}

/// `kill -9` of the active side: the passive side takes over (the read replica under
/// the pair is never a candidate and follows it); the old active side, restarted,
/// holds nothing the new one lacks, so it rejoins as the passive side with the reverse
/// channel again, and the pair switches back.
#[test]
fn the_active_side_killed_the_passive_takes_over_and_the_old_one_rejoins_as_passive() {
    let mut c = Cluster::start_with(3, ClusterOptions::read_only_at_start());
    make_pair(&c);
    c.cli_ok(&[
        "replica", "add", "pair1", "db-3", "--seed", "stream", "--wait",
    ]);
    c.write_and_see_everywhere("pair1", "db-1", 1);
    c.converged("pair1");

    c.node_mut("db-1").db.kill();
    let new = eventually(Duration::from_secs(30), "a failover", || {
        let v = c.set("pair1");
        (v.master.as_str() != "db-1").then(|| v.master.to_string())
    });
    assert_eq!(new, "db-2", "only the passive side takes over");
    c.write_and_see_everywhere("pair1", "db-2", 2);

    c.node_mut("db-1").db.restart().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while contract_holds(&c, "db-2", "db-1", "db-3").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "db-1 is not back as the passive side:\n{}\naudit:\n{}\n{}",
            c.cli(&["topology"]).1,
            tandem_e2e::tail(&c.cli(&["audit"]).1, 30),
            c.node_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let view = c.set("pair1");
    let pair = pair_of(&view);
    assert_eq!(
        (pair.active.as_str(), pair.passive.as_str()),
        ("db-2", "db-1")
    );
    assert_eq!(pair.stray_write, None);
    c.write_and_see_everywhere("pair1", "db-2", 3);

    c.cli_ok(&["promote", "pair1", "db-1", "--wait"]);
    eventually(Duration::from_secs(20), "switched back", || {
        contract_holds(&c, "db-1", "db-2", "db-3")
    });
    c.write_and_see_everywhere("pair1", "db-1", 4);
    c.converged("pair1");
}

/// With semi-sync the passive side acknowledges every commit of the active one, in
/// either direction after switches; `kill -9` of the active side under a writer loses
/// no acknowledged row, and the killed side returns rejoined as the passive side or
/// quarantined, as its position says.
#[test]
fn with_semi_sync_a_killed_active_side_loses_no_acknowledged_write() {
    let mut c = Cluster::start_with(2, ClusterOptions::read_only_at_start());
    semi_sync_pair(&c);
    for (active, passive) in [("db-1", "db-2"), ("db-2", "db-1"), ("db-1", "db-2")] {
        if c.set("pair1").master.as_str() != active {
            c.cli_ok(&["promote", "pair1", active, "--wait"]);
        }
        eventually(
            Duration::from_secs(20),
            "acknowledged by the passive side",
            || {
                let v = c.set("pair1");
                let semi = |n: &str| v.member(n).and_then(|m| m.semi_sync);
                (sides_hold(&v, active, passive)
                    && semi(active) == Some(SemiSync::Active)
                    && semi(passive) == Some(SemiSync::Acknowledging))
                .then_some(())
            },
        );
    }

    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = std::time::Instant::now();
    c.node_mut("db-1").db.kill();
    eventually(Duration::from_secs(30), "a write on db-2", || {
        writer.first_ack_on_after(1, t0)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (_, acked) = writer.finish();
    assert_eq!(c.set("pair1").master.as_str(), "db-2");
    assert_all_acknowledged_on(&c, "db-2", &acked);

    c.node_mut("db-1").db.restart().unwrap();
    eventually(
        Duration::from_secs(60),
        "db-1 rejoined or quarantined",
        || {
            let v = c.set("pair1");
            let quarantined =
                v.member("db-1")?.intended.role == tandem_api::IntendedRole::Quarantined;
            (quarantined || sides_hold(&v, "db-2", "db-1")).then_some(())
        },
    );
}

/// The active side's host cut off the network (agent, engine and clients with it):
/// its lease fences it, the passive side takes over with every acknowledged write
/// (semi-sync), never two writable in any sample; healed, it comes back as the passive
/// side (or quarantined, when a commit was in flight at the cut).
#[test]
fn the_active_side_cut_off_fences_itself_and_the_passive_side_takes_over() {
    let mut options = ClusterOptions::read_only_at_start();
    options.isolated = vec!["db-1".into()];
    // Only db-1 has a host of its own: its peer reaches it from the root namespace's
    // link address, as a server behind NAT would.
    options.conductor_env = vec![(
        "TANDEM_CONDUCTOR_REPLICATION_ACCOUNTS_FROM".into(),
        "any".into(),
    )];
    let c = Cluster::start_with(2, options);
    semi_sync_pair(&c);
    eventually(Duration::from_secs(20), "acknowledged by db-2", || {
        let v = c.set("pair1");
        (v.member("db-1")?.semi_sync == Some(SemiSync::Active)).then_some(())
    });
    let observer = Observer::start(c.addresses());
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(800));

    let host = c.nodes[0].host.as_ref().unwrap();
    host.cut().unwrap();
    eventually(Duration::from_secs(20), "db-2 active", || {
        (c.set("pair1").master.as_str() == "db-2").then_some(())
    });
    assert_eq!(c.db("db-1").sql("SELECT @@read_only").unwrap(), "1");
    std::thread::sleep(Duration::from_millis(300));
    host.heal().unwrap();
    eventually(Duration::from_secs(60), "db-1 back", || {
        let v = c.set("pair1");
        let quarantined = v.member("db-1")?.intended.role == tandem_api::IntendedRole::Quarantined;
        (quarantined || sides_hold(&v, "db-2", "db-1")).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, "db-2", &acked);
}
