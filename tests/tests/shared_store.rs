//! Conductors sharing a PostgreSQL store: one acts under a lease, the other stands by
//! (no API, no broker connection, nothing sent); when the acting one is killed or
//! frozen in the middle of a switchover, the standby takes over within about a lease,
//! finishes the switchover, and the frozen one, thawed, writes nothing and stops. Real
//! binaries, a private PostgreSQL, real MariaDB servers and agents, the real broker.

use std::time::{Duration, Instant};

use tandem_e2e::promise::done_once;
use tandem_e2e::{eventually, tail, Cluster, ClusterOptions};
use tandem_testkit::{ConductorProcess, Postgres, Signal};

/// How long the acting conductor's lease lasts (the default).
const LEASE: Duration = Duration::from_millis(2000);

/// A set of three on a conductor whose store is a database of a private PostgreSQL,
/// the conductor stopping at `failpoint` (and living on there), and a second
/// conductor on the same store standing by.
fn shared(failpoint: &str) -> (Postgres, Cluster, ConductorProcess) {
    let pg = Postgres::start().unwrap();
    pg.sql("CREATE DATABASE tandem").unwrap();
    let url = format!("postgresql://postgres@127.0.0.1:{}/tandem", pg.port());
    let options = ClusterOptions {
        conductor_env: vec![
            ("TANDEM_CONDUCTOR_STORE__POSTGRES_URL".into(), url),
            (
                "TANDEM_CONDUCTOR_STORE__LEASE_MS".into(),
                LEASE.as_millis().to_string(),
            ),
            ("TANDEM_CONDUCTOR_FAILPOINT".into(), failpoint.into()),
        ],
        ..Default::default()
    };
    let c = Cluster::start_with(3, options);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--wait"]);
    assert_eq!(c.converged("s1"), "db-1");
    c.write_and_see_everywhere("s1", "db-1", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.conductors_connected() != 1 {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            c.broker.connection_names(),
            c.conductor.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let second = c.standby();
    (pg, c, second)
}

/// Starts a switchover to db-2 and waits until the acting conductor hangs at its
/// failpoint; returns the workflow's id and the epochs its journal holds so far.
fn switchover_to_the_failpoint(c: &Cluster) -> String {
    c.cli_ok(&["promote", "s1", "db-2"]);
    eventually(Duration::from_secs(30), "the failpoint", || {
        c.conductor
            .log()
            .contains("failpoint reached: hanging")
            .then_some(())
    });
    let api = c.api();
    let running = api
        .workflows()
        .unwrap()
        .into_iter()
        .find(|w| w.kind == tandem_api::WorkflowKind::Switchover)
        .expect("the switchover");
    running.id
}

/// After the takeover: the switchover ends done under the new conductor, every step
/// once, epochs never falling, db-2 the only writable master, nothing lost.
fn finished_by_the_standby(c: &Cluster, workflow: &str) {
    done_once(c, workflow);
    assert_eq!(c.converged("s1"), "db-2");
    c.write_and_see_everywhere("s1", "db-2", 2);
    for node in ["db-1", "db-2", "db-3"] {
        assert_eq!(c.db(node).sql("SELECT COUNT(*) FROM app.t").unwrap(), "2");
    }
}

#[test]
fn a_standby_finishes_the_switchover_of_a_killed_conductor() {
    let (_pg, mut c, mut second) = shared("switchover:5:sent:hang");
    let workflow = switchover_to_the_failpoint(&c);

    let killed = Instant::now();
    c.conductor.kill();
    second.wait_serving(Duration::from_secs(30)).unwrap();
    let took = killed.elapsed();
    assert!(second.log().contains("takes over"), "{}", second.log());
    eprintln!("took over {took:?} after the kill (lease {LEASE:?})");
    std::mem::swap(&mut c.conductor, &mut second);
    finished_by_the_standby(&c, &workflow);
    eventually(Duration::from_secs(10), "one conductor connected", || {
        (c.conductors_connected() == 1).then_some(())
    });
}

#[test]
fn a_frozen_conductor_is_taken_over_and_thawed_writes_nothing() {
    let (_pg, mut c, mut second) = shared("switchover:5:sent:hang");
    let workflow = switchover_to_the_failpoint(&c);

    c.conductor.signal(Signal::SIGSTOP).unwrap();
    second.wait_serving(Duration::from_secs(30)).unwrap();
    assert!(second.log().contains("takes over"), "{}", second.log());
    std::mem::swap(&mut c.conductor, &mut second);
    let first = &mut second;
    finished_by_the_standby(&c, &workflow);
    // The acting conductor settles (its follow-up workflows: the new master's failsafe
    // list), so that any change after the thaw could only be the thawed one's.
    let settled = || {
        let api = c.api();
        let idle = api.workflows().ok()?.iter().all(|w| {
            !matches!(
                w.state,
                tandem_api::WorkflowState::Running | tandem_api::WorkflowState::RollingBack
            )
        });
        idle.then(|| {
            (
                api.set("s1").ok().map(|s| s.epoch),
                api.workflows().ok().map(|w| w.len()),
            )
        })
    };
    let before = eventually(
        Duration::from_secs(30),
        "the acting conductor to settle",
        || {
            let first = settled()?;
            std::thread::sleep(Duration::from_secs(2));
            (settled()? == first).then_some(first)
        },
    );
    let master = c.set("s1").master;

    // Thawed, the first finds its lease gone and stops, having written nothing.
    first.signal(Signal::SIGCONT).unwrap();
    let status = first
        .wait_exit(Duration::from_secs(20))
        .expect("the thawed conductor stopped");
    assert!(!status.success(), "{status:?}");
    assert!(
        first.log().contains("lost the store's lease"),
        "{}",
        tail(&first.log(), 30)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.set("s1").master, master);
    assert_eq!(
        settled(),
        Some(before),
        "the thawed conductor changed the set\nthe thawed one:\n{}\nthe acting one:\n{}",
        tail(&first.log(), 15),
        tail(&c.conductor.log(), 15)
    );
    c.write_and_see_everywhere("s1", "db-2", 3);
}
