//! The broker over TLS (amqps) with a private CA: a RabbitMQ node of the test's own that
//! listens only on TLS; the conductor and the agents trust its CA (`broker_ca_file`,
//! `broker.ca_file`), verify its certificate and build a replica set through it. An
//! agent that trusts another CA, or none, refuses the broker and says why.

use std::time::Duration;

use tandem_e2e::{eventually, tail};
use tandem_testkit::{binary, AgentProcess, ConductorProcess, MariaDb, MariaDbOptions, TlsBroker};

fn engine(name: &str) -> MariaDb {
    MariaDb::start(MariaDbOptions {
        server_id: tandem_agent::server_id_for(&tandem_proto::InstanceId::new(name).unwrap()),
        ..Default::default()
    })
    .unwrap()
}

fn env(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

#[test]
fn conductor_and_agents_speak_amqps_to_a_broker_whose_certificate_they_verify() {
    let broker = TlsBroker::start().unwrap();
    let ca = broker.ca_file().display().to_string();
    let agent = binary("tandem-agent");
    let dbs: Vec<MariaDb> = ["db-1", "db-2"].iter().map(|n| engine(n)).collect();
    let trusting = [env("TANDEM_AGENT_BROKER__CA_FILE", &ca)];
    let _agents: Vec<AgentProcess> = ["db-1", "db-2"]
        .iter()
        .zip(&dbs)
        .map(|(n, db)| {
            AgentProcess::start_mariadb_with(&agent, n, "zone-a", &broker.uri(), db, &trusting)
                .unwrap()
        })
        .collect();
    let conductor = ConductorProcess::start_with(
        &broker.uri(),
        &[env("TANDEM_CONDUCTOR_BROKER_CA_FILE", &ca)],
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let (ok, out, err) = conductor.cli(args);
        assert!(ok, "tandem {args:?}: {err}\n{}", tail(&conductor.log(), 30));
        out
    };
    // (The API listens a moment before it serves: it may refuse the first tries.)
    eventually(Duration::from_secs(30), "both agents reported", || {
        let (ok, out, _) = conductor.cli(&["status"]);
        (ok && out.contains("db-1") && out.contains("db-2")).then_some(())
    });
    cli(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    cli(&["replica", "add", "s1", "db-2", "--wait"]);
    dbs[0]
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)")
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "db-2 to replicate over the set built through amqps",
        || (dbs[1].sql("SELECT COUNT(*) FROM app.t").ok()? == "1").then_some(()),
    );

    // An agent that trusts another CA, or only the system's, refuses this broker: it
    // exits non-zero, naming the certificate.
    let other = TlsBroker::other_ca().unwrap();
    let cases = [
        (
            "db-3",
            vec![env(
                "TANDEM_AGENT_BROKER__CA_FILE",
                &other.ca_file().display().to_string(),
            )],
        ),
        ("db-4", vec![]),
    ];
    let strangers: Vec<(MariaDb, AgentProcess)> = cases
        .iter()
        .map(|(name, settings)| {
            let db = engine(name);
            let agent = AgentProcess::start_mariadb_with(
                &agent,
                name,
                "zone-a",
                &broker.uri(),
                &db,
                settings,
            )
            .unwrap();
            (db, agent)
        })
        .collect();
    for (_db, mut stranger) in strangers {
        let name = stranger.instance.clone();
        let status = stranger
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{name} kept running: {}", stranger.log()));
        assert!(!status.success(), "{name}: {}", stranger.log());
        let log = stranger.log();
        assert!(
            log.contains("UnknownIssuer") && log.contains("broker.ca_file"),
            "{name} did not say why: {log}"
        );
    }
    let (_, out, _) = conductor.cli(&["status"]);
    assert!(!out.contains("db-3") && !out.contains("db-4"), "{out}");
}
