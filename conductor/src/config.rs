//! The conductor's configuration: TOML, then `TANDEM_CONDUCTOR_*` environment overrides
//! (`__` for nesting). Every field has a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/tandem/conductor.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ConductorConfig {
    /// Shown as the sender of every command.
    pub name: String,
    /// `amqp://user:pass@host:port/vhost`, or `amqps://…` for TLS.
    pub broker_uri: String,
    /// The other nodes of a RabbitMQ cluster (same user and virtual host): the conductor
    /// connects to the next one when one is down.
    pub broker_other_uris: Vec<String>,
    /// For `amqps`: the CA (PEM) that signed the broker's certificate, when it is a
    /// private one (the system's roots are trusted as well).
    pub broker_ca_file: Option<PathBuf>,
    /// The type of the agents' command queues this conductor declares (for agents with
    /// a least-privilege broker user): `classic` (default) or `quorum` (a RabbitMQ
    /// cluster). The agents' own `broker.queue_type` should say the same.
    pub agent_queue_type: tandem_transport::QueueType,
    /// Where the HTTP API listens.
    pub listen: String,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    /// How long a command waits for its reply, in milliseconds.
    pub command_timeout_ms: u64,
    /// The longest a long command (a backup, a restore, a seeding) may run, in seconds:
    /// sent with it (the agent stops it then), and the step fails saying so.
    pub long_command_timeout_s: u64,
    /// Full backups kept per instance (each with its incrementals); older chains are
    /// deleted when a new full backup is recorded.
    pub backup_keep: usize,
    /// `seed: auto` restores the newest backup of the set when it is younger than
    /// this many seconds, and streams from the master otherwise.
    pub seed_backup_max_age_s: u64,
    /// For crash tests only: `<workflow kind>:<step>:<before|after>` makes the process
    /// exit at that point of a workflow.
    pub failpoint: Option<String>,
    pub failover: FailoverConfig,
    pub agent_users: AgentUsersConfig,
    /// Where a replica's replication account may log in from: `replica_address` (the
    /// engine address its agent reports, which must be the address its connections
    /// leave from) or `any` (behind NAT, or a replica with several addresses).
    pub replication_accounts_from: String,
    /// HTTPS for the API: the certificate chain and its key (PEM); both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The zones offered to users (`[[zones]]`: `name`, `description`), see
    /// `crate::zones`.
    pub zones: Vec<crate::zones::ZoneConfig>,
    /// DR profiles (`[[dr_profiles]]`: `name`, `primary` zone, `dr` zone).
    pub dr_profiles: Vec<crate::zones::DrProfileConfig>,
    pub provisioner: ProvisionerConfig,
}

/// Where the conductor keeps its intent (`[store]`): SQLite in `data_dir` unless
/// `postgres_url` is set, a PostgreSQL database that several conductors share, one of
/// them acting at a time under a lease of `lease_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `postgresql://user@host:port/database` (or `key=value` settings).
    pub postgres_url: Option<String>,
    /// How long the acting conductor's lease lasts without a renewal: after its
    /// process dies or freezes, a standby takes over within about this long.
    pub lease_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            postgres_url: None,
            lease_ms: 2_000,
        }
    }
}

/// The store, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// `tandem.db` in the data directory; one conductor per data directory (a lock).
    Sqlite,
    /// A shared PostgreSQL database, acted on under a lease.
    Postgres { url: String, lease: Duration },
}

/// The cloud's provisioning command (`[provisioner]`; see `crate::provisioner`), run
/// when the free pool has no server a set can take. Off unless `command` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProvisionerConfig {
    /// An executable: gets a JSON request on its standard input, prints the instance
    /// ids it started as JSON.
    pub command: Option<PathBuf>,
    /// How long the command may run, in seconds (default 600).
    pub timeout_s: Option<u64>,
    /// How long the new servers' agents may take to register once the command
    /// answered, in seconds (default 600).
    pub register_timeout_s: Option<u64>,
}

/// One least-privilege broker user per agent (`[agent_users]`; see
/// `crate::broker_users`). Off unless `management_url` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentUsersConfig {
    /// The RabbitMQ management API, e.g. `http://127.0.0.1:15672`. The conductor's own
    /// broker user (in `broker_uri`) must have the `administrator` tag.
    pub management_url: Option<String>,
    /// Agent `db-1`'s broker user is `<prefix>db-1`.
    pub prefix: String,
}

impl Default for AgentUsersConfig {
    fn default() -> Self {
        AgentUsersConfig {
            management_url: None,
            prefix: "tandem-agent-".into(),
        }
    }
}

/// Failure detection and automatic failover (`[failover]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FailoverConfig {
    /// Automatic failover of every set (each set can also be paused on its own).
    pub automatic: bool,
    /// A master whose agent has not reported for this long is suspected; it is failed
    /// over only when its replicas confirm they lost it too, and never before its
    /// lease has run out.
    pub detect_after_ms: u64,
    /// How long each replica may take to apply what it received before a candidate is
    /// chosen among them.
    pub drain_timeout_ms: u64,
    /// A replica whose last reported lag exceeds this many seconds is never chosen.
    pub max_lag_s: f64,
    /// A second automatic failover of one set within this many seconds is held back
    /// until the window ends or an operator acknowledges it (anti-flapping).
    pub flap_window_s: u64,
    /// Added to a lost master's lease before anyone is promoted. Longer than a master's
    /// report interval (a third of its lease), so a lease renewed by a report this
    /// conductor never received has still run out.
    pub lease_margin_ms: u64,
    /// For sets with semi-synchronous replication: how long a commit waits for a
    /// replica's acknowledgement before the master falls back to asynchronous.
    pub semi_sync_timeout_ms: u64,
    /// The infrastructure fence (STONITH): an executable run before a master that
    /// cannot be heard is replaced, with the instance id as its argument. Exit 0 means
    /// the host can no longer serve anyone (powered off, frozen, its ports down): then
    /// nobody waits for its lease, and it cannot answer a client when it thaws.
    pub fence_command: Option<PathBuf>,
    /// How long the fence command may take before it counts as failed.
    pub fence_timeout_ms: u64,
    /// The failsafe: each master is told its replicas, and each replica to answer its
    /// master, so a master rides out a broker outage on their promises (see
    /// `tandem_proto::failsafe`). Off: a broker outage fences every master after one
    /// lease.
    pub failsafe: bool,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            automatic: true,
            detect_after_ms: 1200,
            drain_timeout_ms: 5000,
            max_lag_s: 30.0,
            flap_window_s: 600,
            lease_margin_ms: 400,
            semi_sync_timeout_ms: 5000,
            fence_command: None,
            fence_timeout_ms: 10_000,
            failsafe: true,
        }
    }
}

/// Where replication accounts may log in from (see `replication_accounts_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountsFrom {
    ReplicaAddress,
    Any,
}

#[derive(Debug, Clone)]
pub struct FailoverSettings {
    pub automatic: bool,
    pub detect_after: Duration,
    pub drain_timeout: Duration,
    pub max_lag_s: f64,
    pub flap_window: Duration,
    pub lease_margin: Duration,
    pub semi_sync_timeout: Duration,
    pub fence: Option<crate::fence::FenceCommand>,
    pub failsafe: bool,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        ConductorConfig {
            name: "conductor".into(),
            broker_uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            broker_other_uris: Vec::new(),
            broker_ca_file: None,
            agent_queue_type: tandem_transport::QueueType::Classic,
            listen: "127.0.0.1:8470".into(),
            data_dir: "/var/lib/tandem".into(),
            store: StoreConfig::default(),
            command_timeout_ms: 15_000,
            long_command_timeout_s: 6 * 3600,
            backup_keep: 7,
            seed_backup_max_age_s: 86_400,
            failpoint: None,
            failover: FailoverConfig::default(),
            agent_users: AgentUsersConfig::default(),
            replication_accounts_from: "replica_address".into(),
            tls_cert_file: None,
            tls_key_file: None,
            zones: Vec::new(),
            dr_profiles: Vec::new(),
            provisioner: ProvisionerConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTPS for the API, when configured.
    pub api_tls: Option<crate::api_tls::ApiTls>,
    pub replication_accounts_from: AccountsFrom,
    /// Per-agent broker users, when configured.
    pub agent_users: Option<crate::broker_users::BrokerUsers>,
    pub name: String,
    pub broker_uri: String,
    pub broker_other_uris: Vec<String>,
    /// The private CA for `amqps` (PEM), read from `broker_ca_file`.
    pub broker_ca_pem: Option<String>,
    pub agent_queue_type: tandem_transport::QueueType,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreSettings,
    pub command_timeout: Duration,
    pub long_command_timeout: Duration,
    pub backup_keep: usize,
    pub seed_backup_max_age: Duration,
    pub failpoint: Option<crate::failpoint::Failpoint>,
    pub failover: FailoverSettings,
    pub zones: crate::zones::Zones,
    pub provisioner: Option<crate::provisioner::Provisioner>,
}

impl ConductorConfig {
    pub fn load(path: Option<&Path>) -> Result<ConductorConfig> {
        let mut figment = Figment::from(Serialized::defaults(ConductorConfig::default()));
        match path {
            Some(p) => {
                anyhow::ensure!(
                    p.exists(),
                    "configuration file {} does not exist",
                    p.display()
                );
                figment = figment.merge(Toml::file(p));
            }
            None if Path::new(DEFAULT_PATH).exists() => {
                figment = figment.merge(Toml::file(DEFAULT_PATH))
            }
            None => {}
        }
        figment
            .merge(Env::prefixed("TANDEM_CONDUCTOR_").split("__"))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid conductor configuration: {e}"))
    }

    pub fn validate(self) -> Result<Settings> {
        let listen = self
            .listen
            .parse()
            .with_context(|| format!("field `listen` ({:?}) is not host:port", self.listen))?;
        anyhow::ensure!(
            self.long_command_timeout_s >= 1,
            "field `long_command_timeout_s` is 0; it must be at least 1"
        );
        anyhow::ensure!(
            self.command_timeout_ms >= 100,
            "field `command_timeout_ms` is {}; it must be at least 100",
            self.command_timeout_ms
        );
        let failpoint = self
            .failpoint
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| anyhow::anyhow!("field `failpoint`: {e}"))?;
        let f = &self.failover;
        anyhow::ensure!(
            f.detect_after_ms >= 200,
            "field `failover.detect_after_ms` is {}; it must be at least 200",
            f.detect_after_ms
        );
        anyhow::ensure!(
            f.drain_timeout_ms >= 100,
            "field `failover.drain_timeout_ms` is {}; it must be at least 100",
            f.drain_timeout_ms
        );
        anyhow::ensure!(
            f.max_lag_s.is_finite() && f.max_lag_s > 0.0,
            "field `failover.max_lag_s` is {}; it must be a positive number of seconds",
            f.max_lag_s
        );
        let fence = match &f.fence_command {
            None => None,
            Some(path) => {
                executable(path, "failover.fence_command")?;
                anyhow::ensure!(
                    f.fence_timeout_ms >= 100,
                    "field `failover.fence_timeout_ms` is {}; it must be at least 100",
                    f.fence_timeout_ms
                );
                Some(crate::fence::FenceCommand {
                    program: path.clone(),
                    timeout: Duration::from_millis(f.fence_timeout_ms),
                })
            }
        };
        let failover = FailoverSettings {
            fence,
            automatic: f.automatic,
            detect_after: Duration::from_millis(f.detect_after_ms),
            drain_timeout: Duration::from_millis(f.drain_timeout_ms),
            max_lag_s: f.max_lag_s,
            flap_window: Duration::from_secs(f.flap_window_s),
            lease_margin: Duration::from_millis(f.lease_margin_ms),
            semi_sync_timeout: Duration::from_millis(f.semi_sync_timeout_ms.max(1)),
            failsafe: f.failsafe,
        };
        let agent_users = self
            .agent_users
            .management_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|url| {
                crate::broker_users::BrokerUsers::new(
                    url,
                    &self.broker_uri,
                    &self.agent_users.prefix,
                )
            })
            .transpose()
            .map_err(|e| anyhow::anyhow!("field `agent_users.management_url`: {e}"))?;
        let replication_accounts_from = match self.replication_accounts_from.as_str() {
            "replica_address" => AccountsFrom::ReplicaAddress,
            "any" => AccountsFrom::Any,
            other => anyhow::bail!(
                "field `replication_accounts_from` is {other:?}; it must be \"replica_address\" \
                 or \"any\""
            ),
        };
        let api_tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::api_tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!(
                "fields `tls_cert_file` and `tls_key_file` go together; set both or neither"
            ),
        };
        let broker_ca_pem = self
            .broker_ca_file
            .as_deref()
            .map(|path| tandem_transport::read_ca_file(path, "broker_ca_file"))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let zones = crate::zones::Zones::validate(&self.zones, &self.dr_profiles)?;
        let provisioner = crate::provisioner::Provisioner::validate(&self.provisioner)?;
        let store = match self.store.postgres_url.as_deref().filter(|u| !u.is_empty()) {
            None => StoreSettings::Sqlite,
            Some(url) => {
                anyhow::ensure!(
                    self.store.lease_ms >= 500,
                    "field `store.lease_ms` is {}; it must be at least 500",
                    self.store.lease_ms
                );
                url.parse::<tokio_postgres::Config>()
                    .map_err(|e| anyhow::anyhow!("field `store.postgres_url`: {e}"))?;
                StoreSettings::Postgres {
                    url: url.to_owned(),
                    lease: Duration::from_millis(self.store.lease_ms),
                }
            }
        };
        Ok(Settings {
            store,
            zones,
            provisioner,
            broker_ca_pem,
            api_tls,
            replication_accounts_from,
            agent_users,
            failover,
            failpoint,
            name: self.name,
            broker_uri: self.broker_uri,
            broker_other_uris: self.broker_other_uris,
            agent_queue_type: self.agent_queue_type,
            listen,
            data_dir: self.data_dir,
            command_timeout: Duration::from_millis(self.command_timeout_ms),
            long_command_timeout: Duration::from_secs(self.long_command_timeout_s),
            backup_keep: self.backup_keep.max(1),
            seed_backup_max_age: Duration::from_secs(self.seed_backup_max_age_s),
        })
    }
}

/// Refused unless `path` is an executable file, naming the `field` that gave it.
pub(crate) fn executable(path: &Path, field: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("field `{field}`: cannot use {}", path.display()))?;
    anyhow::ensure!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "field `{field}`: {} is not an executable file",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_ca_file_that_is_missing_or_no_certificate_names_the_field() {
        for path in ["/nonexistent/ca.pem", "/etc/hostname"] {
            let config = ConductorConfig {
                broker_ca_file: Some(path.into()),
                ..ConductorConfig::default()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("field `broker_ca_file`"), "{path}: {err}");
        }
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_given_and_a_bad_one_names_its_field() {
        assert_eq!(
            ConductorConfig::default().validate().unwrap().store,
            StoreSettings::Sqlite
        );
        let with = |url: &str, lease_ms| ConductorConfig {
            store: StoreConfig {
                postgres_url: Some(url.into()),
                lease_ms,
            },
            ..ConductorConfig::default()
        };
        assert_eq!(
            with("postgresql://tandem@db:5432/tandem", 3000)
                .validate()
                .unwrap()
                .store,
            StoreSettings::Postgres {
                url: "postgresql://tandem@db:5432/tandem".into(),
                lease: Duration::from_secs(3),
            }
        );
        let err = with("postgresql://[nonsense", 3000)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `store.postgres_url`"), "{err}");
        let err = with("postgresql://db/tandem", 100)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `store.lease_ms`"), "{err}");
    }
}
