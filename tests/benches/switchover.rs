//! Write unavailability during a planned switchover, seen by a client that inserts a row
//! every 10 ms as an ordinary user and, when a write is refused, tries the other servers
//! (as a client behind a proxy would). The gap is the longest time between two
//! acknowledged inserts around a switchover; rows lost are acknowledged inserts missing
//! from the final master.
//!
//! `cargo build --release --bins && cargo bench -p tandem-e2e --bench switchover`
//! (BENCH_SWITCHOVERS, default 12).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
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
    c.db("db-1")
        .sql(
            "CREATE DATABASE app; CREATE TABLE app.w (id BIGINT PRIMARY KEY, at DATETIME(6)); \
             CREATE USER app@'%' IDENTIFIED BY 'apppw'; GRANT INSERT, SELECT ON app.* TO app@'%'",
        )
        .unwrap();
    c.write_and_see_everywhere("s1", "db-1", 0);

    let ports: Vec<u16> = c.nodes.iter().map(|n| n.db.port()).collect();
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(write_loop(ports, acked, stop))
        })
    };
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
    stop.store(true, Ordering::SeqCst);
    let attempts = writer.join().unwrap();

    let acked = acked.lock().unwrap().clone();
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
    println!(
        "| inserts attempted / acknowledged | {attempts} / {} |",
        acked.len()
    );
    println!("| acknowledged rows lost | {lost} |");
}

async fn write_loop(
    ports: Vec<u16>,
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let pools: Vec<mysql_async::Pool> = ports
        .iter()
        .map(|p| {
            mysql_async::Pool::new(
                mysql_async::OptsBuilder::default()
                    .ip_or_hostname("127.0.0.1")
                    .tcp_port(*p)
                    .user(Some("app"))
                    .pass(Some("apppw"))
                    .db_name(Some("app")),
            )
        })
        .collect();
    let mut current = 0usize;
    let mut id = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        id += 1;
        for k in 0..pools.len() {
            let i = (current + k) % pools.len();
            let insert = async {
                let mut conn = pools[i].get_conn().await?;
                conn.exec_drop("INSERT INTO w (id, at) VALUES (?, NOW(6))", (id,))
                    .await
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(200), insert).await {
                acked.lock().unwrap().push((id, Instant::now()));
                current = i;
                break;
            }
        }
    }
    id
}
