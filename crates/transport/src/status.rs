//! Status reports and events on their topic exchanges, and followers of either.

use std::marker::PhantomData;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::de::DeserializeOwned;
use tandem_proto::codec::{self, CONTENT_TYPE};
use tandem_proto::{Envelope, Event, StatusReport};
use tokio::sync::mpsc;

use crate::identity::{PublicKey, Sender};
use crate::session::Session;
use crate::signing::SigningKey;
use crate::topology::{kind, status_key, EVENTS_EXCHANGE, STATUS_EXCHANGE};
use crate::{Transport, TransportError};

/// How much of a feed waits for a follower that falls behind, in its process and in
/// the broker. Reports and events are repeated or superseded by newer ones, so the
/// broker drops the oldest once `queued` wait (`x-overflow: drop-head`): a slow
/// follower costs bounded memory on both sides, and the newest message is never the
/// one dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedBound {
    /// Messages delivered and not yet taken by the receiver: the broker sends no more
    /// until some are.
    pub prefetch: u16,
    /// Messages the broker keeps for this follower beyond those.
    pub queued: u32,
}

impl FeedBound {
    /// About ten seconds of a 10,000-instance fleet's reports wait in the broker (a few
    /// tens of MB); a thousand in the follower.
    pub const DEFAULT: FeedBound = FeedBound {
        prefetch: 1000,
        queued: 100_000,
    };
}

/// A live feed of messages from a topic exchange; survives reconnections (messages
/// published while the connection was down are not seen: reports are repeated every
/// second, and events are also answered by re-sending their command).
pub struct Subscription<T> {
    rx: mpsc::Receiver<Received<T>>,
    backlog: Backlog,
}

/// How many messages wait in the broker for a subscription (delivered ones not
/// counted), as the broker said at its last asking, once a second: what a follower
/// that falls behind leaves waiting there, which it cannot see by what it receives.
#[derive(Clone, Default)]
pub struct Backlog(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Backlog {
    /// `None` until the broker was first asked.
    pub fn get(&self) -> Option<u64> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(n - 1),
        }
    }

    fn set(&self, waiting: u32) {
        self.0
            .store(u64::from(waiting) + 1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How often a follower asks the broker how many messages wait for it.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// A message with what the transport could tell of its sender.
#[derive(Debug)]
pub struct Received<T> {
    pub envelope: Envelope<T>,
    pub sender: Sender,
}

impl<T> Subscription<T> {
    /// The next message, or `None` once the transport shuts down. Anyone with a login
    /// on the broker can publish here: a receiver that acts on what it reads takes
    /// [`Subscription::next_received`] and checks the sender.
    pub async fn next(&mut self) -> Option<Envelope<T>> {
        self.rx.recv().await.map(|r| r.envelope)
    }

    /// The next message with its sender.
    pub async fn next_received(&mut self) -> Option<Received<T>> {
        self.rx.recv().await
    }

    /// What waits for this subscription in the broker.
    pub fn backlog(&self) -> Backlog {
        self.backlog.clone()
    }
}

/// The properties a status report is published with, given its authentication
/// headers: what [`Transport::publish_status`] sends, for a load generator that speaks
/// for many agents on one connection ([`status_headers`]).
pub fn status_properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_type(kind::STATUS.into())
        .with_headers(headers)
}

/// The headers that authenticate a report's `bytes` from `key` to the conductor keys
/// `to`, as an enrolled agent's transport makes them.
pub fn status_headers(key: &SigningKey, to: &[PublicKey], bytes: &[u8]) -> FieldTable {
    crate::identity::authenticated_headers(
        Some(key),
        crate::identity::Naming::PublicKey,
        to,
        None,
        bytes,
    )
}

impl Transport {
    /// Publishes one status report. Unconfirmed on purpose: a lost report is repaired by
    /// the next one, a second later, and confirms would cost every report a round trip.
    pub async fn publish_status(
        &self,
        report: &Envelope<StatusReport>,
    ) -> Result<(), TransportError> {
        self.send_status(report, false).await
    }

    /// Publishes one status report and waits for the broker's confirm: returns only once
    /// the broker has taken it. A master's agent renews its lease this way, so a lease
    /// is renewed by proof that the broker was reached, never by a send into a dead
    /// connection.
    pub async fn publish_status_confirmed(
        &self,
        report: &Envelope<StatusReport>,
    ) -> Result<(), TransportError> {
        self.send_status(report, true).await
    }

    async fn send_status(
        &self,
        report: &Envelope<StatusReport>,
        confirmed: bool,
    ) -> Result<(), TransportError> {
        let session = self.session_within(Duration::ZERO).await?;
        let bytes = codec::encode(report)?;
        let headers = self.signed_headers(&bytes);
        let key = status_key(&report.body.zone, &report.body.instance);
        // The confirm-mode channel acknowledges every publish; the plain one never does.
        let channel = if confirmed {
            &session.rpc_channel
        } else {
            &session.plain_channel
        };
        let confirm = channel
            .basic_publish(
                STATUS_EXCHANGE.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &bytes,
                status_properties(headers),
            )
            .await
            .map_err(TransportError::amqp("basic.publish status"))?;
        if !confirmed {
            return Ok(());
        }
        let confirm = confirm
            .await
            .map_err(TransportError::amqp("publisher confirm"))?;
        if confirm.is_nack() {
            return Err(TransportError::Nacked {
                exchange: STATUS_EXCHANGE.into(),
                routing_key: key,
            });
        }
        Ok(())
    }

    /// Publishes an event with a publisher confirm, waiting for the connection up to
    /// `within`.
    pub async fn publish_event(
        &self,
        zone: &str,
        event: &Envelope<Event>,
        within: Duration,
    ) -> Result<(), TransportError> {
        let session = self.session_within(within).await?;
        let bytes = codec::encode(event)?;
        let key = status_key(zone, &event.target);
        let headers = self.signed_headers(&bytes);
        let confirm = session
            .rpc_channel
            .basic_publish(
                EVENTS_EXCHANGE.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &bytes,
                BasicProperties::default()
                    .with_content_type(CONTENT_TYPE.into())
                    .with_type(kind::EVENT.into())
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .map_err(TransportError::amqp("basic.publish event"))?
            .await
            .map_err(TransportError::amqp("publisher confirm"))?;
        if confirm.is_nack() {
            return Err(TransportError::Nacked {
                exchange: EVENTS_EXCHANGE.into(),
                routing_key: key,
            });
        }
        Ok(())
    }

    /// This side's tags of `bytes` for the conductor keys it trusts (who read its
    /// reports and events), with its enrolment proof while it has one.
    fn signed_headers(&self, bytes: &[u8]) -> FieldTable {
        let to = self
            .inner
            .config
            .trusted_keys
            .as_ref()
            .map(|t| t.keys())
            .unwrap_or_default();
        crate::identity::authenticated_headers(
            self.inner.config.signing_key.as_deref(),
            crate::identity::Naming::PublicKey,
            &to,
            self.inner.config.enrolment_proof.as_deref(),
            bytes,
        )
    }

    /// Follows status reports whose routing key (`<zone>.<instance>`) matches `pattern`
    /// (`#` for all). The queue is private to this subscriber and vanishes with it.
    pub fn subscribe_status(&self, pattern: &str) -> Subscription<StatusReport> {
        self.subscribe_status_bounded(pattern, FeedBound::DEFAULT)
    }

    /// As [`Transport::subscribe_status`], with what may wait bounded by `bound`.
    pub fn subscribe_status_bounded(
        &self,
        pattern: &str,
        bound: FeedBound,
    ) -> Subscription<StatusReport> {
        self.subscribe(STATUS_EXCHANGE, pattern, bound)
    }

    /// Follows events, as [`Transport::subscribe_status`] follows reports.
    pub fn subscribe_events(&self, pattern: &str) -> Subscription<Event> {
        self.subscribe(EVENTS_EXCHANGE, pattern, FeedBound::DEFAULT)
    }

    fn subscribe<T: DeserializeOwned + Send + 'static>(
        &self,
        exchange: &'static str,
        pattern: &str,
        bound: FeedBound,
    ) -> Subscription<T> {
        let (tx, rx) = mpsc::channel(usize::from(bound.prefetch.max(1)));
        let transport = self.clone();
        let pattern = pattern.to_owned();
        let backlog = Backlog::default();
        let seen = backlog.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                let Ok(session) = transport.session_within(Duration::MAX).await else {
                    break;
                };
                let me = transport.inner.config.signing_key.as_deref();
                let followed = follow(
                    &session,
                    (exchange, &pattern),
                    bound,
                    (&tx, &seen),
                    me,
                    PhantomData,
                );
                if let Err(e) = followed.await {
                    tracing::debug!(exchange, error = %e, "subscription interrupted");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Subscription { rx, backlog }
    }
}

async fn follow<T: DeserializeOwned>(
    session: &Session,
    (exchange, pattern): (&'static str, &str),
    bound: FeedBound,
    (tx, backlog): (&mpsc::Sender<Received<T>>, &Backlog),
    me: Option<&crate::signing::SigningKey>,
    _: PhantomData<T>,
) -> Result<(), TransportError> {
    let channel = crate::session::open_channel(&session.connection).await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongUInt(bound.queued),
    );
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString("drop-head".into()),
    );
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(TransportError::amqp("queue.declare follower"))?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::amqp("queue.bind follower"))?;
    // Acknowledged once handed to the receiver: what it has not taken stays in the
    // broker, bounded there, rather than in this process's buffers.
    channel
        .basic_qos(bound.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(TransportError::amqp("basic.qos follower"))?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::amqp("basic.consume follower"))?;
    // One acknowledgement covers many (`multiple`): every half prefetch, and whatever
    // is left at the next tick.
    let every = u64::from(bound.prefetch.max(2) / 2);
    let mut unacked: Option<u64> = None;
    let mut count = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ack = |tag: u64| channel.basic_ack(tag, BasicAckOptions { multiple: true });
    let mut asked: Option<tokio::time::Instant> = None;
    let mut pace = Pace::default();
    loop {
        tokio::select! {
            d = consumer.next() => {
                // What is ready is taken in this one wake, up to half the prefetch (so
                // that a backlog still lets the ticks below run: acknowledgements and
                // the backlog's asking); under a steady stream the next wait starts no
                // sooner than [`PACE`] after this one.
                let mut next = Some(d);
                let mut taken = 0;
                while let Some(d) = next.take() {
                    let delivery = match d {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => return Err(TransportError::Amqp { op: "consume", source: e }),
                        None => return Ok(()),
                    };
                    if !hand_over(exchange, &delivery, tx, me).await {
                        return Ok(());
                    }
                    unacked = Some(delivery.delivery_tag);
                    count += 1;
                    if count >= every {
                        ack(delivery.delivery_tag)
                            .await
                            .map_err(TransportError::amqp("basic.ack follower"))?;
                        (unacked, count) = (None, 0);
                    }
                    taken += 1;
                    if taken < every {
                        next = futures_lite::future::poll_once(consumer.next()).await;
                    }
                }
                pace.woke().await;
            },
            _ = tick.tick() => {
                if let Some(tag) = unacked.take() {
                    ack(tag)
                        .await
                        .map_err(TransportError::amqp("basic.ack follower"))?;
                    count = 0;
                }
                if asked.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
                    asked = Some(tokio::time::Instant::now());
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    let waiting = channel
                        .queue_declare(queue.name().clone(), passive, FieldTable::default())
                        .await
                        .map_err(TransportError::amqp("queue.declare passive follower"))?;
                    backlog.set(waiting.message_count());
                }
            }
            _ = session.lost.cancelled() => return Ok(()),
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Decodes one delivery and hands it to the receiver; false once the receiver is gone.
async fn hand_over<T: DeserializeOwned>(
    exchange: &str,
    d: &lapin::message::Delivery,
    tx: &mpsc::Sender<Received<T>>,
    me: Option<&crate::signing::SigningKey>,
) -> bool {
    match codec::decode::<Envelope<T>>(&d.data) {
        Ok(envelope) => {
            let sender = Sender::of(&d.properties, &d.data, me);
            tx.send(Received { envelope, sender }).await.is_ok()
        }
        Err(e) => {
            tracing::warn!(exchange, error = %e, "ignoring an undecodable message");
            true
        }
    }
}

/// The shortest time between two wakes of a follower under a steady stream.
///
/// A fleet's reports arrive spread over the second, one every 100 µs at 10,000
/// instances: woken for each, the follower and the tasks it hands them to sleep and
/// wake ten thousand times a second, and the measured cost of that (the scheduler,
/// futexes, the poller) was larger than the reports' own processing. A follower woken
/// again sooner than this waits out the rest of it first and then takes everything
/// that arrived meanwhile in one wake: at most 500 wakes a second, and a message is
/// held up by 2 ms at most. A message after a quiet spell is taken at once.
const PACE: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Pace {
    last: Option<tokio::time::Instant>,
}

impl Pace {
    /// Called after each wake's messages were handed over.
    async fn woke(&mut self) {
        let now = tokio::time::Instant::now();
        if let Some(last) = self.last {
            if now < last + PACE {
                tokio::time::sleep_until(last + PACE).await;
            }
        }
        self.last = Some(tokio::time::Instant::now());
    }
}
