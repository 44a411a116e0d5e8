//! Status reports on the topic exchange.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tandem_proto::codec::{self, CONTENT_TYPE};
use tandem_proto::{Envelope, StatusReport};
use tokio::sync::mpsc;

use crate::topology::{kind, status_key, STATUS_EXCHANGE};
use crate::{Transport, TransportError};

/// A live feed of status reports; survives reconnections.
pub struct StatusSubscription {
    rx: mpsc::Receiver<Envelope<StatusReport>>,
}

impl StatusSubscription {
    /// The next report, or `None` once the transport shuts down.
    pub async fn next(&mut self) -> Option<Envelope<StatusReport>> {
        self.rx.recv().await
    }
}

impl Transport {
    /// Publishes one status report. Unconfirmed on purpose: a lost report is repaired by
    /// the next one, a second later, and confirms would cost every report a round trip.
    pub async fn publish_status(
        &self,
        report: &Envelope<StatusReport>,
    ) -> Result<(), TransportError> {
        let session = self.session_within(Duration::ZERO).await?;
        let bytes = codec::encode(report)?;
        let key = status_key(&report.body.zone, &report.body.instance);
        session
            .plain_channel
            .basic_publish(
                STATUS_EXCHANGE.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &bytes,
                BasicProperties::default()
                    .with_content_type(CONTENT_TYPE.into())
                    .with_type(kind::STATUS.into()),
            )
            .await
            .map_err(TransportError::amqp("basic.publish status"))?;
        Ok(())
    }

    /// Follows status reports whose routing key (`<zone>.<instance>`) matches `pattern`
    /// (`#` for all). The queue is private to this subscriber and vanishes with it.
    pub fn subscribe_status(&self, pattern: &str) -> StatusSubscription {
        let (tx, rx) = mpsc::channel(1024);
        let transport = self.clone();
        let pattern = pattern.to_owned();
        tokio::spawn(async move {
            while !tx.is_closed() {
                let Ok(session) = transport.session_within(Duration::MAX).await else {
                    break;
                };
                match follow(&session, &pattern, &tx).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "status subscription interrupted");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        StatusSubscription { rx }
    }
}

async fn follow(
    session: &crate::session::Session,
    pattern: &str,
    tx: &mpsc::Sender<Envelope<StatusReport>>,
) -> Result<(), TransportError> {
    let channel = session
        .connection
        .create_channel()
        .await
        .map_err(TransportError::amqp("channel.open"))?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::amqp("queue.declare status follower"))?;
    channel
        .queue_bind(
            queue.name().clone(),
            STATUS_EXCHANGE.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::amqp("queue.bind status follower"))?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::amqp("basic.consume status"))?;
    loop {
        tokio::select! {
            d = consumer.next() => match d {
                Some(Ok(d)) => match codec::decode::<Envelope<StatusReport>>(&d.data) {
                    Ok(report) => {
                        if tx.send(report).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an undecodable status report"),
                },
                Some(Err(e)) => return Err(TransportError::Amqp { op: "consume status", source: e }),
                None => return Ok(()),
            },
            _ = session.lost.cancelled() => return Ok(()),
            _ = tx.closed() => return Ok(()),
        }
    }
}
