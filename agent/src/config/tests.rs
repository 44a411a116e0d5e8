use super::*;
use tandem_proto::EngineKind;

const KEY: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

/// `toml` over the defaults and a conductor key (which every agent needs).
fn config(toml: &str) -> Result<Settings> {
    let mut defaults = AgentConfig::default();
    defaults.broker.conductor_keys = vec![KEY.into()];
    let f = Figment::from(Serialized::defaults(defaults)).merge(Toml::string(toml));
    let c: AgentConfig = f.extract().map_err(|e| anyhow::anyhow!("{e}"))?;
    c.validate()
}

#[test]
fn defaults_fill_everything_but_the_instance_id() {
    let s = config("instance_id = \"db-1\"\nunknown_future_field = 3").unwrap();
    assert_eq!(s.instance_id.as_str(), "db-1");
    assert!(s.tags.is_empty());
    let s = config("instance_id = \"db-1\"\ntags = [\"ssd\", \"rack-7\"]").unwrap();
    assert_eq!(s.tags, ["ssd", "rack-7"]);
    assert_eq!(s.status_interval, Duration::from_secs(1));
    let err = config("").unwrap_err().to_string();
    assert!(err.contains("instance_id"), "{err}");
}

#[test]
fn wrong_values_name_their_field() {
    let cases = [
        ("instance_id = \"DB 1\"", "instance_id"),
        (
            "instance_id = \"db\"\nstatus_interval_ms = 1",
            "status_interval_ms",
        ),
        (
            "instance_id = \"db\"\n[broker]\nqueue_type = \"fast\"",
            "broker.queue_type",
        ),
        (
            "instance_id = \"db\"\n[broker]\nuser = \"u\"",
            "broker.password_file",
        ),
        (
            "instance_id = \"db\"\n[broker]\nuser = \"u\"\npassword_file = \"/nonexistent\"",
            "broker.password_file",
        ),
        (
            "instance_id = \"db\"\n[broker]\nca_file = \"/nonexistent/ca.pem\"",
            "broker.ca_file",
        ),
        (
            "instance_id = \"db\"\n[broker]\nca_file = \"/etc/hostname\"",
            "broker.ca_file",
        ),
        (
            "instance_id = \"db\"\nstatus_interval_ms = \"soon\"",
            "status_interval_ms",
        ),
        (
            "instance_id = \"db\"\n[backup_store]\nkind = \"tape\"",
            "backup_store.kind",
        ),
        (
            "instance_id = \"db\"\n[backup_store]\nkind = \"swift\"",
            "backup_store.swift_auth_url",
        ),
        ("instance_id = \"db\"\nlease_ms = 100", "lease_ms"),
        (
            "instance_id = \"db\"\n[broker]\nconductor_keys = []",
            "broker.conductor_keys",
        ),
        (
            "instance_id = \"db\"\n[broker]\nconductor_keys = [\"beef\"]",
            "broker.conductor_keys",
        ),
        (
            "instance_id = \"db\"\n[seed]\nlisten = \"everywhere\"",
            "seed.listen",
        ),
        (
            "instance_id = \"db\"\n[seed]\ntls_cert_file = \"/etc/tandem/seed.pem\"",
            "seed.tls_key_file",
        ),
        (
            "instance_id = \"db\"\n[seed]\ntls_cert_file = \"/nonexistent.pem\"\n\
             tls_key_file = \"/nonexistent.key\"\ntls_ca_file = \"/nonexistent-ca.pem\"",
            "seed.tls_cert_file",
        ),
    ];
    for (toml, field) in cases {
        let err = format!("{:#}", config(toml).unwrap_err());
        assert!(err.contains(field), "{toml:?}: {err}");
    }
}

#[test]
fn broker_secret_comes_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cr:t/\n").unwrap();
    let s = config(&format!(
        "instance_id = \"db\"\n[broker]\nuri = \"amqp://h:5672/v\"\nuser = \"tandem\"\npassword_file = {:?}",
        pw
    ))
    .unwrap();
    assert_eq!(s.broker_uri, "amqp://tandem:s3cr%3At%2F@h:5672/v");
}

#[test]
fn engine_defaults_follow_its_kind_and_its_own_section() {
    let s = config("instance_id = \"db\"").unwrap();
    assert_eq!(s.engine.kind(), EngineKind::Mariadb);
    assert_eq!(s.engine.port, 3306);
    assert_eq!(s.engine.admin_user, "root");
    assert_eq!(s.engine.data_dir, PathBuf::from("/var/lib/mysql"));
    let PerEngine::Mariadb(own) = &s.engine.own else {
        panic!(
            "a MariaDB agent gets its MariaDB section: {:?}",
            s.engine.own
        )
    };
    assert_eq!(
        own.socket.as_deref(),
        Some(Path::new("/run/mysqld/mysqld.sock"))
    );
    assert!(own.revoke_read_only_bypass);

    let s = config(
        "instance_id = \"db\"\n[engine]\nport = 3407\n[engine.mariadb]\n\
         socket = \"/tmp/my.sock\"\nrevoke_read_only_bypass = false",
    )
    .unwrap();
    assert_eq!(s.engine.port, 3407);
    let PerEngine::Mariadb(own) = &s.engine.own else {
        panic!("{:?}", s.engine.own)
    };
    assert_eq!(own.socket.as_deref(), Some(Path::new("/tmp/my.sock")));
    assert!(!own.revoke_read_only_bypass);

    let s = config("instance_id = \"db\"\n[engine]\nkind = \"postgresql\"").unwrap();
    assert_eq!(s.engine.kind(), EngineKind::Postgresql);
    assert_eq!(s.engine.port, 5432);
    assert_eq!(s.engine.admin_user, "postgres");
}

#[test]
fn a_field_that_moved_into_the_engine_section_is_refused_with_its_new_place() {
    for field in [
        "socket = \"/tmp/s\"",
        "managed_config = \"/tmp/c\"",
        "revoke_read_only_bypass = false",
    ] {
        let name = field.split(' ').next().unwrap();
        let err = config(&format!("instance_id = \"db\"\n[engine]\n{field}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("engine.mariadb.{name}")),
            "{field}: {err}"
        );
    }
}
