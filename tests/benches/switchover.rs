//! Write unavailability during a planned switchover, seen by a client that inserts a row
//! every 10 ms as an ordinary user and, when a write is refused, tries the other servers
//! (as a client behind a proxy would). The gap is the longest time between two
//! acknowledged inserts around a switchover; rows lost are acknowledged inserts missing
//! from the final master.
//!
//! `cargo build --release --bins && cargo bench -p tandem-e2e --bench switchover`
//! (BENCH_SWITCHOVERS, default 12).

use std::time::{Duration, Instant};

use tandem_e2e::load::{self, Writer};
use tandem_e2e::Cluster;

fn main() {
    let switchovers: usize = std::env::var("BENCH_SWITCHOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let c = Cluster::start(3);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--wait"]);
    c.converged("s1");
    load::prepare(c.db("db-1"));
    c.write_and_see_everywhere("s1", "db-1", 0);

    let writer = Writer::start(c.addresses(), Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(500));

    let mut windows = Vec::new();
    let mut master = "db-1".to_string();
    for i in 0..switchovers {
        let candidate = ["db-2", "db-3", "db-1"][i % 3];
        let t0 = Instant::now();
        c.cli_ok(&["promote", "s1", candidate, "--wait"]);
        let t1 = Instant::now();
        windows.push((t0, t1));
        master = candidate.to_string();
        c.converged("s1");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (attempts, acked) = writer.finish();
    let acked: Vec<(u64, Instant)> = acked.iter().map(|a| (a.id, a.at)).collect();
    let mut gaps = Vec::new();
    let mut durations = Vec::new();
    for (t0, t1) in &windows {
        // The longest silence between acknowledged writes that touches the window.
        let mut gap = Duration::ZERO;
        for pair in acked.windows(2) {
            let (a, b) = (pair[0].1, pair[1].1);
            if b >= *t0 && a <= *t1 {
                gap = gap.max(b - a);
            }
        }
        gaps.push(gap);
        durations.push(*t1 - *t0);
    }
    // Every acknowledged row must be on the final master.
    c.write_and_see_everywhere("s1", &master, 999_999_999);
    let present = c.db(&master).sql("SELECT COUNT(*) FROM app.w").unwrap();
    let present: usize = present.parse().unwrap();
    let lost = acked.len().saturating_sub(present);

    gaps.sort();
    durations.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = |v: &[Duration]| v[v.len() / 2];
    println!(
        "planned switchover under load: 3 MariaDB, a client inserting every 10 ms, {switchovers} switchovers"
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!("| write gap p50 | {:.0} ms |", ms(p50(&gaps)));
    println!("| write gap max | {:.0} ms |", ms(*gaps.last().unwrap()));
    println!(
        "| switchover workflow p50 (request to done) | {:.0} ms |",
        ms(p50(&durations))
    );
    println!(
        "| switchover workflow max | {:.0} ms |",
        ms(*durations.last().unwrap())
    );
    // The conductor's own record of each switchover (created to finished, and where
    // the time went between its journaled steps): the CLI's figure above includes its
    // start and its polling every 100 ms, so it moves in steps of 100 ms.
    let api = c.api();
    let mut recorded = Vec::new();
    let mut steps: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for w in api.workflows().unwrap() {
        if w.kind != tandem_api::WorkflowKind::Switchover {
            continue;
        }
        recorded.push(w.updated_at.0 - w.created_at.0);
        let detail = api.workflow(&w.id).unwrap();
        let mut last = w.created_at.0;
        for step in &detail.steps {
            let name = format!("{} {}", step.step, step.command);
            steps.entry(name).or_default().push(step.sent_at.0 - last);
            last = step.sent_at.0;
        }
        steps
            .entry("(last step to done)".into())
            .or_default()
            .push(w.updated_at.0 - last);
    }
    recorded.sort();
    println!(
        "| switchover workflow p50 (conductor's record) | {} ms |",
        recorded[recorded.len() / 2]
    );
    println!(
        "| switchover workflow max (conductor's record) | {} ms |",
        recorded.last().unwrap()
    );
    println!(
        "| inserts attempted / acknowledged | {attempts} / {} |",
        acked.len()
    );
    println!("| acknowledged rows lost | {lost} |");
    println!();
    println!("time before each journaled step (p50 over the switchovers):");
    for (name, mut v) in steps {
        v.sort();
        println!("  {:>5} ms  {name}", v[v.len() / 2]);
    }
}
