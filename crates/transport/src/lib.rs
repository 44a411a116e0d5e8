//! Tandem's AMQP transport: the only crate that imports lapin.
//!
//! * [`Transport::connect`] opens a connection and keeps it: a supervisor task rebuilds
//!   the connection with exponential backoff whenever the broker drops it, re-declares
//!   the topology, and hands the new [`Session`](session) to every consumer, which
//!   re-subscribes. lapin's own recovery is deliberately not used: its API changes
//!   between minor versions and a message in flight during an outage is not re-sent
//!   anyway, so callers must retry by message id whatever we do.
//! * [`Transport::call`] is request/reply over RabbitMQ's direct reply-to, with
//!   publisher confirms and `mandatory`, so a command to an instance without a queue
//!   fails at once. Replies are matched by correlation id; a late one is dropped.
//! * [`Transport::serve_commands`] consumes an agent's queue with manual acks and a
//!   prefetch bound; a message that cannot be decoded is dead-lettered, never retried.
//! * [`Transport::publish_status`] / [`Transport::subscribe_status`] carry status reports
//!   on a topic exchange.

mod config;
mod error;
pub mod identity;
pub mod keyfile;
mod mac;
mod rpc;
pub mod sealing;
mod serve;
mod session;
pub mod signing;
mod status;
pub mod topology;

pub use config::{read_ca_file, QueueType, TransportConfig};
pub use error::{CallError, TransportError};
pub use serve::CommandHandler;
pub use status::{status_headers, status_properties, Backlog, FeedBound, Received, Subscription};

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use session::{Session, Supervisor};

/// A handle to the broker. Cheap to clone; every clone shares one connection.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    config: TransportConfig,
    /// Commands refused for their signature since start (dead-lettered).
    refused: std::sync::atomic::AtomicU64,
    /// Signatures of accepted commands, to refuse replays.
    seen: signing::Seen,
    sessions: watch::Receiver<Option<Arc<Session>>>,
    supervisor: Arc<Supervisor>,
    rpc: rpc::Pending,
    shutdown: CancellationToken,
}

impl Transport {
    /// Commands refused for their signature (unsigned, unknown key, forged) since start.
    pub fn refused_commands(&self) -> u64 {
        self.inner
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connects and starts the supervisor that keeps the connection alive until
    /// `shutdown` is cancelled. Waits for the first connection for at most
    /// `config.connect_timeout`, so a wrong address is a clear error at start-up
    /// instead of a silent retry loop.
    pub async fn connect(
        config: TransportConfig,
        shutdown: CancellationToken,
    ) -> Result<Transport, TransportError> {
        // Every node's URI is checked now: a bad one among a cluster's other nodes would
        // otherwise surface only when the first node is lost.
        for i in 0..=config.other_uris.len() {
            if let Err(reason) = config.node_uri(i).parse::<lapin::uri::AMQPUri>() {
                return Err(TransportError::BadUri {
                    uri: config.redacted_node_uri(i),
                    which: match i {
                        0 => "the broker's URI".into(),
                        k => format!("other URI {k}"),
                    },
                    reason,
                });
            }
        }
        let rpc = rpc::Pending::default();
        let (supervisor, sessions) =
            Supervisor::start(config.clone(), rpc.clone(), shutdown.clone());
        let transport = Transport {
            inner: Arc::new(Inner {
                refused: Default::default(),
                seen: signing::Seen::new(config.replay_window),
                config,
                sessions,
                supervisor,
                rpc,
                shutdown,
            }),
        };
        transport
            .session_within(transport.inner.config.connect_timeout)
            .await
            .map_err(|_| TransportError::NeverConnected {
                uri: transport.inner.config.redacted_uri(),
                waited: transport.inner.config.connect_timeout,
                last_error: transport.inner.supervisor.last_error(),
            })?;
        Ok(transport)
    }

    /// True while a connection to the broker is open.
    pub fn is_connected(&self) -> bool {
        self.inner
            .sessions
            .borrow()
            .as_ref()
            .is_some_and(|s| s.is_alive())
    }

    /// How many times the connection has been (re)established; 1 after the first connect.
    pub fn connection_generation(&self) -> u64 {
        self.inner.supervisor.generation()
    }

    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Waits until a live session exists, for at most `limit`.
    async fn session_within(
        &self,
        limit: std::time::Duration,
    ) -> Result<Arc<Session>, TransportError> {
        let mut rx = self.inner.sessions.clone();
        let wait = async {
            loop {
                if let Some(s) = rx.borrow_and_update().as_ref() {
                    if s.is_alive() {
                        return Ok(s.clone());
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(TransportError::ShutDown);
                }
            }
        };
        tokio::select! {
            r = wait => r,
            _ = self.inner.shutdown.cancelled() => Err(TransportError::ShutDown),
            _ = tokio::time::sleep(limit) => Err(TransportError::NotConnected {
                waited: limit,
                last_error: self.inner.supervisor.last_error(),
            }),
        }
    }
}
