//! Bad input gets a clear error naming what was wrong, and changes nothing: a wrong
//! admin login, a broker that cannot be reached, a conductor that cannot start, a
//! metadata key given a wrong value or an unknown instance, a bad backup parent.
//! Real binaries, real broker, real MariaDB.

use std::time::Duration;

use tandem_e2e::Cluster;
use tandem_testkit::{binary, AgentProcess, ConductorProcess, MariaDb, MariaDbOptions};

/// An address nothing listens on (a port the kernel never hands out as ephemeral).
const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:9/%2f";

fn mariadb() -> MariaDb {
    MariaDb::start(MariaDbOptions {
        server_id: tandem_agent::server_id_for(&"db-1".parse().unwrap()),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn an_agent_whose_admin_account_cannot_log_in_exits_saying_so() {
    let db = mariadb();
    let mut agent = AgentProcess::start_mariadb_with(
        &binary("tandem-agent"),
        "db-1",
        "zone-a",
        NO_BROKER,
        &db,
        &[(
            "TANDEM_AGENT_ENGINE__ADMIN_USER".into(),
            "nobody-at-all".into(),
        )],
    )
    .unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("the agent exits");
    assert!(!status.success(), "{status:?}");
    let log = agent.log();
    assert!(
        log.contains("engine.admin_user") && log.contains("cannot log in"),
        "{log}"
    );
    agent.kill();
}

#[test]
fn an_agent_that_never_reached_the_broker_changed_nothing_on_the_engine() {
    let db = mariadb();
    // Settings the agent would manage, set to what it would change.
    db.sql("SET GLOBAL slave_net_timeout = 30").unwrap();
    db.sql("SET GLOBAL sync_binlog = 0").unwrap();
    let snapshot = || {
        db.sql("SELECT @@read_only, @@slave_net_timeout, @@sync_binlog, @@gtid_strict_mode, @@server_id")
            .unwrap()
    };
    let before = snapshot();
    let mut agent =
        AgentProcess::start_mariadb(&binary("tandem-agent"), "db-1", "zone-a", NO_BROKER, &db)
            .unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .expect("the agent gives up on the broker");
    assert!(!status.success(), "{status:?}");
    assert!(agent.log().contains("broker"), "{}", agent.log());
    assert_eq!(snapshot(), before, "the engine was changed");
    assert!(
        !agent.managed_config_path().exists(),
        "the managed configuration was written"
    );
    agent.kill();
}

#[test]
fn a_conductor_that_could_not_start_leaves_no_store_behind() {
    let mut conductor = ConductorProcess::start(NO_BROKER).unwrap();
    let status = conductor
        .wait_exit(Duration::from_secs(30))
        .expect("the conductor gives up on the broker");
    assert!(!status.success());
    let data = conductor.data_dir();
    for f in ["tandem.db", "tandem.db-wal", "admin.token"] {
        assert!(
            !data.join(f).exists(),
            "{f} left behind in {}",
            data.display()
        );
    }
    assert!(conductor.log().contains("broker"), "{}", conductor.log());
}

#[test]
fn wrong_metadata_and_backup_requests_name_what_was_wrong_and_change_nothing() {
    let c = Cluster::start(1);
    let (ok, _, err) = c.cli(&["metadata", "set", "db-404", "owner", "x"]);
    assert!(!ok && err.contains("no agent of instance db-404"), "{err}");
    let (ok, _, err) = c.cli(&["metadata", "get", "db-404", "owner"]);
    assert!(!ok && err.contains("no agent of instance db-404"), "{err}");
    for (key, value, says) in [
        ("promotion_rule", "always", "promotion_rule"),
        ("failover_priority", "100000", "from -1000 to 1000"),
        ("replication_delay_s", "1.5", "replication_delay_s"),
    ] {
        let (ok, _, err) = c.cli(&["metadata", "set", "db-1", key, value]);
        assert!(!ok && err.contains(says), "{key}={value}: {err}");
    }
    assert_eq!(c.cli_ok(&["metadata", "list", "db-1"]), "");
    let (ok, _, err) = c.cli(&[
        "backup",
        "create",
        "db-1",
        "--incremental",
        "--parent",
        "nope",
    ]);
    assert!(!ok && err.contains("field `parent`"), "{err}");
    let backups: tandem_api::BackupList = c.cli_json(&["backup", "list"]);
    assert!(backups.backups.is_empty(), "{backups:?}");
    assert!(backups.running.is_empty(), "{backups:?}");
}
