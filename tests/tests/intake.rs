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
