//! Fan-in at fleet scale (issue 19, B3): how fresh the conductor's knowledge of every
//! instance stays when thousands report once a second, against a bare lapin consumer
//! of the same reports in the same run.
//!
//! For each shape (standalone instances; sets of three) and size, a simulated fleet
//! (`tandem_e2e::fleet`: a real agent's reports, renamed, each authenticated with its
//! instance's own key) reports through the broker, first to the bare consumer, then to
//! a release `tandem-conductor` whose store holds the fleet's enrolments and sets.
//! Staleness is the age of the newest report the reader holds for an instance picked
//! at random, sampled 100 times a second (the conductor's through
//! `GET /v1/instances/{id}`, stamped when the answer arrives); with a report a second
//! it is at best uniform over the second (p99 near 990 ms). Beside it: the conductor's
//! CPU over the window, its resident memory, how long after it starts every instance
//! has registered, the intake's lag, `GET /v1/sets` (first page, and every page) and
//! the workflows it started (a fleet in order needs none).
//!
//! `cargo build --release --bins && cargo bench -p tandem-e2e --bench fanin`
//! (BENCH_SIZES, default 1000,3000,10000; BENCH_SHAPES, default 1,3; BENCH_SECONDS per
//! window, default 15; BENCH_BARE_FEED=bounded gives the bare consumer the conductor's
//! feed settings: its queue's bound, prefetch and acknowledgements).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_conductor::store::sqlite::SqliteStore;
use tandem_e2e::fleet::{BareConsumer, Fleet, Templates};
use tandem_proto::Timestamp;
use tandem_testkit::Broker;
use tandem_testkit::ConductorProcess;
use tokio_util::sync::CancellationToken;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|v| v.trim().parse().expect("a number"))
        .collect()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// User plus system CPU of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(14) + ticks(15)) as f64 / 100.0
}

/// The broker's process (the machine's one RabbitMQ).
fn broker_pid() -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-o", "beam.smp"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

#[derive(Default)]
struct Row {
    shape: usize,
    size: usize,
    bare: Vec<u64>,
    bare_missing: usize,
    tandem: Vec<u64>,
    tandem_missing: usize,
    cpu: f64,
    /// The broker's CPU over each window: the bare one's, then Tandem's.
    broker_cpu: (f64, f64),
    rss: f64,
    registered: Option<Duration>,
    registered_count: usize,
    lag_max: u64,
    sets_first: Vec<u64>,
    sets_all: Vec<u64>,
    workflows: usize,
    published: u64,
}

/// Samples `take` 100 times a second for `seconds`; returns the staleness figures and
/// how many samples found nothing.
fn sample(
    seconds: u64,
    n: usize,
    mut take: impl FnMut(usize) -> Option<Timestamp>,
) -> (Vec<u64>, usize) {
    let (mut ages, mut missing) = (Vec::new(), 0);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let i = rand::random_range(0..n);
        match take(i) {
            Some(t) => ages.push(Timestamp::now().0.saturating_sub(t.0)),
            None => missing += 1,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ages.sort();
    (ages, missing)
}

fn run(templates: &Arc<Templates>, shape: usize, size: usize, seconds: u64) -> Row {
    let mut row = Row {
        shape,
        size,
        ..Row::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::new().unwrap();
    let mut conductor = ConductorProcess::start(broker.uri()).unwrap();
    conductor.stop();
    let mut fleet = Fleet::new(size, shape);
    fleet
        .seed(&SqliteStore::open(&conductor.data_dir().join("tandem.db")).unwrap())
        .unwrap();
    let fleet = Arc::new(fleet);
    let stop = CancellationToken::new();
    let generator = rt.spawn(fleet.clone().report_until(
        broker.uri().to_owned(),
        templates.clone(),
        4,
        stop.clone(),
    ));

    // The baseline: the bare consumer, after a second to hear everyone.
    let bounded = std::env::var("BENCH_BARE_FEED").is_ok_and(|v| v == "bounded");
    let bare = rt
        .block_on(BareConsumer::start(broker.uri(), bounded))
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let beam = broker_pid().unwrap_or(0);
    let (before, window) = (cpu_seconds(beam), Instant::now());
    (row.bare, row.bare_missing) = sample(seconds, size, |i| {
        bare.newest.lock().unwrap().get(fleet.id(i)).copied()
    });
    row.broker_cpu.0 = (cpu_seconds(beam) - before) / window.elapsed().as_secs_f64();
    drop(bare);

    // Tandem: the conductor starts on the seeded store while the fleet reports.
    conductor.start_again().unwrap();
    let started = Instant::now();
    while conductor.token().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let api = conductor.api();
    println!("conductor pid {}", conductor.pid().expect("running"));
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(h) = api.health() {
            row.registered_count = h.instances;
            if h.instances >= size {
                row.registered = Some(started.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = conductor.pid().expect("running");
    let watching = Arc::new(AtomicBool::new(true));
    let side = std::thread::spawn({
        let (watching, api) = (watching.clone(), conductor.api());
        move || {
            let (mut lag, mut first, mut all) = (0u64, Vec::new(), Vec::new());
            let mut round = 0u64;
            while watching.load(Ordering::SeqCst) {
                round += 1;
                if let Ok(h) = api.health() {
                    lag = lag.max(h.intake_lag_ms);
                }
                let t = Instant::now();
                if api.sets_page(&Default::default()).is_ok() {
                    first.push(t.elapsed().as_millis() as u64);
                }
                // Every page, less often: at 10k that is seven pages.
                let t = Instant::now();
                if round % 5 == 1 && api.sets().is_ok() {
                    all.push(t.elapsed().as_millis() as u64);
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
            (lag, first, all)
        }
    });
    let (cpu_before, beam_before) = (cpu_seconds(pid), cpu_seconds(beam));
    let window = Instant::now();
    (row.tandem, row.tandem_missing) = sample(seconds, size, |i| match api.instance(fleet.id(i)) {
        Ok(v) => Some(v.status.taken_at),
        Err(e) => {
            eprintln!("GET /v1/instances/{}: {e}", fleet.id(i));
            None
        }
    });
    row.cpu = (cpu_seconds(pid) - cpu_before) / window.elapsed().as_secs_f64();
    row.broker_cpu.1 = (cpu_seconds(beam) - beam_before) / window.elapsed().as_secs_f64();
    row.rss = rss_mib(pid);
    watching.store(false, Ordering::SeqCst);
    let (lag, mut first, mut all) = side.join().unwrap();
    first.sort();
    all.sort();
    (row.lag_max, row.sets_first, row.sets_all) = (lag, first, all);
    row.workflows = api.workflows().map(|w| w.len()).unwrap_or_else(|e| {
        eprintln!("GET /v1/workflows: {e}");
        usize::MAX
    });
    stop.cancel();
    row.published = rt.block_on(generator).unwrap().unwrap();
    conductor.stop();
    row
}

fn main() {
    let sizes = env_list("BENCH_SIZES", "1000,3000,10000");
    let shapes = env_list("BENCH_SHAPES", "1,3");
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    println!("capturing a real agent's reports from a set of three and a standalone server...");
    let templates = Arc::new(Templates::capture());
    let mut rows = Vec::new();
    for &shape in &shapes {
        for &size in &sizes {
            println!("{size} instances in sets of {shape}...");
            let row = run(&templates, shape, size, seconds);
            print_row(&row);
            rows.push(row);
        }
    }
    println!();
    println!("| instances | sets of | bare p50 / p99 | Tandem p50 / p99 | p99 ratio | conductor CPU | broker CPU bare / Tandem | RSS | all registered | intake lag max | GET /v1/sets first page / all p50 (max) | workflows | reports sent |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        print_row(r);
    }
}

fn print_row(r: &Row) {
    let (b50, b99) = (percentile(&r.bare, 0.5), percentile(&r.bare, 0.99));
    let (t50, t99) = (percentile(&r.tandem, 0.5), percentile(&r.tandem, 0.99));
    let registered = match r.registered {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => format!("{} of {} in 60 s", r.registered_count, r.size),
    };
    let missing = |m: usize| {
        if m > 0 {
            format!(" ({m} unseen)")
        } else {
            String::new()
        }
    };
    println!(
        "| {} | {} | {b50} / {b99} ms{} | {t50} / {t99} ms{} | {:.2}x | {:.0} % | {:.0} / {:.0} % | {:.0} MiB | {registered} | {} ms | {} / {} ms ({} / {} ms) | {} | {} |",
        r.size,
        r.shape,
        missing(r.bare_missing),
        missing(r.tandem_missing),
        t99 as f64 / b99.max(1) as f64,
        r.cpu * 100.0,
        r.broker_cpu.0 * 100.0,
        r.broker_cpu.1 * 100.0,
        r.rss,
        r.lag_max,
        percentile(&r.sets_first, 0.5),
        percentile(&r.sets_all, 0.5),
        r.sets_first.last().copied().unwrap_or(0),
        r.sets_all.last().copied().unwrap_or(0),
        r.workflows,
        r.published,
    );
}
