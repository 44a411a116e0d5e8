//! Replication between engines over TLS only, when certificates are configured: the
//! replication accounts `REQUIRE SSL`, each replica verifies its source's certificate
//! against the CA, and a switchover keeps it so. Real MariaDB servers with certificates
//! from a private CA, real agents and conductor; checked on the engines.

use mysql_async::prelude::Queryable;
use tandem_e2e::{Cluster, ClusterOptions};
use tandem_testkit::TestCa;

/// `SHOW SLAVE STATUS` of a server, by column name.
fn slave_status(c: &Cluster, name: &str) -> std::collections::HashMap<String, String> {
    let db = c.db(name);
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(db.host().to_owned())
        .tcp_port(db.port())
        .user(Some("root"))
        .prefer_socket(false);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        let row: mysql_async::Row = conn
            .query_first("SHOW SLAVE STATUS")
            .await
            .unwrap()
            .expect("a replica");
        let columns = row.columns();
        columns
            .iter()
            .enumerate()
            .map(|(i, col)| {
                let value: Option<String> = row.get(i).flatten();
                (col.name_str().into_owned(), value.unwrap_or_default())
            })
            .collect()
    })
}

#[test]
fn replication_between_engines_is_tls_only_and_verified_when_a_ca_is_configured() {
    let ca = TestCa::new("tandem-engines").unwrap();
    let issued = ca.issue("engine").unwrap();
    let mut options = ClusterOptions::read_only_at_start();
    options.engine_args.extend([
        format!("--ssl-cert={}", issued.cert.display()),
        format!("--ssl-key={}", issued.key.display()),
        format!("--ssl-ca={}", ca.ca_file().display()),
    ]);
    options.agent_env.push((
        "TANDEM_AGENT_ENGINE__TLS_CA_FILE".into(),
        ca.ca_file().display().to_string(),
    ));
    let c = Cluster::start_with(2, options);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    assert_eq!(c.converged("s1"), "db-1");
    c.write_and_see_everywhere("s1", "db-1", 1);
    let tls_only = |master: &str, replica: &str| {
        let ssl_type = c
            .db(master)
            .sql(&format!(
                "SELECT ssl_type FROM mysql.user WHERE User = 'tandem_repl_{replica}'"
            ))
            .unwrap();
        assert_eq!(
            ssl_type, "ANY",
            "the account of {replica} on {master} is not TLS only"
        );
        let status = slave_status(&c, replica);
        assert_eq!(status["Master_SSL_Allowed"], "Yes", "{status:?}");
        assert_eq!(status["Master_SSL_Verify_Server_Cert"], "Yes", "{status:?}");
        assert_eq!(status["Slave_IO_Running"], "Yes", "{status:?}");
    };
    tls_only("db-1", "db-2");
    // A switchover: the old master replicates from the new one, over TLS too.
    c.cli_ok(&["promote", "s1", "db-2", "--wait"]);
    assert_eq!(c.converged("s1"), "db-2");
    c.write_and_see_everywhere("s1", "db-2", 2);
    tls_only("db-2", "db-1");
}
