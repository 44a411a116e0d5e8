//! A master-master pair, measured (issue 18): four MariaDB servers, a master-slave set
//! s1 (db-1, db-2) and a pair (db-3, db-4), each with its own client inserting every
//! 10 ms as an ordinary user and trying the other server when one refuses.
//!
//! 1. Write gap of switching the pair's active side (`tandem promote pair1 …`) beside
//!    a master-slave switchover, interleaved in one run: per round one of each.
//! 2. `kill -9` of the active side to the first write acknowledged by the passive
//!    side; the killed server restarted and rejoined as the passive side before the
//!    next trial (which kills the other side).
//!
//! Acknowledged inserts missing from the final writable server are counted as lost
//! (the pair replicates asynchronously: a `kill -9` may lose what its peer had not
//! received).
//!
//! `cargo build --release --bins && cargo bench -p tandem-e2e --bench pair`
//! (BENCH_SWITCHES: switches of each kind, default 20; BENCH_TRIALS: kills, default 6).

use std::time::{Duration, Instant};

use tandem_e2e::load::{self, Writer};
use tandem_e2e::{eventually, Cluster, ClusterOptions};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The longest silence between acknowledged writes that touches `[t0, t1]`.
fn gap(acked: &[Instant], t0: Instant, t1: Instant) -> Duration {
    acked
        .windows(2)
        .filter(|w| w[1] >= t0 && w[0] <= t1)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(*v.last().unwrap()))
}

/// Acknowledged rows of `acked` missing on `server`.
fn lost(c: &Cluster, server: &str, acked: &[load::Ack]) -> usize {
    let present = tandem_e2e::promise::ids_on(c, server);
    acked.iter().filter(|a| !present.contains(&a.id)).count()
}

/// Waits until the pair is whole with `active` writable.
fn whole(c: &Cluster, active: &str) {
    eventually(Duration::from_secs(60), "the pair whole again", || {
        let v = c.set("pair1");
        let p = v.pair.as_ref()?;
        let a = v.member(active)?;
        (p.active.as_str() == active
            && a.intended.replicates_from.as_ref() == Some(&p.passive)
            && v.converged())
        .then_some(())
    });
}

fn main() {
    let switches = env("BENCH_SWITCHES", 20);
    let trials = env("BENCH_TRIALS", 6);
    // Restarted servers come back read-only (as with the agent's managed configuration),
    // and back-to-back failovers of one set are the point here, not anti-flapping.
    let mut options = ClusterOptions::read_only_at_start();
    options.conductor_env.push((
        "TANDEM_CONDUCTOR_FAILOVER__FLAP_WINDOW_S".into(),
        "0".into(),
    ));
    let mut c = Cluster::start_with(4, options);
    let addresses = c.addresses();
    load::prepare(c.db("db-1"));
    load::prepare(c.db("db-3"));
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--seed", "stream", "--wait"]);
    c.cli_ok(&[
        "set",
        "create",
        "pair1",
        "--master",
        "db-3",
        "--mode",
        "master-master",
        "--peer",
        "db-4",
        "--wait",
    ]);
    c.converged("s1");
    whole(&c, "db-3");
    c.read_only_binds("'admin'@'%'");

    // 1. Switch gaps, interleaved.
    let ms_writer = Writer::start(addresses[..2].to_vec(), Duration::from_millis(10));
    let pair_writer = Writer::start(addresses[2..].to_vec(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    let (mut ms_windows, mut pair_windows) = (Vec::new(), Vec::new());
    for i in 0..switches {
        let (ms_to, pair_to) = if i % 2 == 0 {
            ("db-2", "db-4")
        } else {
            ("db-1", "db-3")
        };
        let t0 = Instant::now();
        c.cli_ok(&["promote", "s1", ms_to, "--wait"]);
        ms_windows.push((t0, Instant::now()));
        c.converged("s1");
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        c.cli_ok(&["promote", "pair1", pair_to, "--wait"]);
        pair_windows.push((t0, Instant::now()));
        whole(&c, pair_to);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (_, ms_acked) = ms_writer.finish();
    let (_, pair_acked) = pair_writer.finish();
    let at = |acked: &[load::Ack]| acked.iter().map(|a| a.at).collect::<Vec<_>>();
    let (ms_at, pair_at) = (at(&ms_acked), at(&pair_acked));
    let ms_gaps: Vec<Duration> = ms_windows
        .iter()
        .map(|(a, b)| gap(&ms_at, *a, *b))
        .collect();
    let pair_gaps: Vec<Duration> = pair_windows
        .iter()
        .map(|(a, b)| gap(&pair_at, *a, *b))
        .collect();
    let pair_workflow: Vec<Duration> = pair_windows.iter().map(|(a, b)| *b - *a).collect();
    let ms_master = c.set("s1").master.to_string();
    let pair_active = c.set("pair1").master.to_string();
    let switch_lost = (
        lost(&c, &ms_master, &ms_acked),
        lost(&c, &pair_active, &pair_acked),
    );

    // 2. kill -9 of the active side.
    let writer =
        Writer::start_numbered(addresses[2..].to_vec(), Duration::from_millis(10), 1 << 40);
    std::thread::sleep(Duration::from_millis(500));
    let mut to_first_write = Vec::new();
    let mut active = pair_active.clone();
    for _ in 0..trials {
        let passive = if active == "db-3" { "db-4" } else { "db-3" };
        let passive_index = if passive == "db-3" { 0 } else { 1 };
        let t0 = Instant::now();
        c.node_mut(&active).db.kill();
        let first = eventually(
            Duration::from_secs(30),
            "a write on the passive side",
            || writer.first_ack_on_after(passive_index, t0),
        );
        to_first_write.push(first.at - t0);
        c.node_mut(&active).db.restart().unwrap();
        whole(&c, passive);
        active = passive.to_string();
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, kill_acked) = writer.finish();
    let kill_lost = lost(&c, &active, &kill_acked);

    let (ms_p50, ms_max) = p50_max(ms_gaps);
    let (pair_p50, pair_max) = p50_max(pair_gaps);
    let (wf_p50, wf_max) = p50_max(pair_workflow);
    let (kill_p50, kill_max) = p50_max(to_first_write);
    println!(
        "master-master pair: 4 MariaDB (a master-slave set and a pair), a client per set \
         inserting every 10 ms; {switches} switches of each kind interleaved, {trials} kills"
    );
    println!("| metric | p50 | max |");
    println!("|---|---|---|");
    println!("| master-slave switchover write gap | {ms_p50:.0} ms | {ms_max:.0} ms |");
    println!("| pair switch write gap | {pair_p50:.0} ms | {pair_max:.0} ms |");
    println!("| pair switch workflow (request to done) | {wf_p50:.0} ms | {wf_max:.0} ms |");
    println!(
        "| pair: kill -9 of the active side to the first write on the passive side | \
         {kill_p50:.0} ms | {kill_max:.0} ms |"
    );
    println!(
        "| pair / master-slave switch gap (p50) | {:.2}x | |",
        pair_p50 / ms_p50
    );
    println!(
        "| acknowledged rows lost: switches (master-slave, pair) | {} , {} | |",
        switch_lost.0, switch_lost.1
    );
    println!("| acknowledged rows lost: kills (asynchronous pair) | {kill_lost} | |");
}
