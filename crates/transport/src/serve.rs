//! The agent side: consume one instance's command queue and answer each command.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tandem_proto::codec::{self, CONTENT_TYPE};
use tandem_proto::{Command, Envelope, InstanceId, Reply};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::session::Session;
use crate::topology::{agent_queue, kind, Declaration, COMMAND_EXCHANGE};
use crate::{Transport, TransportError};

/// What an agent does with a command. The transport decodes, calls this, publishes the
/// reply and acknowledges the delivery, in that order: a crash in between leaves the
/// message unacknowledged, so the broker redelivers it (with `redelivered` set) and the
/// handler must answer a repeat from what it recorded.
pub trait CommandHandler: Send + Sync + 'static {
    fn handle(
        &self,
        command: Envelope<Command>,
        redelivered: bool,
    ) -> impl Future<Output = Envelope<Reply>> + Send;
}

/// How long in-flight commands may run after shutdown before they are abandoned
/// (unacknowledged, so the broker redelivers them to the next agent process).
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

impl Transport {
    /// Declares `instance`'s command queue (now and after every reconnection).
    pub async fn declare_agent_queue(&self, instance: &InstanceId) -> Result<(), TransportError> {
        let session = self
            .session_within(self.inner.config.connect_timeout)
            .await?;
        self.inner
            .supervisor
            .add_declaration(&session, Declaration::AgentQueue(instance.clone()))
            .await
    }

    /// Declares `instance`'s command queue (with the exchanges it hangs off) once, on
    /// the current connection: the conductor does this for an agent whose broker user
    /// may not declare anything. The queue is durable; it outlives this connection.
    pub async fn ensure_agent_queue(&self, instance: &InstanceId) -> Result<(), TransportError> {
        let session = self
            .session_within(self.inner.config.connect_timeout)
            .await?;
        for what in [Declaration::Base, Declaration::AgentQueue(instance.clone())] {
            crate::topology::declare(
                &session.connection,
                &session.plain_channel,
                &self.inner.config,
                &what,
            )
            .await?;
        }
        Ok(())
    }

    /// Serves `instance`'s command queue until `stop` (or the transport's shutdown),
    /// re-subscribing after every reconnection. Returns once intake has stopped and
    /// in-flight commands finished (or [`DRAIN_DEADLINE`] passed); the connection stays
    /// open, so the caller can still publish a last status report.
    pub async fn serve_commands<H: CommandHandler>(
        &self,
        instance: &InstanceId,
        handler: Arc<H>,
        stop: &CancellationToken,
    ) -> Result<(), TransportError> {
        let stop = {
            // Either token stops intake.
            let both = stop.child_token();
            let transport_down = self.inner.shutdown.clone();
            let b = both.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = transport_down.cancelled() => b.cancel(),
                    _ = b.cancelled() => {}
                }
            });
            both
        };
        self.declare_agent_queue(instance).await?;
        let queue = agent_queue(instance);
        let mut in_flight = JoinSet::new();
        loop {
            let session = tokio::select! {
                s = self.session_within(Duration::MAX) => match s {
                    Ok(s) => s,
                    Err(TransportError::ShutDown) => break,
                    Err(e) => return Err(e),
                },
                _ = stop.cancelled() => break,
            };
            if let Err(e) = self
                .consume(&session, &queue, &handler, &mut in_flight, &stop)
                .await
            {
                tracing::warn!(queue, error = %e, "command consumer stopped; will re-subscribe");
                // A failure on a live connection (say, the queue was deleted) must not
                // become a hot loop.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if stop.is_cancelled() {
                break;
            }
        }
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = in_flight.len(),
                "commands still running at the shutdown deadline were abandoned; the broker \
                 will redeliver them"
            );
        }
        Ok(())
    }

    async fn consume<H: CommandHandler>(
        &self,
        session: &Session,
        queue: &str,
        handler: &Arc<H>,
        in_flight: &mut JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<(), TransportError> {
        let channel = crate::session::open_channel(&session.connection).await?;
        channel
            .basic_qos(self.inner.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(TransportError::amqp("basic.qos"))?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(TransportError::amqp("basic.consume"))?;
        tracing::debug!(queue, generation = session.generation, "consuming commands");
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = session.lost.cancelled() => return Ok(()),
                _ = stop.cancelled() => {
                    // Stop intake; what was delivered but not started is requeued by the
                    // broker when the channel closes.
                    let _ = channel.close(200, "shutting down".into()).await;
                    return Ok(());
                }
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    return Err(TransportError::Amqp {
                        op: "consume",
                        source: e,
                    })
                }
                None => return Ok(()),
            };
            // Reap finished tasks so the set does not grow without bound.
            while in_flight.try_join_next().is_some() {}
            // Each delivery in a task of its own, authenticated before anything is
            // decoded: checking signatures is CPU work, spread over the runtime's
            // threads rather than done one after the other in this loop.
            let handler = handler.clone();
            let channel = channel.clone();
            let inner = self.inner.clone();
            let queue = queue.to_owned();
            in_flight.spawn(async move {
                // The reply is authenticated for the conductor key that sent the command
                // (an unauthenticated command was refused here, when keys are trusted).
                let reply_for = match verdict(&inner, &delivery) {
                    Ok(from) => from,
                    Err(why) => return refused_or_dropped(&inner, &queue, delivery, why).await,
                };
                match codec::decode::<Envelope<Command>>(&delivery.data) {
                    Ok(command) => {
                        answer(
                            &channel,
                            delivery,
                            command,
                            &*handler,
                            inner.config.signing_key.as_deref(),
                            reply_for,
                        )
                        .await
                    }
                    Err(e) => dead_letter(&queue, delivery, &e).await,
                }
            });
        }
    }

    /// Publishes raw bytes to the command exchange, as a command would be. For tools
    /// (replaying dead letters) and for tests of what agents do with bad input.
    pub async fn publish_raw_command(
        &self,
        instance: &InstanceId,
        bytes: &[u8],
    ) -> Result<(), TransportError> {
        self.publish_raw_signed(instance, bytes, None).await
    }

    /// As [`Transport::publish_raw_command`], with the authentication headers given as
    /// they are (`(key id, tags)`, see [`crate::identity::tags_header`]): for tests of
    /// forged, tampered and replayed commands.
    pub async fn publish_raw_signed(
        &self,
        instance: &InstanceId,
        bytes: &[u8],
        signature: Option<(&str, &str)>,
    ) -> Result<(), TransportError> {
        let mut headers = lapin::types::FieldTable::default();
        if let Some((key, tags)) = signature {
            headers.insert(
                crate::signing::KEY_HEADER.into(),
                lapin::types::AMQPValue::LongString(key.into()),
            );
            headers.insert(
                crate::signing::MAC_HEADER.into(),
                lapin::types::AMQPValue::LongString(tags.into()),
            );
        }
        let session = self
            .session_within(self.inner.config.connect_timeout)
            .await?;
        let confirm = session
            .rpc_channel
            .basic_publish(
                COMMAND_EXCHANGE.into(),
                instance.as_str().into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default()
                    .with_type(kind::COMMAND.into())
                    .with_headers(headers),
            )
            .await
            .map_err(TransportError::amqp("basic.publish"))?
            .await
            .map_err(TransportError::amqp("publisher confirm"))?;
        if confirm.is_nack() {
            return Err(TransportError::Nacked {
                exchange: COMMAND_EXCHANGE.into(),
                routing_key: instance.to_string(),
            });
        }
        Ok(())
    }

    /// Messages ready in `queue` (a passive declare: it never creates the queue).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, TransportError> {
        let session = self
            .session_within(self.inner.config.connect_timeout)
            .await?;
        // A passive declare of a missing queue closes the channel, so use a throwaway one.
        let channel = crate::session::open_channel(&session.connection).await?;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(TransportError::amqp("queue.declare passive"))?;
        let _ = channel.close(200, "done".into()).await;
        Ok(q.message_count())
    }
}

async fn answer<H: CommandHandler>(
    channel: &Channel,
    delivery: Delivery,
    command: Envelope<Command>,
    handler: &H,
    signing_key: Option<&crate::signing::SigningKey>,
    reply_for: Option<crate::identity::PublicKey>,
) {
    let message_id = command.message_id;
    let reply = handler.handle(command, delivery.redelivered).await;
    if let Some(reply_to) = delivery.properties.reply_to() {
        let published = match codec::encode(&reply) {
            Ok(bytes) => {
                let mut props = BasicProperties::default()
                    .with_content_type(CONTENT_TYPE.into())
                    .with_type(kind::REPLY.into())
                    .with_headers(crate::identity::authenticated_headers(
                        signing_key,
                        crate::identity::Naming::KeyId,
                        reply_for.as_slice(),
                        None,
                        &bytes,
                    ));
                if let Some(c) = delivery.properties.correlation_id() {
                    props = props.with_correlation_id(c.clone());
                }
                channel
                    .basic_publish(
                        "".into(),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        &bytes,
                        props,
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = published {
            // Leave the delivery unacknowledged: it comes back after the reconnect and
            // the handler answers the repeat from its record.
            tracing::warn!(%message_id, error = %e, "could not publish a reply");
            return;
        }
    }
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(%message_id, error = %e, "could not acknowledge a command");
    }
}

/// Whether a delivery may be decoded: always without trusted keys; with them, only a
/// command authenticated by one of them for this agent's key, not taken before. Answers
/// the key that sent it, when it was checked.
fn verdict(
    inner: &crate::Inner,
    delivery: &Delivery,
) -> Result<Option<crate::identity::PublicKey>, crate::signing::Refused> {
    let Some(trusted) = &inner.config.trusted_keys else {
        return Ok(None);
    };
    // An agent that trusts keys has one of its own (the agent always does).
    let Some(me) = inner.config.signing_key.as_deref() else {
        return Err(crate::signing::Refused::Unsigned);
    };
    let header = |name: &str| crate::identity::header(&delivery.properties, name);
    let key = header(crate::signing::KEY_HEADER);
    let tags = header(crate::signing::MAC_HEADER);
    let (from, tag) = trusted.verify(me, &delivery.data, key.as_deref(), tags.as_deref())?;
    let fresh = inner.seen.first_time(&tag, std::time::Instant::now());
    fresh
        .then_some(Some(from))
        .ok_or(crate::signing::Refused::Replayed)
}

/// A delivery that was not admitted: the broker's own redelivery of a command already
/// taken (a connection lost before its ack) is no attack and is dropped quietly (the
/// conductor re-sends, signed anew, and gets the recorded answer); anything else is
/// refused.
async fn refused_or_dropped(
    inner: &crate::Inner,
    queue: &str,
    delivery: Delivery,
    why: crate::signing::Refused,
) {
    if why == crate::signing::Refused::Replayed && delivery.redelivered {
        tracing::debug!(
            queue,
            "dropping a redelivered copy of a command already taken"
        );
        let _ = delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await;
        return;
    }
    let n = inner
        .refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    refuse(queue, delivery, &why, n == 0).await;
}

/// Dead-letters a command whose signature was refused. Logged loudly the first time, and
/// then at debug level (the count is in the agent's reports): a hostile client must not
/// be able to flood the log.
async fn refuse(queue: &str, delivery: Delivery, why: &crate::signing::Refused, first: bool) {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| "none".into());
    if first {
        tracing::warn!(queue, message_id, reason = %why, "refused a command: dead-lettered unread (later refusals are counted in the status reports)");
    } else {
        tracing::debug!(queue, message_id, reason = %why, "refused a command");
    }
    if let Err(e) = delivery.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(queue, error = %e, "could not reject a refused command");
    }
}

async fn dead_letter(queue: &str, delivery: Delivery, error: &tandem_proto::CodecError) {
    tracing::warn!(
        queue,
        bytes = delivery.data.len(),
        message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str())
            .unwrap_or("none"),
        %error,
        "dead-lettering a message that cannot be decoded"
    );
    if let Err(e) = delivery.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(queue, error = %e, "could not reject an undecodable message");
    }
}
