//! The conductor's hot reads at fleet scale (issue 19 item 1): what the failure
//! detector reads every 100 ms (every set with its members) and what each status
//! report reads for its drift check (the instance's set, the active workflows), with
//! instances in sets of three.
//!
//! Tandem reads them from the store's in-memory copy; the baseline runs, on copies of
//! the same database, the SQLite queries those reads were before it (the set ids, then
//! per set its row and its members; per report the instance's set, the active
//! workflows and the set), once without and once with the `members_by_set` index.
//! Interleaved per round; the median of the rounds is printed.
//!
//! `cargo bench -p tandem-conductor --bench fleet` (BENCH_ROUNDS, default 5;
//! BENCH_SIZES, default 1000,3000,10000 instances).

use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};
use tandem_conductor::store::sqlite::SqliteStore;
use tandem_conductor::store::{ReplicaOptions, Store, TopologyChange};
use tandem_proto::{InstanceId, ReplicaSetId};

fn id<T: std::str::FromStr>(s: String) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

/// One detector tick's reads, as SQLite queries; returns the members seen.
fn tick_sql(c: &Connection) -> usize {
    let ids: Vec<String> = c
        .prepare_cached("SELECT id FROM replica_sets ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    ids.iter().map(|set| load_set_sql(c, set)).sum()
}

fn load_set_sql(c: &Connection, set: &str) -> usize {
    let _: (i64, String) = c
        .prepare_cached("SELECT epoch, master FROM replica_sets WHERE id = ?1")
        .unwrap()
        .query_row([set], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    c.prepare_cached(
        "SELECT instance, role, replicates_from, writable, options FROM members \
         WHERE set_id = ?1 ORDER BY role = 'replica', instance",
    )
    .unwrap()
    .query_map([set], |r| r.get::<_, String>(0))
    .unwrap()
    .count()
}

/// One report's drift-check reads, as SQLite queries.
fn report_sql(c: &Connection, instance: &str) -> usize {
    let set: String = c
        .prepare_cached("SELECT set_id FROM members WHERE instance = ?1")
        .unwrap()
        .query_row([instance], |r| r.get(0))
        .optional()
        .unwrap()
        .expect("a member");
    let active = c
        .prepare_cached(
            "SELECT id FROM workflows WHERE state IN ('running', 'rolling_back') \
             ORDER BY created_at",
        )
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .count();
    active + load_set_sql(c, &set)
}

fn tick_store(s: &SqliteStore) -> usize {
    s.sets().unwrap().iter().map(|set| set.members.len()).sum()
}

fn report_store(s: &SqliteStore, instance: &InstanceId) -> usize {
    let set = s.set_of(instance).unwrap().expect("a member");
    let active = s.active_workflows().unwrap().len();
    active + s.set(&set).unwrap().map_or(0, |set| set.members.len())
}

/// Time per call of `f` over `calls` calls.
fn time(calls: usize, mut f: impl FnMut(usize) -> usize) -> Duration {
    let t0 = Instant::now();
    let mut seen = 0;
    for k in 0..calls {
        seen += f(k);
    }
    assert!(seen > 0);
    t0.elapsed() / calls as u32
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn show(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }
}

/// A store with `n` instances in sets of three.
fn fleet(path: &std::path::Path, n: usize) -> SqliteStore {
    let store = SqliteStore::open(path).unwrap();
    for k in 0..n / 3 {
        let set: ReplicaSetId = id(format!("s{k}"));
        store
            .create_set(&set, &id(format!("db-{}", 3 * k)))
            .unwrap();
        for r in 1..3 {
            let change = TopologyChange::AddReplica {
                instance: id(format!("db-{}", 3 * k + r)),
                options: ReplicaOptions::default(),
                source: None,
            };
            store.apply(&set, &change).unwrap();
        }
    }
    store
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 3_000, 10_000]);
    println!(
        "conductor hot reads, instances in sets of three, median of {rounds} interleaved rounds"
    );
    println!(
        "| instances | detector tick: SQLite, no index | SQLite, indexed | Tandem (memory) | \
         one report: SQLite, no index | SQLite, indexed | Tandem (memory) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.db");
        let store = fleet(&path, n);
        // The baselines read copies of the database, one as it was before the index.
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        }
        let (bare, indexed) = (dir.path().join("bare.db"), dir.path().join("indexed.db"));
        std::fs::copy(&path, &bare).unwrap();
        std::fs::copy(&path, &indexed).unwrap();
        let bare = Connection::open(&bare).unwrap();
        bare.execute_batch("DROP INDEX members_by_set").unwrap();
        let indexed = Connection::open(&indexed).unwrap();

        let instances: Vec<InstanceId> = (0..3 * (n / 3)).map(|k| id(format!("db-{k}"))).collect();
        let pick = |k: usize| &instances[(k * 7919) % instances.len()];
        // Fewer calls where one is slow: each measurement takes about as long.
        let tick_calls = (30_000 / n).max(1);
        let bare_tick_calls = (3_000_000 / (n * n)).max(1);
        let report_calls = 2_000;
        let bare_report_calls = (2_000_000 / n).max(10);
        let mut m: [Vec<Duration>; 6] = Default::default();
        for _ in 0..rounds {
            m[0].push(time(bare_tick_calls, |_| tick_sql(&bare)));
            m[1].push(time(tick_calls, |_| tick_sql(&indexed)));
            m[2].push(time(tick_calls, |_| tick_store(&store)));
            m[3].push(time(bare_report_calls, |k| {
                report_sql(&bare, pick(k).as_str())
            }));
            m[4].push(time(report_calls, |k| {
                report_sql(&indexed, pick(k).as_str())
            }));
            m[5].push(time(report_calls, |k| report_store(&store, pick(k))));
        }
        let [a, b, c, d, e, f] = m.map(median);
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} |",
            show(a),
            show(b),
            show(c),
            show(d),
            show(e),
            show(f)
        );
    }
}
