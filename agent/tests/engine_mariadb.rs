//! The engine suite ([`engine_suite`]) against MariaDB: a private `mariadbd` per
//! subject, the agent's MariaDB adapter on its socket.

mod engine_suite;

use tandem_agent::config::{EngineSettings, MariadbConfig, PerEngine};
use tandem_agent::engine::mariadb::MariaDb as Adapter;
use tandem_proto::{InstanceId, SourceEndpoint};
use tandem_testkit::{MariaDb, MariaDbOptions};

struct MariaDbSubject {
    id: InstanceId,
    db: MariaDb,
    adapter: Adapter,
}

impl engine_suite::Subject for MariaDbSubject {
    type E = Adapter;

    async fn start(name: &str) -> Self {
        let id: InstanceId = name.parse().unwrap();
        let db = MariaDb::start(MariaDbOptions {
            server_id: tandem_agent::server_id_for(&id),
            ..Default::default()
        })
        .unwrap();
        let own = MariadbConfig {
            socket: Some(db.socket()),
            managed_config: None,
            ..MariadbConfig::default()
        };
        let config = EngineSettings {
            host: db.host().into(),
            port: db.port(),
            admin_user: "root".into(),
            admin_password: None,
            data_dir: db.datadir(),
            backup_dir: db.dir().join("backups"),
            stop_command: None,
            start_command: None,
            tls_ca_file: None,
            own: PerEngine::Mariadb(own.clone()),
        };
        MariaDbSubject {
            id,
            adapter: Adapter::new(config, own),
            db,
        }
    }
    fn engine(&self) -> &Adapter {
        &self.adapter
    }
    fn id(&self) -> InstanceId {
        self.id.clone()
    }
    fn endpoint(&self) -> SourceEndpoint {
        SourceEndpoint {
            instance: self.id.clone(),
            host: self.db.host().into(),
            port: self.db.port(),
        }
    }
    fn write(&self, n: u32) {
        self.db
            .sql(&format!(
                "CREATE DATABASE IF NOT EXISTS suite; \
                 CREATE TABLE IF NOT EXISTS suite.t (id INT PRIMARY KEY); \
                 INSERT INTO suite.t VALUES ({n})"
            ))
            .unwrap();
    }
    fn write_minted(&self) -> u64 {
        self.db
            .sql(
                "CREATE DATABASE IF NOT EXISTS suite; \
                 CREATE TABLE IF NOT EXISTS suite.minted \
                   (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT); \
                 INSERT INTO suite.minted (v) VALUES (0); SELECT LAST_INSERT_ID()",
            )
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
    fn count(&self) -> u32 {
        self.db
            .sql("SELECT COUNT(*) FROM suite.t")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

engine_suite!(MariaDbSubject);
