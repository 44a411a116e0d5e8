//! The conductor's own takeover (issue 19, B3): how long after the acting conductor
//! dies (`kill -9`) or freezes (SIGSTOP) a standby acts, on each store, interleaved
//! round by round in one run:
//! - SQLite: the standby waits on the data directory's lock, which the kernel frees when
//!   the holder dies (a frozen holder keeps it: no takeover at all);
//! - PostgreSQL: the standby takes the lease once it expired (`BENCH_LEASE_MS`, default
//!   2000, the default lease).
//!
//! Per trial: from the fault to the standby serving the API, and to its first command
//! answered by an agent (`ping db-1` through the new conductor). The killed conductor
//! is replaced by a new standby before the next trial; a frozen one is thawed, and
//! exits (its lease is gone).
//!
//! `cargo build --release --bins && cargo bench -p tandem-e2e --bench takeover`
//! (BENCH_TRIALS: trials per store and fault, default 5).

use std::time::{Duration, Instant};

use tandem_e2e::{eventually, Cluster, ClusterOptions};
use tandem_testkit::{ConductorProcess, Postgres, Signal};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// From the fault to the standby serving, and to its first command answered.
type Took = (Duration, Duration);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A one-server set on a conductor, with a standby beside it.
struct Bed {
    cluster: Cluster,
    standby: ConductorProcess,
    /// Conductors that stopped acting, kept: the first one's temporary directory holds
    /// the data directory every later one shares.
    retired: Vec<ConductorProcess>,
    _pg: Option<Postgres>,
}

impl Bed {
    fn new(postgres: bool, lease_ms: u64) -> Bed {
        let (pg, conductor_env) = if postgres {
            let pg = Postgres::start().unwrap();
            pg.sql("CREATE DATABASE tandem").unwrap();
            let url = format!("postgresql://postgres@127.0.0.1:{}/tandem", pg.port());
            let env = vec![
                ("TANDEM_CONDUCTOR_STORE__POSTGRES_URL".into(), url),
                (
                    "TANDEM_CONDUCTOR_STORE__LEASE_MS".into(),
                    lease_ms.to_string(),
                ),
            ];
            (Some(pg), env)
        } else {
            (None, Vec::new())
        };
        let cluster = Cluster::start_with(
            1,
            ClusterOptions {
                conductor_env,
                ..Default::default()
            },
        );
        cluster.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
        let standby = standby_of(&cluster.conductor);
        Bed {
            cluster,
            standby,
            retired: Vec::new(),
            _pg: pg,
        }
    }

    /// Applies `fault` to the acting conductor; returns the times to the standby
    /// serving and to its first command answered (None: no takeover within `limit`),
    /// then makes the bed whole again (a new standby).
    fn trial(&mut self, fault: Signal, limit: Duration) -> Option<Took> {
        let at = Instant::now();
        if fault == Signal::SIGKILL {
            self.cluster.conductor.kill();
        } else {
            self.cluster.conductor.signal(fault).unwrap();
        }
        let serving = loop {
            if self.standby.serving() {
                break Some(at.elapsed());
            }
            if at.elapsed() > limit {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let Some(serving) = serving else {
            // No takeover (a frozen lock holder): thaw it; it acts on.
            self.cluster.conductor.signal(Signal::SIGCONT).unwrap();
            return None;
        };
        let token = self.cluster.conductor.token();
        let api = tandem_api::client::Client::new(&self.standby.url, Some(token), None).unwrap();
        let db1 = "db-1".parse().unwrap();
        let answered = loop {
            if api.ping(&db1).is_ok() {
                break at.elapsed();
            }
            assert!(
                at.elapsed() < limit * 3,
                "no command answered after takeover"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        let mut old = std::mem::replace(&mut self.cluster.conductor, standby_of(&self.standby));
        std::mem::swap(&mut self.cluster.conductor, &mut self.standby);
        if fault == Signal::SIGSTOP {
            old.signal(Signal::SIGCONT).unwrap();
            assert!(
                old.wait_exit(Duration::from_secs(20)).is_some(),
                "the thawed conductor did not stop"
            );
        }
        self.retired.push(old);
        // The new standby stands by before the next trial.
        eventually(Duration::from_secs(20), "the new standby", || {
            self.standby.log().contains("standby").then_some(())
        });
        Some((serving, answered))
    }
}

/// A standby on `acting`'s store (with the same keys and token).
fn standby_of(acting: &ConductorProcess) -> ConductorProcess {
    let standby = acting.second_on_same_store().unwrap();
    eventually(Duration::from_secs(20), "a standby", || {
        standby.log().contains("standby").then_some(())
    });
    standby
}

fn main() {
    let trials = env("BENCH_TRIALS", 5);
    let lease_ms = env("BENCH_LEASE_MS", 2000);
    let mut sqlite = Bed::new(false, lease_ms);
    let mut postgres = Bed::new(true, lease_ms);
    let limit = Duration::from_millis(lease_ms * 3 + 5000);
    let mut rows: std::collections::BTreeMap<(&str, &str), Vec<Option<Took>>> = Default::default();
    for _ in 0..trials {
        rows.entry(("sqlite (lock)", "kill -9"))
            .or_default()
            .push(sqlite.trial(Signal::SIGKILL, limit));
        rows.entry(("postgresql (lease)", "kill -9"))
            .or_default()
            .push(postgres.trial(Signal::SIGKILL, limit));
        rows.entry(("postgresql (lease)", "SIGSTOP"))
            .or_default()
            .push(postgres.trial(Signal::SIGSTOP, limit));
    }
    // A frozen lock holder keeps its lock: once, to show it.
    rows.entry(("sqlite (lock)", "SIGSTOP"))
        .or_default()
        .push(sqlite.trial(Signal::SIGSTOP, Duration::from_secs(10)));

    println!(
        "conductor takeover: a standby beside the acting conductor, {trials} trials per row \
         (SQLite frozen: once), lease {lease_ms} ms"
    );
    println!("| store | fault | standby serving p50 / max | first command answered p50 / max |");
    println!("|---|---|---|---|");
    for ((store, fault), results) in rows {
        let mut serving: Vec<Duration> = results.iter().flatten().map(|r| r.0).collect();
        let mut answered: Vec<Duration> = results.iter().flatten().map(|r| r.1).collect();
        if serving.is_empty() {
            println!(
                "| {store} | {fault} | never (within 10 s): the frozen holder keeps the lock | - |"
            );
            continue;
        }
        serving.sort();
        answered.sort();
        let p50 = |v: &[Duration]| ms(v[v.len() / 2]);
        let max = |v: &[Duration]| ms(*v.last().unwrap());
        println!(
            "| {store} | {fault} | {:.0} / {:.0} ms | {:.0} / {:.0} ms |",
            p50(&serving),
            max(&serving),
            p50(&answered),
            max(&answered)
        );
    }
}
