//! The agent's configuration: TOML file, then `TANDEM_AGENT_*` environment overrides
//! (`__` separates nested keys: `TANDEM_AGENT_BROKER__URI`), then secrets read from the
//! `*_file` paths. Unknown fields are ignored and every field but the instance id has a
//! default, so an old agent reads a new configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use tandem_proto::InstanceId;

mod engine;
pub use engine::{EngineConfig, EngineSettings, MariadbConfig, PerEngine};

pub const DEFAULT_PATH: &str = "/etc/tandem/agent.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// This instance's id; required. Names the command queue: `[a-z0-9_-]{1,64}`.
    pub instance_id: String,
    /// The zone (availability zone) this VM runs in: `[a-z0-9_-]{1,64}`.
    pub zone: String,
    /// The physical host this VM runs on (its hypervisor host, Nova's `hostId`): the
    /// failure domain under the zone that placement rules by host are about. Unset:
    /// unknown, and a set whose rules need it says so.
    pub host_id: Option<String>,
    /// Labels for placement rules and operators (e.g. "ssd", "rack-7").
    pub tags: Vec<String>,
    /// Where the agent keeps its durable state (highest epoch, command results).
    pub state_dir: PathBuf,
    /// A status report every this many milliseconds (and at once on any change).
    pub status_interval_ms: u64,
    /// How often the engine is probed for liveness, in milliseconds.
    pub probe_interval_ms: u64,
    /// The master's lease, in milliseconds: a master whose agent has not reached the
    /// broker for this long sets its engine read-only on its own (renewed every third
    /// of it by a confirmed status report). Keep it below the conductor's failure
    /// detection time; the conductor never promotes before it has run out anyway.
    pub lease_ms: u64,
    /// The agent's scheduling priority (-20..19, lower runs first): its lease and its
    /// reports must keep running on a host whose CPU other work saturates. The systemd
    /// unit sets it too; 0 leaves the inherited one alone.
    pub nice: i32,
    /// The longest any command waits inside the agent (for a position, for a drain),
    /// whatever timeout it asks for, in milliseconds. Its deadline bounds it too.
    pub max_wait_ms: u64,
    /// A command whose deadline lies further out than this many seconds is refused (the
    /// conductor gives every command one within its own timeouts): nothing can sit in
    /// the queue, or wait, for longer.
    pub max_deadline_s: u64,
    /// The longest a long command (a backup, a restore, a seeding) may run, in seconds,
    /// whatever time limit it carries: then it is stopped, cleaned up, and fails saying so.
    pub max_operation_s: u64,
    /// A long command whose bytes stop moving for this many seconds (a child process
    /// stopped or stuck, a peer gone quiet) is stopped and fails saying so.
    pub stall_limit_s: u64,
    /// For crash tests only: the agent aborts as it starts running a command of this
    /// name (`set_writable`…), as a command that crashes the agent would.
    pub crash_on_command: Option<String>,
    /// At most this many commands wait at once (for a position, a drain, or their turn
    /// at the engine); more are refused as busy (retryable), so questions (ping, status)
    /// are always answered.
    pub max_waiting: usize,
    pub broker: BrokerConfig,
    pub engine: EngineConfig,
    pub backup_store: BackupStoreConfig,
    pub seed: SeedConfig,
}

/// Where backups are kept. One store per deployment: every agent of a replica set must
/// reach the same one for a replica to be seeded from another server's backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupStoreConfig {
    /// `local` (a directory; also an NFS mount), `swift` (OpenStack Swift) or `s3`.
    pub kind: String,
    /// `local`: the directory (default: `engine.backup_dir`). `swift`/`s3`: a prefix
    /// inside the container or bucket.
    pub path: Option<String>,
    /// Swift container or S3 bucket.
    pub container: Option<String>,
    /// Swift: the v1 auth URL (`http://proxy:8080/auth/v1.0`), user (`account:user`)
    /// and a file holding the key.
    pub swift_auth_url: Option<String>,
    pub swift_user: Option<String>,
    pub swift_key_file: Option<PathBuf>,
    /// S3: endpoint (empty for AWS), region, access key id and a file holding the secret.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key_file: Option<PathBuf>,
}

impl Default for BackupStoreConfig {
    fn default() -> Self {
        BackupStoreConfig {
            kind: "local".into(),
            path: None,
            container: None,
            swift_auth_url: None,
            swift_user: None,
            swift_key_file: None,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key_file: None,
        }
    }
}

/// The seeding listener: other agents pull a live copy of this server from here, each
/// connection presenting a one-time token the conductor issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SeedConfig {
    /// Address to listen on; port 0 picks a free one (advertised in status reports).
    pub listen: String,
    /// The host other agents connect to (default: `engine.host`). With TLS it must be
    /// a name (or IP address) in this agent's certificate.
    pub advertise_host: Option<String>,
    /// Mutual TLS for seeding (all three or none): this agent's certificate chain and
    /// key (PEM), used both to serve and to connect, and the CA every agent's
    /// certificate chains to.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for SeedConfig {
    fn default() -> Self {
        SeedConfig {
            listen: "0.0.0.0:0".into(),
            advertise_host: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
        }
    }
}

/// A validated backup store configuration, secrets loaded.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    Local {
        dir: PathBuf,
    },
    Swift {
        auth_url: String,
        user: String,
        key: tandem_proto::Secret,
        container: String,
        prefix: String,
    },
    S3 {
        endpoint: Option<String>,
        region: String,
        bucket: String,
        access_key_id: String,
        secret_access_key: tandem_proto::Secret,
        prefix: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    /// `amqp://host:port/vhost`; credentials may be given here or as user + password_file.
    pub uri: String,
    /// The other nodes of a RabbitMQ cluster, as `uri` names the first (credentials
    /// likewise): the agent connects to the next one when one is down.
    pub other_uris: Vec<String>,
    /// The broker user. With `password_file`, its password is read there; without, it
    /// is derived from the enrolment token: the conductor made this user for this agent
    /// alone (`broker.agent_users` in its configuration), with the least privilege, and
    /// the agent then declares nothing on the broker.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// `classic` (default) or `quorum`: the type of this agent's command queue.
    /// Classic is lighter on a single broker (README, "Broker sizing"); quorum is
    /// replicated across a RabbitMQ cluster's nodes.
    pub queue_type: tandem_transport::QueueType,
    /// How often a command may be delivered without being answered before the agent
    /// refuses it (a command that stops the agent each time it runs).
    pub delivery_limit: u32,
    pub prefetch: u16,
    /// The conductor public keys (64 hex digits each, `tandem-conductor public-key`)
    /// whose signed commands this agent obeys; a list, so a key can be rotated.
    /// Required: anything not signed by one of them is dead-lettered unread.
    pub conductor_keys: Vec<String>,
    /// The one-time enrolment token the operator got from `tandem instance enroll ID`
    /// (or a file holding it): the agent presents a proof made with it until the
    /// conductor has pinned this agent's key. Not needed when the operator pinned the
    /// key itself (`tandem instance enroll ID --key $(tandem-agent public-key)`).
    pub enrolment_token: Option<String>,
    pub enrolment_token_file: Option<PathBuf>,
    /// For an `amqps://` URI: the CA (PEM) that signed the broker's certificate, when it
    /// is a private one (the system's roots are trusted as well). The certificate must
    /// name the host in the URI.
    pub ca_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            instance_id: String::new(),
            zone: "default".into(),
            host_id: None,
            tags: Vec::new(),
            state_dir: "/var/lib/tandem-agent".into(),
            status_interval_ms: 1000,
            probe_interval_ms: 200,
            lease_ms: 1000,
            nice: -10,
            max_wait_ms: 60_000,
            max_deadline_s: 600,
            max_operation_s: 6 * 3600,
            stall_limit_s: 120,
            crash_on_command: None,
            max_waiting: 8,
            broker: BrokerConfig::default(),
            engine: EngineConfig::default(),
            backup_store: BackupStoreConfig::default(),
            seed: SeedConfig::default(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            uri: "amqp://127.0.0.1:5672/%2f".into(),
            other_uris: Vec::new(),
            user: None,
            password_file: None,
            queue_type: tandem_transport::QueueType::Classic,
            delivery_limit: 5,
            prefetch: 16,
            conductor_keys: Vec::new(),
            enrolment_token: None,
            enrolment_token_file: None,
            ca_file: None,
        }
    }
}

/// The configuration after validation: typed, secrets loaded.
#[derive(Debug, Clone)]
pub struct Settings {
    pub instance_id: InstanceId,
    pub zone: String,
    pub host_id: Option<tandem_proto::HostId>,
    pub tags: Vec<String>,
    pub state_dir: PathBuf,
    pub status_interval: Duration,
    pub probe_interval: Duration,
    pub lease: Duration,
    pub nice: i32,
    pub max_wait: Duration,
    pub max_deadline: Duration,
    pub max_operation: Duration,
    pub stall_limit: Duration,
    pub max_waiting: usize,
    pub trusted_keys: tandem_transport::signing::TrustedKeys,
    pub enrolment_token: Option<String>,
    pub broker_uri: String,
    /// The other nodes of the broker's cluster, with the same credentials.
    pub broker_other_uris: Vec<String>,
    /// The private CA for `amqps` (PEM), read from `broker.ca_file`.
    pub broker_ca_pem: Option<String>,
    /// False for a least-privilege broker user (see `BrokerConfig::user`).
    pub broker_declares: bool,
    pub queue_type: tandem_transport::QueueType,
    pub delivery_limit: u32,
    pub prefetch: u16,
    pub crash_on_command: Option<String>,
    pub engine: EngineSettings,
    pub backup_store: StoreSettings,
    pub seed_listen: std::net::SocketAddr,
    pub seed_advertise_host: String,
    pub seed_tls: Option<crate::seed::SeedTls>,
}

impl AgentConfig {
    /// Reads `path` (a missing file is an error only when it was named explicitly),
    /// then the environment.
    pub fn load(path: Option<&Path>) -> Result<AgentConfig> {
        let mut figment = Figment::from(Serialized::defaults(AgentConfig::default()));
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
                figment = figment.merge(Toml::file(DEFAULT_PATH));
            }
            None => {}
        }
        figment = figment.merge(Env::prefixed("TANDEM_AGENT_").split("__"));
        figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid agent configuration: {e}"))
    }

    pub fn validate(self) -> Result<Settings> {
        let instance_id = InstanceId::new(self.instance_id.clone())
            .with_context(|| "field `instance_id` (env TANDEM_AGENT_INSTANCE_ID) is invalid")?;
        anyhow::ensure!(
            self.status_interval_ms >= 50,
            "field `status_interval_ms` is {}; it must be at least 50",
            self.status_interval_ms
        );
        anyhow::ensure!(
            self.probe_interval_ms >= 10 && self.probe_interval_ms <= self.status_interval_ms,
            "field `probe_interval_ms` is {}; it must be between 10 and status_interval_ms ({})",
            self.probe_interval_ms,
            self.status_interval_ms
        );
        anyhow::ensure!(
            self.lease_ms >= 300 && self.lease_ms >= 3 * self.probe_interval_ms,
            "field `lease_ms` is {}; it must be at least 300 and three probe intervals ({})",
            self.lease_ms,
            3 * self.probe_interval_ms
        );
        anyhow::ensure!(
            self.max_waiting >= 1 && self.max_waiting < usize::from(self.broker.prefetch.max(2)),
            "field `max_waiting` is {}; it must be at least 1 and below `broker.prefetch` ({}), \
             so that questions still find a free slot",
            self.max_waiting,
            self.broker.prefetch
        );
        anyhow::ensure!(
            self.max_deadline_s >= 60,
            "field `max_deadline_s` is {}; it must be at least 60 (the conductor's command \
             timeouts fit in it)",
            self.max_deadline_s
        );
        anyhow::ensure!(
            self.max_operation_s >= 1 && self.stall_limit_s >= 1,
            "fields `max_operation_s` ({}) and `stall_limit_s` ({}) must be at least 1",
            self.max_operation_s,
            self.stall_limit_s
        );
        anyhow::ensure!(
            (-20..=19).contains(&self.nice),
            "field `nice` is {}; it must be between -20 and 19",
            self.nice
        );
        anyhow::ensure!(
            !self.broker.conductor_keys.is_empty(),
            "field `broker.conductor_keys` is empty: this agent would obey anyone who can \
             publish to the broker; set it to the conductor's public key (`tandem-conductor \
             public-key` prints it)"
        );
        let trusted_keys =
            tandem_transport::signing::TrustedKeys::from_hex(&self.broker.conductor_keys)
                .map_err(|e| anyhow::anyhow!("field `broker.conductor_keys`: {e}"))?;
        let queue_type = self.broker.queue_type;
        let enrolment_token = match (
            &self.broker.enrolment_token,
            &self.broker.enrolment_token_file,
        ) {
            (Some(_), Some(_)) => anyhow::bail!(
                "fields `broker.enrolment_token` and `broker.enrolment_token_file` are both \
                 set; keep one"
            ),
            (Some(t), None) => Some(t.trim().to_owned()),
            (None, Some(f)) => Some(read_secret(f, "broker.enrolment_token_file")?),
            (None, None) => None,
        };
        let mut broker_declares = true;
        let credentials = match (&self.broker.user, &self.broker.password_file) {
            (Some(user), Some(file)) => Some((user, read_secret(file, "broker.password_file")?)),
            (Some(user), None) => {
                let token = enrolment_token.as_deref().with_context(|| {
                    "field `broker.user` is set without `broker.password_file`: the password \
                     then derives from the enrolment token, and none is set \
                     (`broker.enrolment_token` or `broker.enrolment_token_file`)"
                })?;
                broker_declares = false;
                Some((user, tandem_transport::identity::broker_password(token)))
            }
            (None, Some(_)) => {
                anyhow::bail!("field `broker.password_file` is set without `broker.user`; set both")
            }
            (None, None) => None,
        };
        let with_user = |uri: &String| match &credentials {
            Some((user, password)) => with_credentials(uri, user, password),
            None => Ok(uri.clone()),
        };
        let broker_uri = with_user(&self.broker.uri)?;
        let broker_other_uris = self
            .broker
            .other_uris
            .iter()
            .map(with_user)
            .collect::<Result<Vec<_>>>()?;
        let broker_ca_pem = self
            .broker
            .ca_file
            .as_deref()
            .map(|path| tandem_transport::read_ca_file(path, "broker.ca_file"))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let backup_store = self.backup_store.validate(&self.engine)?;
        let seed_listen = self.seed.listen.parse().with_context(|| {
            format!(
                "field `seed.listen` is {:?}; it must be an address like 0.0.0.0:3307",
                self.seed.listen
            )
        })?;
        let engine = self.engine.validate()?;
        let seed_advertise_host = self
            .seed
            .advertise_host
            .clone()
            .unwrap_or_else(|| engine.host.clone());
        let seed_tls = match (
            &self.seed.tls_cert_file,
            &self.seed.tls_key_file,
            &self.seed.tls_ca_file,
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(crate::seed::SeedTls::load(cert, key, ca)?),
            _ => anyhow::bail!(
                "fields `seed.tls_cert_file`, `seed.tls_key_file` and `seed.tls_ca_file` go \
                 together; set all three or none"
            ),
        };
        Ok(Settings {
            seed_tls,
            backup_store,
            seed_listen,
            seed_advertise_host,
            instance_id,
            zone: tandem_proto::ZoneId::new(self.zone)
                .context("field `zone`")?
                .to_string(),
            host_id: self
                .host_id
                .map(tandem_proto::HostId::new)
                .transpose()
                .context("field `host_id`")?,
            tags: self.tags,
            state_dir: self.state_dir,
            status_interval: Duration::from_millis(self.status_interval_ms),
            probe_interval: Duration::from_millis(self.probe_interval_ms),
            lease: Duration::from_millis(self.lease_ms),
            nice: self.nice,
            max_wait: Duration::from_millis(self.max_wait_ms),
            max_deadline: Duration::from_secs(self.max_deadline_s),
            max_operation: Duration::from_secs(self.max_operation_s),
            stall_limit: Duration::from_secs(self.stall_limit_s),
            max_waiting: self.max_waiting,
            trusted_keys,
            enrolment_token,
            broker_uri,
            broker_other_uris,
            broker_ca_pem,
            broker_declares,
            queue_type,
            delivery_limit: self.broker.delivery_limit.max(1),
            prefetch: self.broker.prefetch.max(1),
            crash_on_command: self.crash_on_command.clone(),
            engine,
        })
    }
}

impl BackupStoreConfig {
    fn validate(&self, engine: &EngineConfig) -> Result<StoreSettings> {
        let need = |v: &Option<String>, field: &str| -> Result<String> {
            v.clone().filter(|s| !s.is_empty()).with_context(|| {
                format!(
                    "field `backup_store.{field}` is required for a {} store",
                    self.kind
                )
            })
        };
        let prefix = self.path.clone().unwrap_or_default();
        Ok(match self.kind.as_str() {
            "local" => StoreSettings::Local {
                dir: self
                    .path
                    .as_ref()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| engine.backup_dir.clone()),
            },
            "swift" => StoreSettings::Swift {
                auth_url: need(&self.swift_auth_url, "swift_auth_url")?,
                user: need(&self.swift_user, "swift_user")?,
                key: tandem_proto::Secret::new(read_secret(
                    self.swift_key_file
                        .as_deref()
                        .context("field `backup_store.swift_key_file` is required for a swift store")?,
                    "backup_store.swift_key_file",
                )?),
                container: need(&self.container, "container")?,
                prefix,
            },
            "s3" => StoreSettings::S3 {
                endpoint: self.s3_endpoint.clone().filter(|s| !s.is_empty()),
                region: self.s3_region.clone().unwrap_or_else(|| "us-east-1".into()),
                bucket: need(&self.container, "container")?,
                access_key_id: need(&self.s3_access_key_id, "s3_access_key_id")?,
                secret_access_key: tandem_proto::Secret::new(read_secret(
                    self.s3_secret_access_key_file.as_deref().context(
                        "field `backup_store.s3_secret_access_key_file` is required for an s3 store",
                    )?,
                    "backup_store.s3_secret_access_key_file",
                )?),
                prefix,
            },
            other => anyhow::bail!(
                "field `backup_store.kind` is {other:?}; it must be \"local\", \"swift\" or \"s3\""
            ),
        })
    }
}

fn read_secret(path: &Path, field: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("field `{field}`: cannot read {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

fn with_credentials(uri: &str, user: &str, password: &str) -> Result<String> {
    let (scheme, rest) = uri.split_once("://").with_context(|| {
        format!("field `broker.uri` ({uri:?}) has no scheme; use amqp://host:port/vhost")
    })?;
    anyhow::ensure!(
        !rest.contains('@'),
        "field `broker.uri` already holds credentials; drop them or drop broker.user"
    );
    Ok(format!(
        "{scheme}://{}:{}@{rest}",
        percent_encode(user),
        percent_encode(password)
    ))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests;
