//! Multi-zone DR, measured (issue 17): two zones with two hosts each (network
//! namespaces), a DR set with semi-sync acknowledged from the other zone, a client
//! inserting every 10 ms as an ordinary user (trying the other servers when one
//! refuses).
//!
//! 1. Write gap of `tandem dr switch` beside a same-zone switchover (`tandem promote`),
//!    interleaved in one run: per round a switchover inside the primary zone and back,
//!    then a DR switch and back.
//! 2. Losing the whole primary zone (every host of it cut off at once) to the first
//!    write acknowledged in the DR zone, with the operator's `tandem dr failover` sent
//!    as soon as the conductor judges the master lost; the zone healed, its servers
//!    rejoined (or re-seeded), and the next trial loses the other zone.
//!
//! Acknowledged inserts missing from the final master are counted as lost.
//!
//! `cargo build --release --bins && cargo bench -p tandem-e2e --bench dr`
//! (BENCH_ROUNDS: switch rounds, default 5, i.e. 10 DR switches; BENCH_ZONE_LOSSES,
//! default 10).

use std::time::{Duration, Instant};

use tandem_api::{IntendedRole, Verdict};
use tandem_e2e::load::{self, Writer};
use tandem_e2e::{eventually, Cluster, ClusterOptions};
use tandem_proto::FailsafeState;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The longest silence between acknowledged writes that touches `[t0, t1]`.
fn gap(acked: &[(u64, Instant)], t0: Instant, t1: Instant) -> Duration {
    let mut gap = Duration::ZERO;
    for pair in acked.windows(2) {
        let (a, b) = (pair[0].1, pair[1].1);
        if b >= t0 && a <= t1 {
            gap = gap.max(b - a);
        }
    }
    gap
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(*v.last().unwrap()))
}

fn main() {
    let rounds = env("BENCH_ROUNDS", 5);
    let losses = env("BENCH_ZONE_LOSSES", 10);
    let c = Cluster::start_with(4, ClusterOptions::two_zones(true));
    load::prepare(c.db("db-1"));
    c.cli_ok(&["instance", "pool", "add", "db-3", "db-4"]);
    c.cli_ok(&[
        "set",
        "create",
        "s1",
        "--master",
        "db-1",
        "--dr",
        "a-to-b",
        "--dr-replicas",
        "1",
        "--semi-sync",
        "--ack-from",
        "other-zone",
        "--wait",
    ]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.converged("s1");
    c.write_and_see_everywhere("s1", "db-1", 0);
    let zone_safe = || {
        eventually(Duration::from_secs(30), "zone-safe acknowledgement", || {
            (c.set("s1").dr?.zone_safe == Some(true)).then_some(())
        })
    };
    zone_safe();
    // The master's failsafe list names every replica, the other zone's too: a master
    // cut off with its zone is then never kept writable by promises from inside it
    // (a DR failover refuses while it could be).
    let failsafe_current = || {
        eventually(
            Duration::from_secs(30),
            "the failsafe list up to date",
            || {
                let v = c.set("s1");
                let mut want: Vec<_> = v
                    .members
                    .iter()
                    .filter(|m| m.intended.role == IntendedRole::Replica)
                    .map(|m| m.instance.clone())
                    .collect();
                want.sort();
                let held = v.member(v.master.as_str())?.failsafe.clone();
                let ok = match &held {
                    Some(FailsafeState::Master { peers, .. }) => {
                        let mut peers = peers.clone();
                        peers.sort();
                        peers == want
                    }
                    _ => false,
                };
                if !ok {
                    let roles: Vec<String> = v
                        .members
                        .iter()
                        .map(|m| format!("{} {} {:?}", m.instance, m.intended.role, m.drift))
                        .collect();
                    eprintln!("failsafe {held:?}, want {want:?}; {roles:?}");
                    std::thread::sleep(Duration::from_millis(1000));
                }
                ok.then_some(())
            },
        )
    };

    // 1. Switch gaps, interleaved.
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));
    let mut same_zone = Vec::new();
    let mut dr_switch = Vec::new();
    let mut dr_workflow = Vec::new();
    for _ in 0..rounds {
        for who in ["db-2", "db-1"] {
            let t0 = Instant::now();
            c.cli_ok(&["promote", "s1", who, "--wait"]);
            same_zone.push((t0, Instant::now()));
            c.converged("s1");
            std::thread::sleep(Duration::from_millis(300));
        }
        for _ in 0..2 {
            let t0 = Instant::now();
            c.cli_ok(&["dr", "switch", "s1", "--wait"]);
            let t1 = Instant::now();
            dr_switch.push((t0, t1));
            dr_workflow.push(t1 - t0);
            c.converged("s1");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (attempts, acked) = writer.finish();
    let master = c.set("s1").master.to_string();
    c.write_and_see_everywhere("s1", &master, 999_999_999);
    let present: std::collections::HashSet<u64> = tandem_e2e::promise::ids_on(&c, &master);
    let switch_lost = acked.iter().filter(|a| !present.contains(&a.id)).count();
    let acked: Vec<(u64, Instant)> = acked.iter().map(|a| (a.id, a.at)).collect();
    let same_gaps: Vec<Duration> = same_zone.iter().map(|(a, b)| gap(&acked, *a, *b)).collect();
    let dr_gaps: Vec<Duration> = dr_switch.iter().map(|(a, b)| gap(&acked, *a, *b)).collect();

    // 2. Zone losses.
    zone_safe();
    failsafe_current();
    let mut to_first_write = Vec::new();
    let mut to_done = Vec::new();
    let mut zone_lost_rows = 0;
    let mut zone_acked = 0;
    for trial in 0..losses {
        let view = c.set("s1");
        let dr = view.dr.clone().expect("a DR set");
        let primary: Vec<String> = view
            .members
            .iter()
            .filter(|m| {
                m.location
                    .as_ref()
                    .is_some_and(|l| l.zone == dr.settings.primary.as_str())
            })
            .map(|m| m.instance.to_string())
            .collect();
        // Rows numbered apart per trial and per client: a number written in an earlier
        // trial would be refused as a duplicate.
        let base = (trial as u64 + 1) * 1_000_000_000;
        let writer = Writer::start_numbered(c.addresses(), Duration::from_millis(10), base);
        // A client in the DR zone: it sees the first write there without waiting out
        // the cut servers the other client tries too.
        let dr_zone: Vec<(String, u16)> = c
            .nodes
            .iter()
            .filter(|n| !primary.contains(&n.name))
            .map(|n| (n.db.host().to_owned(), n.db.port()))
            .collect();
        let local = Writer::start_numbered(dr_zone, Duration::from_millis(10), base + 500_000_000);
        std::thread::sleep(Duration::from_millis(1000));
        let cut = Instant::now();
        for name in &primary {
            c.nodes
                .iter()
                .find(|n| &n.name == name)
                .unwrap()
                .host
                .as_ref()
                .unwrap()
                .cut()
                .unwrap();
        }
        eventually(Duration::from_secs(20), "the master judged lost", || {
            matches!(
                c.set("s1").failover.verdict,
                Some(Verdict::Lost { .. } | Verdict::WaitingForLease { .. })
            )
            .then_some(())
        });
        let judged = cut.elapsed();
        c.cli_ok(&["dr", "failover", "s1", "--wait"]);
        let done = cut.elapsed();
        let new_master = c.set("s1").master.to_string();
        let first = eventually(Duration::from_secs(10), "a write in the DR zone", || {
            local.first_ack_after(cut)
        });
        to_first_write.push(first.at - cut);
        to_done.push(done);
        std::thread::sleep(Duration::from_millis(300));
        let (_, acked) = writer.finish();
        let (_, local_acked) = local.finish();
        let present = tandem_e2e::promise::ids_on(&c, &new_master);
        zone_lost_rows += acked
            .iter()
            .chain(&local_acked)
            .filter(|a| !present.contains(&a.id))
            .count();
        zone_acked += acked.len() + local_acked.len();
        eprintln!(
            "zone loss {trial}: judged lost {:.0} ms, failover done {:.0} ms, first write on \
             {new_master} {:.0} ms after the cut",
            ms(judged),
            ms(done),
            ms(first.at - cut)
        );
        for name in &primary {
            c.nodes
                .iter()
                .find(|n| &n.name == name)
                .unwrap()
                .host
                .as_ref()
                .unwrap()
                .heal()
                .unwrap();
        }
        for name in &primary {
            let role = eventually(Duration::from_secs(60), &format!("{name} back"), || {
                let role = c.set("s1").member(name)?.intended.role;
                matches!(role, IntendedRole::Replica | IntendedRole::Quarantined).then_some(role)
            });
            if role == IntendedRole::Quarantined {
                eventually(
                    Duration::from_secs(60),
                    &format!("{name} re-seeded"),
                    || {
                        let args = ["replica", "add", "s1", name, "--seed", "stream", "--wait"];
                        c.cli(&args).0.then_some(())
                    },
                );
            }
        }
        c.converged("s1");
        zone_safe();
        failsafe_current();
    }

    let (same_p50, same_max) = p50_max(same_gaps);
    let (dr_p50, dr_max) = p50_max(dr_gaps);
    let (wf_p50, wf_max) = p50_max(dr_workflow);
    let (loss_p50, loss_max) = p50_max(to_first_write);
    let (done_p50, done_max) = p50_max(to_done);
    println!(
        "multi-zone DR: 4 MariaDB in 2 zones (network namespaces), semi-sync acknowledged \
         from the other zone, a client inserting every 10 ms"
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| same-zone switchover write gap p50 / max ({} switchovers) | {same_p50:.0} / {same_max:.0} ms |",
        same_zone.len()
    );
    println!(
        "| dr switch write gap p50 / max ({} switches) | {dr_p50:.0} / {dr_max:.0} ms |",
        dr_switch.len()
    );
    println!(
        "| dr switch gap p50 / same-zone p50 | {:.2}x |",
        dr_p50 / same_p50.max(1.0)
    );
    println!("| dr switch workflow p50 / max | {wf_p50:.0} / {wf_max:.0} ms |");
    println!(
        "| inserts attempted / acknowledged (switches) | {attempts} / {} |",
        acked.len()
    );
    println!("| acknowledged rows lost (switches) | {switch_lost} |");
    println!(
        "| zone lost to the first write of a client in the DR zone p50 / max ({losses} trials) | {loss_p50:.0} / {loss_max:.0} ms |"
    );
    println!(
        "| zone lost to `dr failover --wait` done (judged lost, operator's command, lease, promotion) p50 / max | {done_p50:.0} / {done_max:.0} ms |"
    );
    println!("| acknowledged rows lost (zone losses, of {zone_acked}) | {zone_lost_rows} |");
}
