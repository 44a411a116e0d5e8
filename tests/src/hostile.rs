//! A hostile client of the broker: what anyone holding a broker login (every database
//! VM in a Trove-style cloud) can do. Raw lapin on purpose: an attacker does not use
//! Tandem's transport, and whatever our transport refuses to send is still sent here.

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tandem_proto::codec;
use tandem_proto::{Command, Envelope, Reply, StatusReport};
use tandem_transport::identity::tags_header;
use tandem_transport::identity::PUBLIC_KEY_HEADER;
use tandem_transport::signing::{SigningKey, KEY_HEADER, MAC_HEADER};
use tandem_transport::topology::{status_key, COMMAND_EXCHANGE, STATUS_EXCHANGE};

pub struct Hostile {
    channel: Channel,
    _connection: Connection,
}

/// Message headers, as the attacker chooses them.
pub type Headers = Vec<(&'static str, String)>;

/// The headers that authenticate `bytes` from `key` for the test conductors exactly as
/// a Tandem agent would.
pub fn signed_by(key: &SigningKey, bytes: &[u8]) -> Headers {
    let conductor = tandem_transport::identity::PublicKey::from_hex(
        &tandem_testkit::conductor_key().public_hex,
    )
    .expect("the test conductors' key");
    vec![
        (KEY_HEADER, key.id().to_owned()),
        (PUBLIC_KEY_HEADER, key.public_hex()),
        (MAC_HEADER, tags_header(key, &[conductor], bytes)),
    ]
}

fn table(headers: &Headers) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in headers {
        t.insert(
            ShortString::from(*k),
            AMQPValue::LongString(v.as_str().into()),
        );
    }
    t
}

impl Hostile {
    pub async fn connect(uri: &str) -> anyhow::Result<Hostile> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        Ok(Hostile {
            channel,
            _connection: connection,
        })
    }

    /// Publishes `bytes` as a status report naming `report`'s instance.
    pub async fn publish_report(
        &self,
        report: &Envelope<StatusReport>,
        bytes: &[u8],
        headers: &Headers,
    ) -> anyhow::Result<()> {
        let key = status_key(&report.body.zone, &report.body.instance);
        self.channel
            .basic_publish(
                STATUS_EXCHANGE.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default().with_headers(table(headers)),
            )
            .await?;
        Ok(())
    }

    /// Everything published to `exchange` under routing keys matching `key`, as it
    /// passes: a queue of its own bound beside the real consumers', read without acks.
    pub async fn tap(&self, exchange: &str, key: &str) -> anyhow::Result<lapin::Consumer> {
        let q = private_queue(&self.channel).await?;
        self.channel
            .queue_bind(
                q.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(self
            .channel
            .basic_consume(
                q.as_str().into(),
                "eavesdropper".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?)
    }

    /// Reads every command sent to `instance` (a queue of its own bound beside the
    /// agent's) and answers each at once with `answer`, signed with `headers_for`'s
    /// headers, racing the real agent's reply.
    pub async fn answer_commands_first(
        &self,
        instance: &str,
        answer: impl Fn(&Envelope<Command>) -> Envelope<Reply> + Send + 'static,
        headers_for: impl Fn(&[u8]) -> Headers + Send + 'static,
    ) -> anyhow::Result<tokio::task::JoinHandle<u64>> {
        let mut consumer = self.tap(COMMAND_EXCHANGE, instance).await?;
        let channel = self.channel.clone();
        Ok(tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut answered = 0;
            while let Some(Ok(d)) = consumer.next().await {
                let Ok(command) = codec::decode::<Envelope<Command>>(&d.data) else {
                    continue;
                };
                let (Some(reply_to), Some(correlation)) =
                    (d.properties.reply_to(), d.properties.correlation_id())
                else {
                    continue;
                };
                let bytes = codec::encode(&answer(&command)).expect("encode a reply");
                let props = BasicProperties::default()
                    .with_correlation_id(correlation.clone())
                    .with_headers(table(&headers_for(&bytes)));
                if channel
                    .basic_publish(
                        "".into(),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        &bytes,
                        props,
                    )
                    .await
                    .is_ok()
                {
                    answered += 1;
                }
            }
            answered
        }))
    }
}

/// What a hostile client tries with a set of credentials: each attempt on a channel of
/// its own (the broker closes a channel on a refusal), `Err` with the broker's answer
/// when refused.
impl Hostile {
    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self._connection.create_channel().await?)
    }

    /// Consumes from `queue`.
    pub async fn try_consume(&self, queue: &str) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// Publishes `bytes` to `exchange` under `key`, waiting for the broker's confirm.
    pub async fn try_publish(&self, exchange: &str, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default(),
            )
            .await?
            .await?;
        anyhow::ensure!(confirm.is_ack(), "nacked");
        // A refusal closes the channel right after the publish: ask it something.
        ch.basic_qos(1, Default::default()).await?;
        Ok(())
    }

    /// Declares a queue of its own (server-named).
    pub async fn try_declare_queue(&self) -> anyhow::Result<String> {
        private_queue(&self.channel().await?).await
    }

    /// Binds `queue` to `exchange` under `key`.
    pub async fn try_bind(&self, queue: &str, exchange: &str, key: &str) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }
}

/// A server-named queue private to this connection.
async fn private_queue(channel: &Channel) -> anyhow::Result<String> {
    let q = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.name().to_string())
}
