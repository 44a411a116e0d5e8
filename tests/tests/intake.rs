//! The conductor's status intake under a flood: a real, signed report of db-1 (signed
//! with db-1's own agent key, as a tenant with root on that VM could) published tens
//! of thousands of times as fast as one client can. What waits to be processed stays
//! at most one report per instance, the health says how many were replaced, the real
//! agents' reports keep being taken, and nothing fails over. Real broker, engines,
//! binaries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tandem_e2e::hostile::{signed_by, Hostile};
use tandem_e2e::{eventually, Cluster};
use tandem_proto::codec;
use tandem_transport::signing::SigningKey;
use tandem_transport::{Transport, TransportConfig};

#[test]
fn a_flood_of_reports_waits_as_one_per_instance_and_moves_nothing() {
    let c = Cluster::start(2);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.converged("s1");
    let db1_key = SigningKey::from_pkcs8(
        &std::fs::read(c.nodes[0].agent.state_dir().join("agent.key")).unwrap(),
    )
    .unwrap();

    // Sample the conductor's health through the flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let sampler = {
        let api = c.api();
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while flooding.load(Ordering::SeqCst) {
                if let Ok(h) = api.health() {
                    samples.push(h);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let sent = rt.block_on(async {
        let listener = Transport::connect(
            TransportConfig::new(c.broker.uri(), "listener"),
            Default::default(),
        )
        .await
        .unwrap();
        let mut reports = listener.subscribe_status("#");
        let real = loop {
            let r = reports.next().await.unwrap();
            if r.body.instance.as_str() == "db-1" {
                break r;
            }
        };
        let bytes = codec::encode(&real).unwrap();
        let headers = signed_by(&db1_key, &bytes);
        let hostile = Hostile::connect(c.broker.uri()).await.unwrap();
        let mut sent = 0u64;
        let until = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < until {
            for _ in 0..500 {
                hostile
                    .publish_report(&real, &bytes, &headers)
                    .await
                    .unwrap();
                sent += 1;
            }
            tokio::task::yield_now().await;
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    flooding.store(false, Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    assert!(
        samples.len() > 20,
        "health answered {} times",
        samples.len()
    );

    // At most one waiting report per instance, whatever the flood.
    let most_waiting = samples.iter().map(|h| h.intake_waiting).max().unwrap();
    assert!(
        most_waiting <= 2,
        "{most_waiting} reports waited for 2 instances ({sent} flooded)"
    );
    // The flood went through the intake (every copy believed: db-1's own key), and the
    // health counts what it replaced; the copies repeat a sequence already held, so
    // none of them moved anything.
    let last = samples.last().unwrap();
    assert!(sent > 10_000, "only {sent} flooded");
    println!(
        "flooded {sent}: most waiting {most_waiting}, replaced {}, lag {} ms",
        last.intake_replaced, last.intake_lag_ms
    );

    // The same figures as metrics, for Prometheus.
    let (status, metrics) = c.conductor.http_get_status("/v1/metrics");
    assert_eq!(status, 200, "{metrics}");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert!(value("tandem_intake_replaced_total") >= last.intake_replaced as f64);
    assert!(value("tandem_intake_lag_seconds") >= 0.0);
    assert_eq!(value("tandem_instances"), 2.0);
    assert_eq!(value("tandem_sets"), 1.0);
    assert_eq!(value("tandem_broker_connected"), 1.0);

    // The real agents' reports are still taken: db-1's next sequences arrive.
    let sequence = || {
        c.api()
            .instance(&"db-1".parse().unwrap())
            .unwrap()
            .status
            .sequence
    };
    let before = sequence();
    eventually(Duration::from_secs(10), "db-1's next report", || {
        (sequence() > before).then_some(())
    });
    let set = c.set("s1");
    assert_eq!(set.master.as_str(), "db-1");
    assert_eq!(c.db("db-1").sql("SELECT @@read_only").unwrap(), "0");
    // No failover, nor anything else the detector starts on a sick master.
    let kinds: Vec<String> = c
        .api()
        .workflows()
        .unwrap()
        .iter()
        .map(|w| w.kind.to_string())
        .collect();
    assert!(
        kinds
            .iter()
            .all(|k| ["create_set", "attach", "failsafe"].contains(&k.as_str())),
        "{kinds:?}"
    );
}

/// A conductor that cannot keep up, end to end: 500 instances (each enrolled with its
/// own key, simulated by `tandem_e2e::fleet`) report once a second while the conductor
/// is starved of CPU (jailed on one CPU with busy processes). Reports pile up in the
/// broker, where the conductor cannot see them by what it receives; it asks the broker,
/// says it is behind (`intake_behind`, with the backlog) and, once it has its CPU back
/// and has worked the backlog off, that it caught up. What waits stays within the
/// feed's bound throughout. Real broker and conductor binary.
#[test]
fn a_conductor_that_cannot_keep_up_says_so_and_says_again_when_it_has_caught_up() {
    use tandem_conductor::store::sqlite::SqliteStore;
    use tandem_e2e::fleet::{Fleet, Templates};
    use tandem_e2e::EventFollower;
    use tandem_testkit::{Broker, ConductorProcess, CpuJail};
    use tandem_transport::FeedBound;
    use tokio_util::sync::CancellationToken;

    const INSTANCES: usize = 500;
    let broker = Broker::new().unwrap();
    let mut conductor = ConductorProcess::start(broker.uri()).unwrap();
    conductor.stop();
    let mut fleet = Fleet::new(INSTANCES, 1);
    fleet
        .seed(&SqliteStore::open(&conductor.data_dir().join("tandem.db")).unwrap())
        .unwrap();
    conductor.start_again().unwrap();
    let events = EventFollower::of(&conductor);
    let api = conductor.api();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let generator = rt.spawn(Arc::new(fleet).report_until(
        broker.uri().to_owned(),
        Arc::new(Templates::plain()),
        2,
        stop.clone(),
    ));
    eventually(Duration::from_secs(30), "every instance registered", || {
        api.health()
            .ok()
            .filter(|h| h.instances == INSTANCES)
            .map(|_| ())
    });

    let mut samples = Vec::new();
    {
        let mut jail = CpuJail::last_cpu().unwrap();
        jail.add(conductor.pid().unwrap()).unwrap();
        // Enough busy processes that the conductor (a few threads among them) gets a
        // few percent of the CPU: less than 500 reports a second need, even paced.
        jail.saturate(200).unwrap();
        eventually(Duration::from_secs(60), "a backlog in the broker", || {
            let h = api.health().ok()?;
            samples.push(h.intake_backlog);
            (h.intake_backlog >= INSTANCES as u64).then_some(())
        });
        // The jail goes: the busy processes end, the conductor has its CPU back.
    }
    eventually(Duration::from_secs(60), "the backlog worked off", || {
        let h = api.health().ok()?;
        samples.push(h.intake_backlog);
        (h.intake_backlog < INSTANCES as u64 / 4 && h.intake_lag_ms < 250).then_some(())
    });
    // The caught-up event follows the backlog's next asking.
    std::thread::sleep(Duration::from_secs(3));
    stop.cancel();
    rt.block_on(generator).unwrap().unwrap();

    let bound = FeedBound::DEFAULT;
    let most = samples.iter().max().copied().unwrap_or(0);
    assert!(
        most <= u64::from(bound.queued),
        "{most} waited in the broker, beyond the feed's bound of {}",
        bound.queued
    );
    let seen = events.stop();
    let behind = seen.iter().position(|e| {
        matches!(e, tandem_api::ApiEvent::IntakeBehind { backlog, lag_ms, .. }
            if *backlog >= INSTANCES as u64 || *lag_ms >= 1000)
    });
    let kinds: Vec<String> = seen
        .iter()
        .filter(|e| !matches!(e, tandem_api::ApiEvent::InstanceChanged { .. }))
        .map(|e| format!("{e:?}"))
        .collect();
    let behind = behind.unwrap_or_else(|| {
        panic!(
            "no intake_behind in {kinds:?} ({} events; broker backlog samples {samples:?}); \
             the conductor said:\n{}",
            seen.len(),
            conductor
                .log()
                .lines()
                .filter(|l| l.contains("intake") || l.contains("WARN") || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(
        seen[behind..]
            .iter()
            .any(|e| matches!(e, tandem_api::ApiEvent::IntakeCaughtUp { .. })),
        "no intake_caught_up after intake_behind in {kinds:?}"
    );
    println!("most waiting in the broker: {most}; events: {kinds:?}");
}
