//! A test harness playing the conductor: real `mariadbd` instances, their agents (the
//! real binary) and the real broker; commands go through the transport.
#![allow(dead_code, unused_imports)]

pub use std::time::{Duration, Instant};

pub use tandem_proto::{
    Command, CommandError, Envelope, Epoch, ErrorKind, Health, InstanceId, PairSide,
    ReplicationCredentials, ReplyBody, Role, Sender, SourceEndpoint, StatusReport,
};
pub use tandem_testkit::{AgentProcess, Broker, MariaDb, MariaDbOptions};
pub use tandem_transport::{Transport, TransportConfig};
pub use tokio_util::sync::CancellationToken;

mod copies;
pub use copies::*;

pub const AGENT: &str = env!("CARGO_BIN_EXE_tandem-agent");

pub fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

pub struct Node {
    pub db: MariaDb,
    pub agent: AgentProcess,
}

pub struct Harness {
    pub broker: Broker,
    pub client: Transport,
    pub nodes: Vec<Node>,
    shutdown: CancellationToken,
    _shutdown: tokio_util::sync::DropGuard,
}

impl Harness {
    pub async fn new(instances: &[&str]) -> Harness {
        Self::with_env(instances, &[]).await
    }

    /// Agents with extra `TANDEM_AGENT_*` settings (a shared backup store, say).
    pub async fn with_env(instances: &[&str], env: &[(String, String)]) -> Harness {
        Self::with_envs(instances, |_| env.to_vec()).await
    }

    /// Agents with settings of their own: `env(instance)`.
    pub async fn with_envs(
        instances: &[&str],
        env: impl Fn(&str) -> Vec<(String, String)>,
    ) -> Harness {
        let key = tandem_transport::signing::SigningKey::from_pkcs8(
            &tandem_testkit::conductor_key().pkcs8,
        )
        .unwrap();
        Self::build(instances, env, Some(std::sync::Arc::new(key))).await
    }

    /// Agents with settings of their own, and `small_disk(instance)` bytes free on the
    /// filesystem of the instance's data directory when given (see [`MariaDbOptions`]).
    pub async fn with_small_disks(
        instances: &[&str],
        env: impl Fn(&str) -> Vec<(String, String)>,
        small_disk: impl Fn(&str) -> Option<u64>,
    ) -> Harness {
        let key = tandem_transport::signing::SigningKey::from_pkcs8(
            &tandem_testkit::conductor_key().pkcs8,
        )
        .unwrap();
        Self::build_with(instances, env, small_disk, Some(std::sync::Arc::new(key))).await
    }

    /// Agents that obey only commands signed by `key`, which this harness signs with.
    pub async fn signed(
        instances: &[&str],
        key: std::sync::Arc<tandem_transport::signing::SigningKey>,
    ) -> Harness {
        let trusted = format!("[\"{}\"]", key.public_hex());
        Self::build(
            instances,
            |_| {
                vec![(
                    "TANDEM_AGENT_BROKER__CONDUCTOR_KEYS".into(),
                    trusted.clone(),
                )]
            },
            Some(key),
        )
        .await
    }

    /// Another client of the same broker, signing with `key` (or not at all): a
    /// stranger who can publish.
    pub async fn stranger(
        &self,
        key: Option<std::sync::Arc<tandem_transport::signing::SigningKey>>,
    ) -> Transport {
        let mut config = TransportConfig::new(self.broker.uri(), "stranger");
        config.signing_key = key;
        Transport::connect(config, self.shutdown.clone())
            .await
            .unwrap()
    }

    async fn build(
        instances: &[&str],
        env: impl Fn(&str) -> Vec<(String, String)>,
        signing: Option<std::sync::Arc<tandem_transport::signing::SigningKey>>,
    ) -> Harness {
        Self::build_with(instances, env, |_| None, signing).await
    }

    async fn build_with(
        instances: &[&str],
        env: impl Fn(&str) -> Vec<(String, String)>,
        small_disk: impl Fn(&str) -> Option<u64>,
        signing: Option<std::sync::Arc<tandem_transport::signing::SigningKey>>,
    ) -> Harness {
        tandem_testkit::init_tracing();
        let broker = Broker::new().unwrap();
        let shutdown = CancellationToken::new();
        let mut config = TransportConfig::new(broker.uri(), "test-conductor");
        config.signing_key = signing;
        // As the conductor pins them: commands are authenticated for each agent's key,
        // and replies believed only from it.
        let keys = std::sync::Arc::new(tandem_testkit::AgentKeys::default());
        config.reply_keys = Some(keys.clone());
        let client = Transport::connect(config, shutdown.clone()).await.unwrap();
        let mut nodes = Vec::new();
        for name in instances {
            let db = MariaDb::start(MariaDbOptions {
                server_id: tandem_agent::server_id_for(&id(name)),
                small_disk: small_disk(name),
                ..Default::default()
            })
            .unwrap();
            let agent = AgentProcess::start_mariadb_with(
                AGENT.as_ref(),
                name,
                "zone-a",
                broker.uri(),
                &db,
                &env(name),
            )
            .unwrap();
            keys.add(name, agent.key().unwrap().public_key());
            nodes.push(Node { db, agent });
        }
        let h = Harness {
            broker,
            client,
            nodes,
            shutdown: shutdown.clone(),
            _shutdown: shutdown.drop_guard(),
        };
        for name in instances {
            h.wait_ready(name).await;
        }
        h
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.agent.instance == name)
            .unwrap()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.agent.instance == name)
            .unwrap()
    }

    pub async fn wait_ready(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let env = envelope(name, Epoch::ZERO, Command::Ping);
            if self.client.call(&env, Duration::from_secs(2)).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent {name} never answered; its log:\n{}",
                self.node(name).agent.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `env` as the conductor sends every try of a command: the same message id,
    /// stamped (and so signed) anew, since a byte-for-byte copy is refused as a replay.
    pub async fn send(&self, env: &Envelope<Command>) -> Result<ReplyBody, CommandError> {
        let mut env = env.clone();
        if let Some(deadline) = env.expires_at {
            let lifetime = deadline.0.saturating_sub(env.issued_at.0);
            env.issued_at = tandem_proto::Timestamp::now();
            env.expires_at = Some(tandem_proto::Timestamp(env.issued_at.0 + lifetime));
        }
        let env = &env;
        let reply = self
            .client
            .call(env, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{} to {}: {e}", env.body.name(), env.target));
        reply.body.into_result()
    }

    pub async fn cmd(
        &self,
        target: &str,
        epoch: u64,
        body: Command,
    ) -> Result<ReplyBody, CommandError> {
        self.send(&envelope(target, Epoch::new(epoch), body)).await
    }

    pub async fn ok(&self, target: &str, epoch: u64, body: Command) -> ReplyBody {
        let name = body.name();
        self.cmd(target, epoch, body)
            .await
            .unwrap_or_else(|e| panic!("{name} on {target}: {e}"))
    }

    pub async fn status(&self, target: &str) -> StatusReport {
        match self.ok(target, 0, Command::GetStatus).await {
            ReplyBody::Status { report } => *report,
            other => panic!("{other:?}"),
        }
    }

    pub fn endpoint(&self, name: &str) -> SourceEndpoint {
        SourceEndpoint {
            instance: id(name),
            host: "127.0.0.1".into(),
            port: self.node(name).db.port(),
        }
    }

    /// The key of `name`'s agent (what its secrets are sealed to); a fresh key for a
    /// name with no agent here.
    pub fn key_of(&self, name: &str) -> tandem_proto::AgentKey {
        let key = match self.nodes.iter().find(|n| n.agent.instance == name) {
            Some(n) => n.agent.key().unwrap(),
            None => tandem_transport::signing::SigningKey::from_pkcs8(
                &tandem_transport::signing::SigningKey::generate().unwrap(),
            )
            .unwrap(),
        };
        key.public_key().into()
    }

    /// `secret` sealed to `name`'s agent, as the conductor would send it.
    pub fn seal(&self, name: &str, secret: &str) -> tandem_proto::Sealed {
        tandem_transport::identity::PublicKey::from(self.key_of(name))
            .seal(&tandem_proto::Secret::new(secret))
            .unwrap()
    }

    /// Makes `master` a writable master and `replica` its replica.
    pub async fn attach(&self, master: &str, replica: &str, epoch: u64) -> ReplicationCredentials {
        self.ok(master, epoch, Command::EnableAsMaster { semi_sync: None })
            .await;
        self.ok(master, epoch, Command::SetWritable).await;
        let credentials = match self
            .ok(
                master,
                epoch,
                Command::CreateReplicationUser {
                    replica: id(replica),
                    from: None,
                    seal_to: self.key_of(replica),
                },
            )
            .await
        {
            ReplyBody::Credentials { credentials } => credentials,
            other => panic!("{other:?}"),
        };
        self.ok(
            replica,
            epoch,
            Command::AttachToSource {
                source: self.endpoint(master),
                credentials: credentials.clone(),
                position: None,
                semi_sync: false,
                delay_s: 0,
                paused: None,
                filter: None,
                peer: false,
            },
        )
        .await;
        credentials
    }
}

/// A client configuration that authenticates its commands to `agents` as the test
/// conductors do.
pub fn signed_config(uri: &str, name: &str, agents: &[&AgentProcess]) -> TransportConfig {
    let mut config = TransportConfig::new(uri, name);
    config.signing_key = Some(std::sync::Arc::new(
        tandem_transport::signing::SigningKey::from_pkcs8(&tandem_testkit::conductor_key().pkcs8)
            .unwrap(),
    ));
    let keys = tandem_testkit::AgentKeys::default();
    for a in agents {
        keys.add(&a.instance, a.key().unwrap().public_key());
    }
    config.reply_keys = Some(std::sync::Arc::new(keys));
    config
}

pub fn envelope(target: &str, epoch: Epoch, body: Command) -> Envelope<Command> {
    Envelope::new(
        Sender::Conductor {
            name: "test".into(),
        },
        id(target),
        epoch,
        body,
    )
    .expires_in(Duration::from_secs(30))
}

/// Polls `f` every 50 ms until it returns Some, for at most `limit`.
pub async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
