//! One live connection (a session) and the supervisor that replaces it when it dies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connect, Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::rpc::Pending;
use crate::topology::{self, Declaration, REPLY_TO};
use crate::{TransportConfig, TransportError};

/// The longest one connection attempt (TCP, AMQP handshake, channels, declarations) may
/// take before it is abandoned and tried again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A live connection with the channels every user shares.
pub(crate) struct Session {
    pub connection: Connection,
    /// Confirm mode, consuming direct reply-to: every `call` publishes here, because
    /// RabbitMQ delivers direct replies only to the channel that sent the request.
    pub rpc_channel: Channel,
    /// No confirms: status reports, whose loss the next report repairs.
    pub plain_channel: Channel,
    pub generation: u64,
    /// Cancelled when the connection is lost; consumers watch it to re-subscribe.
    pub lost: CancellationToken,
}

impl Session {
    pub fn is_alive(&self) -> bool {
        !self.lost.is_cancelled() && self.connection.status().connected()
    }
}

/// A new channel on `connection`.
pub(crate) async fn open_channel(connection: &Connection) -> Result<Channel, TransportError> {
    connection
        .create_channel()
        .await
        .map_err(TransportError::amqp("channel.open"))
}

/// Consumes `queue` without acknowledgements: for replies to a caller that waits,
/// which a lost one repairs by timing out (status feeds are bounded instead:
/// `status::FeedBound`).
pub(crate) async fn consume_no_ack(
    channel: &Channel,
    queue: lapin::types::ShortString,
    what: &'static str,
) -> Result<lapin::Consumer, TransportError> {
    channel
        .basic_consume(
            queue,
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::amqp(what))
}

/// lapin keeps two buffers of 32 frames each; at RabbitMQ's default `frame_max` (128 KiB)
/// that is 8 MiB of zeroed memory per connection, for messages that are under 1 KiB. An
/// agent must stay small inside every VM, so ask for 16 KiB frames (1 MiB of buffers)
/// unless the URI says otherwise; larger messages are simply split into more frames.
fn with_small_frames(uri: &str) -> String {
    if uri.contains("frame_max=") {
        return uri.to_owned();
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}frame_max=16384")
}

pub(crate) struct Supervisor {
    config: TransportConfig,
    declarations: Mutex<Vec<Declaration>>,
    last_error: Mutex<Option<String>>,
    generation: AtomicU64,
    /// Which broker node the next connection goes to (see `TransportConfig::node_uri`).
    node: AtomicU64,
}

impl Supervisor {
    pub fn start(
        config: TransportConfig,
        pending: Pending,
        shutdown: CancellationToken,
    ) -> (Arc<Supervisor>, watch::Receiver<Option<Arc<Session>>>) {
        let (tx, rx) = watch::channel(None);
        let base = if config.declares {
            vec![Declaration::Base]
        } else {
            Vec::new()
        };
        let supervisor = Arc::new(Supervisor {
            config,
            declarations: Mutex::new(base),
            last_error: Mutex::new(None),
            generation: AtomicU64::new(0),
            node: AtomicU64::new(0),
        });
        tokio::spawn(supervisor.clone().run(tx, pending, shutdown));
        (supervisor, rx)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("poisoned").clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The broker node the next connection goes to (an index into the configuration's
    /// URIs).
    fn node(&self) -> usize {
        self.node.load(Ordering::SeqCst) as usize
    }

    fn next_node(&self) {
        self.node.fetch_add(1, Ordering::SeqCst);
    }

    fn record_error(&self, e: impl ToString) {
        *self.last_error.lock().expect("poisoned") = Some(e.to_string());
    }

    /// Declares `what` now on `session` and again on every later reconnection.
    pub async fn add_declaration(
        &self,
        session: &Session,
        what: Declaration,
    ) -> Result<(), TransportError> {
        if !self.config.declares {
            return Ok(());
        }
        topology::declare(
            &session.connection,
            &session.plain_channel,
            &self.config,
            &what,
        )
        .await?;
        let mut list = self.declarations.lock().expect("poisoned");
        if !list.contains(&what) {
            list.push(what);
        }
        Ok(())
    }

    async fn run(
        self: Arc<Self>,
        tx: watch::Sender<Option<Arc<Session>>>,
        pending: Pending,
        shutdown: CancellationToken,
    ) {
        let backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(self.config.max_reconnect_delay)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        while !shutdown.is_cancelled() {
            // Each attempt is bounded: a broker that refuses a connection mid-handshake
            // (a connection limit, a node starting) can leave it waiting forever.
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, self.open(&pending));
            let opened = tokio::select! {
                r = attempt => r.unwrap_or_else(|_| Err(TransportError::ConnectTimeout(format!(
                    "the broker did not complete a connection within {} s",
                    ATTEMPT_TIMEOUT.as_secs()
                )))),
                _ = shutdown.cancelled() => break,
            };
            match opened {
                Ok(session) => {
                    delays = backoff();
                    let session = Arc::new(session);
                    tracing::info!(
                        broker = %self.config.redacted_node_uri(self.node()),
                        generation = session.generation,
                        "connected to the broker"
                    );
                    tx.send_replace(Some(session.clone()));
                    tokio::select! {
                        _ = session.lost.cancelled() => {
                            tracing::warn!(
                                last_error = self.last_error().as_deref().unwrap_or("none"),
                                "lost the broker connection; reconnecting"
                            );
                            tx.send_replace(None);
                            // A cluster's next node first: this one may be down.
                            self.next_node();
                        }
                        _ = shutdown.cancelled() => {
                            tx.send_replace(None);
                            let _ = session.connection.close(200, "shutting down".into()).await;
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, broker = %self.config.redacted_node_uri(self.node()), "broker connection attempt failed");
                    self.record_error(&e);
                    self.next_node();
                    let delay = delays.next().unwrap_or(self.config.max_reconnect_delay);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tx.send_replace(None);
    }

    async fn open(self: &Arc<Self>, pending: &Pending) -> Result<Session, TransportError> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.config.connection_name.as_str().into());
        // TLS when the URI says amqps: the system's roots plus the configured CA.
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.config.ca_pem.clone(),
        };
        let runtime = lapin::runtime::default_runtime().map_err(TransportError::amqp("connect"))?;
        let connection = with_small_frames(self.config.node_uri(self.node()))
            .as_str()
            .connect_with_config(props, tls, runtime)
            .await
            .map_err(TransportError::amqp("connect"))?;
        let plain_channel = open_channel(&connection).await?;
        let declarations = self.declarations.lock().expect("poisoned").clone();
        for what in &declarations {
            topology::declare(&connection, &plain_channel, &self.config, what).await?;
        }
        let rpc_channel = open_channel(&connection).await?;
        rpc_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(TransportError::amqp("confirm.select"))?;
        let mut replies = consume_no_ack(
            &rpc_channel,
            REPLY_TO.into(),
            "basic.consume direct reply-to",
        )
        .await?;

        let lost = CancellationToken::new();
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;

        // Replies: hand each to the call waiting for it.
        {
            let lost = lost.clone();
            let pending = pending.clone();
            tokio::spawn(async move {
                while let Some(delivery) = replies.next().await {
                    match delivery {
                        Ok(d) => pending.deliver(&d.properties, d.data),
                        Err(_) => break,
                    }
                }
                lost.cancel();
            });
        }
        // Connection errors end the session; the supervisor then reconnects.
        {
            let lost = lost.clone();
            let mut events = connection.events_listener();
            let status = connection.status().clone();
            let supervisor = self.clone();
            tokio::spawn(async move {
                // The events stream reports protocol errors; the status poll catches a
                // connection that closed without one (a server-initiated close).
                let mut check = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(Event::Error(e)) => {
                                supervisor.record_error(&e);
                                break;
                            }
                            Some(_) => {}
                            None => break,
                        },
                        _ = check.tick() => if !status.connected() {
                            supervisor.record_error("the broker closed the connection");
                            break;
                        },
                        _ = lost.cancelled() => break,
                    }
                }
                lost.cancel();
            });
        }
        *self.last_error.lock().expect("poisoned") = None;
        Ok(Session {
            connection,
            rpc_channel,
            plain_channel,
            generation,
            lost,
        })
    }
}
