//! Names and declarations of everything Tandem puts on the broker.
//!
//! ```text
//!  conductor ──publish(key = instance id, mandatory)──▶ tandem.commands (direct)
//!                                                        └─▶ tandem.agent.<id>  (durable, one per agent)
//!                                                              │ x-dead-letter-exchange
//!                                                              ▼
//!                                              tandem.dead (fanout) ─▶ tandem.dead-letters
//!  agent ──reply to amq.rabbitmq.reply-to (direct reply-to, correlation id)──▶ conductor
//!  agent ──publish(key = <zone>.<instance>)──▶ tandem.status (topic) ─▶ conductor / `tandem status --follow`
//!  agent ──publish(key = <zone>.<instance>, confirmed)──▶ tandem.events (topic) ─▶ conductor
//! ```

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tandem_proto::InstanceId;

use crate::{QueueType, TransportConfig, TransportError};

pub const COMMAND_EXCHANGE: &str = "tandem.commands";
pub const STATUS_EXCHANGE: &str = "tandem.status";
/// Events (a long command finished…), keyed like status reports.
pub const EVENTS_EXCHANGE: &str = "tandem.events";
pub const DEAD_LETTER_EXCHANGE: &str = "tandem.dead";
pub const DEAD_LETTER_QUEUE: &str = "tandem.dead-letters";
/// RabbitMQ's direct reply-to pseudo-queue: no queue to declare, no queue to leak.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The AMQP `type` property of each kind of message.
pub mod kind {
    pub const COMMAND: &str = "command";
    pub const REPLY: &str = "reply";
    pub const STATUS: &str = "status";
    pub const EVENT: &str = "event";
}

pub fn agent_queue(instance: &InstanceId) -> String {
    format!("tandem.agent.{instance}")
}

/// The status routing key: `<zone>.<instance>`, so a follower can bind `zone-a.*` or `#`.
pub fn status_key(zone: &str, instance: &InstanceId) -> String {
    let zone = if zone.is_empty() { "default" } else { zone };
    format!("{zone}.{instance}")
}

/// Something the supervisor declares on every (re)connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declaration {
    /// The exchanges and the dead-letter queue everyone needs.
    Base,
    /// One agent's durable command queue, bound to its instance id.
    AgentQueue(InstanceId),
}

pub(crate) async fn declare(
    connection: &Connection,
    channel: &Channel,
    config: &TransportConfig,
    what: &Declaration,
) -> Result<(), TransportError> {
    match what {
        Declaration::Base => declare_base(connection, channel, config).await,
        Declaration::AgentQueue(id) => declare_agent_queue(connection, channel, config, id).await,
    }
}

async fn declare_base(
    connection: &Connection,
    channel: &Channel,
    config: &TransportConfig,
) -> Result<(), TransportError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (COMMAND_EXCHANGE, ExchangeKind::Direct),
        (STATUS_EXCHANGE, ExchangeKind::Topic),
        (EVENTS_EXCHANGE, ExchangeKind::Topic),
        (DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await
            .map_err(TransportError::amqp("exchange.declare"))?;
    }
    // Bounded: a flood of bad messages drops the oldest, and nothing stays forever.
    let mut bounds = FieldTable::default();
    bounds.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongUInt(config.dead_letter_max_length),
    );
    bounds.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongUInt(config.dead_letter_ttl.as_millis().min(u32::MAX as u128) as u32),
    );
    if config.queue_type == QueueType::Quorum {
        // On a cluster: replicated like the command queues, or it would live on one
        // node, and every connection's declaration would fail while that node is down.
        bounds.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        bounds.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString("drop-head".into()),
        );
    }
    // On a channel of its own: a failed declaration closes its channel.
    let trial = connection
        .create_channel()
        .await
        .map_err(TransportError::amqp("channel.open"))?;
    let declared = trial
        .queue_declare(
            DEAD_LETTER_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            bounds,
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = trial.close(200, "declared".into()).await;
        }
        // Made by a peer configured otherwise (or by an earlier version): used as it is.
        Err(e) if is_precondition_failed(&e) => tracing::warn!(
            queue = DEAD_LETTER_QUEUE,
            error = %e,
            "the dead-letter queue exists with other arguments: used as it is"
        ),
        // A classic queue whose node is down (a cluster): commands flow without it, and
        // what would be dead-lettered meanwhile is dropped.
        Err(e) if is_not_found(&e) => {
            tracing::warn!(
                queue = DEAD_LETTER_QUEUE,
                error = %e,
                "the dead-letter queue is unavailable: dead-lettered messages are dropped \
                 until it is back"
            );
            return Ok(());
        }
        Err(e) => return Err(TransportError::amqp("queue.declare dead letters")(e)),
    }
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::amqp("queue.bind dead letters"))?;
    Ok(())
}

/// The arguments an agent's command queue is declared with under `config` (its type,
/// dead-lettering and poison-message bound).
pub fn agent_queue_arguments(config: &TransportConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    if config.queue_type == QueueType::Quorum {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongUInt(config.delivery_limit),
        );
    }
    args
}

async fn declare_agent_queue(
    connection: &Connection,
    channel: &Channel,
    config: &TransportConfig,
    id: &InstanceId,
) -> Result<(), TransportError> {
    let queue = agent_queue(id);
    // On a channel of its own: a queue that exists with other arguments (a quorum queue
    // made before classic became the default, or by a peer configured otherwise) fails
    // the declaration with PRECONDITION_FAILED, which closes the channel it came on.
    let trial = connection
        .create_channel()
        .await
        .map_err(TransportError::amqp("channel.open"))?;
    let declared = trial
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            agent_queue_arguments(config),
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = trial.close(200, "declared".into()).await;
        }
        Err(e) if is_precondition_failed(&e) => {
            // Used as it is: it is durable and dead-letters like ours, and replacing it
            // would drop what waits in it. Deleting it while its agent is stopped lets
            // the next start declare it anew.
            tracing::warn!(
                queue,
                wanted = ?config.queue_type,
                error = %e,
                "the agent's command queue exists with other arguments: used as it is"
            );
        }
        Err(e) => return Err(TransportError::amqp("queue.declare agent queue")(e)),
    }
    channel
        .queue_bind(
            queue.as_str().into(),
            COMMAND_EXCHANGE.into(),
            id.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(TransportError::amqp("queue.bind agent queue"))?;
    Ok(())
}

/// Whether the broker refused a declaration because the queue's node is down (AMQP 404
/// on a cluster: "home node … is down or inaccessible").
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.get_id() == lapin::protocol::AMQPErrorKind::Soft(
                lapin::protocol::AMQPSoftError::NOTFOUND
            ).get_id()
    )
}

/// Whether the broker refused a declaration because the thing exists with other
/// properties (AMQP 406).
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.get_id() == lapin::protocol::AMQPErrorKind::Soft(
                lapin::protocol::AMQPSoftError::PRECONDITIONFAILED
            ).get_id()
    )
}
