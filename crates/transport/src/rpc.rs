//! Request/reply: publish a command, wait for the reply with the same correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use tandem_proto::codec::{self, CONTENT_TYPE};
use tandem_proto::{Command, Envelope, Reply};

use crate::identity::PublicKey;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::topology::{kind, COMMAND_EXCHANGE, REPLY_TO};
use crate::{CallError, Transport, TransportError};

enum Attempt {
    Replied(Vec<u8>),
    Failed(CallError),
    ConnectionLost(lapin::Error),
}

/// Calls waiting for their reply, by correlation id. Whatever arrives under a call's id
/// is handed to the call, which checks the signature itself (in its own task, so that
/// checking spreads over the runtime's threads instead of queueing in the one task
/// that reads replies) and keeps waiting after a forgery: the reply-to address is in
/// every command, so anyone who can read commands on the broker could answer first.
#[derive(Clone, Default)]
pub(crate) struct Pending {
    waiting: Arc<Mutex<HashMap<String, mpsc::Sender<Candidate>>>>,
    dropped: Arc<AtomicU64>,
    forged: Arc<AtomicU64>,
}

/// Something that arrived under a call's correlation id.
type Candidate = (BasicProperties, Vec<u8>);

/// Candidates a call holds at once; more (a flood under one id) are dropped.
const CANDIDATES: usize = 8;

impl Pending {
    fn register(&self, key: String) -> (mpsc::Receiver<Candidate>, PendingGuard) {
        let (tx, rx) = mpsc::channel(CANDIDATES);
        self.waiting
            .lock()
            .expect("poisoned")
            .insert(key.clone(), tx);
        let guard = PendingGuard {
            pending: self.clone(),
            key,
        };
        (rx, guard)
    }

    /// Hands a reply to its caller. A reply whose caller has gone (its deadline passed,
    /// or it never existed) is dropped here: it can never be matched to another call,
    /// because every call has a fresh correlation id.
    pub fn deliver(&self, properties: &BasicProperties, data: Vec<u8>) {
        let correlation_id = properties.correlation_id().as_ref();
        let tx = correlation_id.and_then(|id| {
            self.waiting
                .lock()
                .expect("poisoned")
                .get(id.as_str())
                .cloned()
        });
        let Some(tx) = tx else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                correlation_id = correlation_id.map(|c| c.as_str()).unwrap_or("none"),
                "dropping a reply no call is waiting for (late or unknown)"
            );
            return;
        };
        if tx.try_send((properties.clone(), data)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Removes the waiting entry when the call ends, whichever way it ends.
struct PendingGuard {
    pending: Pending,
    key: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending
            .waiting
            .lock()
            .expect("poisoned")
            .remove(&self.key);
    }
}

impl Transport {
    /// Sends `command` to its target's queue and waits for the reply, for at most
    /// `timeout` in all (connecting, confirm, reply).
    ///
    /// When the connection dies before the reply arrives, the same message (same id) is
    /// published again on the next connection, within the deadline: the agent answers a
    /// repeat from its record, so this is safe, and it is what makes "the next request
    /// after a broker restart succeeds" true even for a request sent into the outage.
    ///
    /// The broker is told to drop the message if it is still queued at the deadline
    /// (per-message TTL), and the envelope's `expires_at` tells the agent the same, so a
    /// command nobody waits for any more is not run late.
    pub async fn call(
        &self,
        command: &Envelope<Command>,
        timeout: Duration,
    ) -> Result<Envelope<Reply>, CallError> {
        let deadline = Instant::now() + timeout;
        let target = &command.target;
        let bytes = codec::encode(command).map_err(TransportError::from)?;
        let key = command.message_id.to_string();
        let signer = match &self.inner.config.reply_keys {
            None => None,
            Some(book) => Some(
                book.key_of(target)
                    .ok_or_else(|| CallError::NotEnrolled(target.clone()))?,
            ),
        };
        let (mut reply, _guard) = self.inner.rpc.register(key.clone());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let session = match self.session_within(left).await {
                Ok(s) => s,
                Err(TransportError::NotConnected { .. }) => {
                    return Err(CallError::TimedOut {
                        instance: target.clone(),
                        waited: timeout,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            match self
                .publish_and_wait(
                    &session,
                    target,
                    &key,
                    &bytes,
                    (deadline, timeout),
                    (&mut reply, signer.as_ref()),
                )
                .await
            {
                Attempt::Replied(data) => {
                    return codec::decode::<Envelope<Reply>>(&data).map_err(|source| {
                        CallError::BadReply {
                            instance: target.clone(),
                            source,
                        }
                    })
                }
                Attempt::Failed(e) => return Err(e),
                Attempt::ConnectionLost(e) => {
                    tracing::debug!(
                        message_id = %key,
                        error = %e,
                        "connection lost during a call; re-sending on the next connection"
                    );
                    session.lost.cancel();
                }
            }
        }
    }

    async fn publish_and_wait(
        &self,
        session: &crate::session::Session,
        target: &tandem_proto::InstanceId,
        key: &str,
        bytes: &[u8],
        (deadline, timeout): (Instant, Duration),
        (reply, signer): (&mut mpsc::Receiver<Candidate>, Option<&PublicKey>),
    ) -> Attempt {
        let timed_out = || {
            Attempt::Failed(CallError::TimedOut {
                instance: target.clone(),
                waited: timeout,
            })
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let properties = BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(key.into())
            .with_message_id(key.into())
            .with_content_type(CONTENT_TYPE.into())
            .with_type(kind::COMMAND.into())
            .with_delivery_mode(2)
            .with_expiration(left.as_millis().max(1).to_string().as_str().into())
            // Authenticated for the target's key, when this side knows it.
            .with_headers(crate::identity::authenticated_headers(
                self.inner.config.signing_key.as_deref(),
                crate::identity::Naming::KeyId,
                signer.copied().as_slice(),
                None,
                bytes,
            ));
        let confirm = match session
            .rpc_channel
            .basic_publish(
                COMMAND_EXCHANGE.into(),
                target.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                bytes,
                properties,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Attempt::ConnectionLost(e),
        };
        let confirmation = match tokio::time::timeout_at(deadline, confirm).await {
            Err(_) => return timed_out(),
            Ok(Err(e)) => return Attempt::ConnectionLost(e),
            Ok(Ok(c)) => c,
        };
        match confirmation {
            Confirmation::Ack(Some(_returned)) => {
                return Attempt::Failed(CallError::UnknownInstance(target.clone()))
            }
            Confirmation::Nack(_) => {
                // The broker could not take it. On a cluster that is a node's queue
                // client left behind by a lost node: the connection is made again (on
                // the next node) for the caller's re-send.
                session.lost.cancel();
                return Attempt::Failed(
                    TransportError::Nacked {
                        exchange: COMMAND_EXCHANGE.into(),
                        routing_key: target.to_string(),
                    }
                    .into(),
                );
            }
            Confirmation::Ack(None) | Confirmation::NotRequested => {}
        }
        let genuine = async {
            while let Some((properties, data)) = reply.recv().await {
                let Some(expected) = signer else {
                    return Some(data);
                };
                let genuine = self.inner.config.signing_key.as_deref().is_some_and(|me| {
                    crate::identity::authenticated_by(&properties, &data, me, expected)
                });
                if genuine {
                    return Some(data);
                }
                self.inner.rpc.forged.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    instance = %target,
                    key_id = crate::identity::header(&properties, crate::signing::KEY_HEADER)
                        .unwrap_or_else(|| "none".into()),
                    "dropping a reply not authenticated by the instance's enrolled key"
                );
            }
            None
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, genuine) => match r {
                Ok(Some(data)) => Attempt::Replied(data),
                // The sender is only dropped with the whole transport.
                Ok(None) => Attempt::Failed(TransportError::ShutDown.into()),
                Err(_) => timed_out(),
            },
            // Direct replies go to the channel that sent the request: once it is gone,
            // this attempt's reply can never arrive.
            _ = session.lost.cancelled() => Attempt::ConnectionLost(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
            )),
        }
    }

    /// How many replies arrived with no call waiting for them (late or unknown).
    pub fn dropped_replies(&self) -> u64 {
        self.inner.rpc.dropped.load(Ordering::Relaxed)
    }

    /// How many replies were dropped because the instance's key had not signed them.
    pub fn forged_replies(&self) -> u64 {
        self.inner.rpc.forged.load(Ordering::Relaxed)
    }
}
