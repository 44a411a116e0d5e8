//! Automatic failover, measured the way a client sees it: the time from the fault to
//! the first acknowledged insert on the new master, for an engine crash (`kill -9` of
//! mariadbd) and a host hang (SIGSTOP of mariadbd and its agent), and acknowledged
//! inserts lost, with semi-synchronous replication. Three MariaDB servers, a client
//! inserting every 10 ms as an ordinary user (trying the other servers when one
//! refuses, as a client behind a proxy would), an observer sampling every 50 ms how
//! many servers accept writes.
//!
//! `cargo build --release --bins && cargo bench -p tandem-e2e --bench failover`
//! (BENCH_TRIALS per fault, default 20; BENCH_FAULTS=crash|hang for one kind only).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tandem_api::IntendedRole;
use tandem_e2e::load::{self, Observer, Writer};
use tandem_e2e::{eventually, Cluster, ClusterOptions};
use tandem_proto::SemiSync;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Crash,
    Hang,
}

struct Trial {
    to_first_write: Duration,
    lost: usize,
    acked: usize,
    max_writable: usize,
}

fn main() {
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut options = ClusterOptions::read_only_at_start();
    // Back-to-back failovers of one set are the point here, not anti-flapping.
    options.conductor_env.push((
        "TANDEM_CONDUCTOR_FAILOVER__FLAP_WINDOW_S".into(),
        "0".into(),
    ));
    let mut c = Cluster::start_with(3, options);
    c.cli_ok(&[
        "set",
        "create",
        "s1",
        "--master",
        "db-1",
        "--semi-sync",
        "--wait",
    ]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--wait"]);
    c.converged("s1");
    load::prepare(c.db("db-1"));
    c.read_only_binds("'admin'@'%'");

    let mut results: Vec<(Fault, Trial)> = Vec::new();
    let mut quarantined = 0;
    let faults: Vec<Fault> = match std::env::var("BENCH_FAULTS").as_deref() {
        Ok("crash") => vec![Fault::Crash],
        Ok("hang") => vec![Fault::Hang],
        _ => vec![Fault::Crash, Fault::Hang],
    };
    for &fault in &faults {
        for i in 0..trials {
            let master = settle(&c);
            let trial = one(&mut c, fault, &master);
            eprintln!(
                "{} {i}: first write {} ms after the fault, {} of {} acknowledged lost",
                name(fault),
                trial.to_first_write.as_millis(),
                trial.lost,
                trial.acked
            );
            results.push((fault, trial));
            quarantined += recover(&mut c, fault, &master);
        }
    }

    println!(
        "automatic failover: 3 MariaDB (semi-sync), a client inserting every 10 ms, {trials} trials per fault"
    );
    println!("| fault | to first write p50 | max | acknowledged writes lost | most servers writable at once |");
    println!("|---|---|---|---|---|");
    for &fault in &faults {
        let mine: Vec<&Trial> = results
            .iter()
            .filter(|(f, _)| *f == fault)
            .map(|(_, t)| t)
            .collect();
        let mut times: Vec<Duration> = mine.iter().map(|t| t.to_first_write).collect();
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {} | {:.0} ms | {:.0} ms | {} of {} | {} |",
            name(fault),
            ms(times[times.len() / 2]),
            ms(*times.last().unwrap()),
            mine.iter().map(|t| t.lost).sum::<usize>(),
            mine.iter().map(|t| t.acked).sum::<usize>(),
            mine.iter().map(|t| t.max_writable).max().unwrap_or(0)
        );
    }
    println!("| old masters quarantined on return (and re-seeded) | {quarantined} | | | |");
}

fn name(f: Fault) -> &'static str {
    match f {
        Fault::Crash => "engine crash (kill -9 mariadbd)",
        Fault::Hang => "host hang (SIGSTOP mariadbd + agent)",
    }
}

/// Waits until every member replicates from the master with semi-sync active;
/// returns the master.
fn settle(c: &Cluster) -> String {
    eventually(Duration::from_secs(60), "semi-sync active", || {
        let v = c.set("s1");
        let master = v.master.to_string();
        let ok = v.members.len() == 3
            && v.members.iter().all(|m| {
                m.drift.is_empty()
                    && (m.instance.as_str() != master.as_str()
                        || m.semi_sync == Some(SemiSync::Active))
            });
        ok.then_some(master)
    })
}

fn node_index(c: &Cluster, name: &str) -> usize {
    c.nodes.iter().position(|n| n.name == name).unwrap()
}

fn one(c: &mut Cluster, fault: Fault, master: &str) -> Trial {
    let observer = Observer::start(c.addresses());
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    let i = node_index(c, master);
    let t0 = Instant::now();
    match fault {
        Fault::Crash => c.nodes[i].db.kill(),
        Fault::Hang => {
            c.nodes[i].db.pause().unwrap();
            c.nodes[i].agent.pause().unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_master = loop {
        let v = c.set("s1");
        if v.master.as_str() != master {
            break v.master.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no failover away from {master}; set: {v:?}\nconductor log:\n{}",
            tandem_e2e::tail(&c.conductor.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let first = eventually(Duration::from_secs(30), "a write on the new master", || {
        writer.first_ack_after(t0)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    let present: HashSet<u64> = c
        .db(&new_master)
        .sql("SELECT id FROM app.w")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost = acked.iter().filter(|a| !present.contains(&a.id)).count();
    // The table restarts empty each trial, so ids never collide.
    c.db(&new_master).sql("DELETE FROM app.w").unwrap();
    Trial {
        to_first_write: first.at - t0,
        lost,
        acked: acked.len(),
        max_writable: samples
            .iter()
            .map(|(_, w)| w.iter().filter(|x| **x).count())
            .max()
            .unwrap_or(0),
    }
}

/// Brings the old master back; it rejoins, or is quarantined and re-seeded. Returns 1
/// when it was quarantined.
fn recover(c: &mut Cluster, fault: Fault, old: &str) -> usize {
    let i = node_index(c, old);
    match fault {
        Fault::Crash => c.nodes[i].db.restart().unwrap(),
        Fault::Hang => {
            c.nodes[i].agent.resume().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            c.nodes[i].db.resume().unwrap();
        }
    }
    let role = eventually(Duration::from_secs(60), "the old master back", || {
        let v = c.set("s1");
        match v.member(old)?.intended.role {
            r @ (IntendedRole::Replica | IntendedRole::Quarantined) => Some(r),
            _ => None,
        }
    });
    if role == IntendedRole::Quarantined {
        c.cli_ok(&["replica", "add", "s1", old, "--seed", "stream", "--wait"]);
        1
    } else {
        0
    }
}
