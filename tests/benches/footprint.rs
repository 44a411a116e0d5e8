//! The agent's footprint in a deployment with replication running, beside the
//! standalone figure of `agent/benches/idle.rs`: a set of three real MariaDB servers
//! with semi-synchronous replication, the conductor, and an application writing a row
//! every 10 ms; each agent's resident memory sampled every 500 ms, before and after
//! heavy work: a fourth server seeded by a stream from the master, then a full backup
//! of the master.
//!
//! `cargo build --release --bins && cargo build --profile agent -p tandem-agent &&
//! TANDEM_AGENT_BIN=target/agent/tandem-agent cargo bench -p tandem-e2e --bench footprint`
//! (BENCH_SECONDS per phase, default 30; BENCH_MB of rows for the heavy work, default
//! 300; without TANDEM_AGENT_BIN the release build of the agent is measured).

use std::time::{Duration, Instant};

use tandem_e2e::load::{self, Writer};
use tandem_e2e::Cluster;

fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The median resident memory of each agent over `seconds`, in MiB.
fn idle(c: &Cluster, seconds: u64) -> Vec<f64> {
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .map(|n| n.agent.process().unwrap().pid())
        .collect();
    let mut samples = vec![Vec::new(); pids.len()];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        for (i, pid) in pids.iter().enumerate() {
            samples[i].push(rss_kib(*pid, "VmRSS:"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            s[s.len() / 2] as f64 / 1024.0
        })
        .collect()
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mb: u64 = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let c = Cluster::start(4);
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
    c.write_and_see_everywhere("s1", "db-1", 0);
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(3));
    let before = idle(&c, seconds);

    // Heavy work: rows that do not compress to nothing, a stream seed of db-4 from the
    // master, then a full backup of the master.
    c.db("db-1")
        .sql(&format!(
            "USE app; CREATE TABLE heavy (id INT PRIMARY KEY, pad VARCHAR(1000)); \
             INSERT INTO heavy SELECT seq, CONCAT(SHA2(seq, 512), REPEAT(MD5(seq), 24)) \
             FROM seq_1_to_{}",
            mb * 1000
        ))
        .unwrap();
    let t = Instant::now();
    c.cli_ok(&["replica", "add", "s1", "db-4", "--seed", "stream", "--wait"]);
    c.cli_ok(&["backup", "create", "db-1", "--wait"]);
    let heavy_s = t.elapsed().as_secs_f64();
    c.converged("s1");
    // The agents release what the work held, and again once their helper threads end.
    std::thread::sleep(Duration::from_secs(15));
    let after = idle(&c, seconds);
    let (attempts, acked) = writer.finish();

    println!(
        "\nagent footprint in a set of three (semi-sync, a write every 10 ms, {} build), \
         median RSS over {seconds} s; heavy work: {mb} MB of rows, \
         db-4 seeded by stream from the master, then a full backup of the master \
         ({heavy_s:.0} s)\n",
        if std::env::var("TANDEM_AGENT_BIN").is_ok() {
            "TANDEM_AGENT_BIN"
        } else {
            "release"
        }
    );
    println!("| agent | role | idle RSS before | after heavy work |");
    println!("|---|---|---|---|");
    for (i, role) in [
        "master (copy source, backed up)",
        "replica",
        "replica",
        "standalone, then seeded replica",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| db-{} | {role} | {:.2} MiB | {:.2} MiB |",
            i + 1,
            before[i],
            after[i]
        );
    }
    println!(
        "\n({} writes attempted, {} acknowledged during the run)",
        attempts,
        acked.len()
    );
}
