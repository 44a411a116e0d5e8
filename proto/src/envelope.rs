//! The envelope every message travels in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Epoch, InstanceId, MessageId, ProtocolVersion, Term};

/// Milliseconds since the Unix epoch, UTC. Wall-clock time: used for deadlines that
/// must mean the same on two hosts, never for ordering (sequence numbers do that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }
    #[must_use]
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
    /// Time left until `self`, or zero when it has passed.
    pub fn remaining(self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(Timestamp::now().0))
    }
}

/// Who sent a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sender {
    Conductor { name: String },
    Agent { instance: InstanceId },
    Operator { name: String },
}

/// The wrapper of every message on the wire: a command, a reply, a status report or an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// The protocol version the sender chose for this message (see [`crate::version`]).
    pub protocol_version: ProtocolVersion,
    /// Unique per message; commands are idempotent by it.
    pub message_id: MessageId,
    /// On a reply: the `message_id` of the command it answers.
    #[serde(default)]
    pub correlation_id: Option<MessageId>,
    pub sender: Sender,
    /// The instance the message is about: a command's target, or the instance a reply
    /// or status report comes from.
    pub target: InstanceId,
    /// The replica-set epoch the sender acts under (the fencing generation).
    pub epoch: Epoch,
    /// On a conductor's command: the term the conductor acts in (see [`Term`]); none
    /// from an older conductor, or on anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<Term>,
    pub issued_at: Timestamp,
    /// After this instant the message must not be acted on: a command that waited in a
    /// queue past its deadline is answered `timed_out`, never run late.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    pub body: B,
}

impl<B> Envelope<B> {
    /// A new message with a fresh id, issued now.
    pub fn new(sender: Sender, target: InstanceId, epoch: Epoch, body: B) -> Self {
        Envelope {
            protocol_version: ProtocolVersion::CURRENT,
            message_id: MessageId::random(),
            correlation_id: None,
            sender,
            target,
            epoch,
            term: None,
            issued_at: Timestamp::now(),
            expires_at: None,
            body,
        }
    }

    #[must_use]
    pub fn expires_in(mut self, d: Duration) -> Self {
        self.expires_at = Some(self.issued_at.plus(d));
        self
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// A reply (or any answer) to this message, correlated with it.
    pub fn answer<R>(&self, sender: Sender, epoch: Epoch, body: R) -> Envelope<R> {
        Envelope {
            protocol_version: self.protocol_version,
            message_id: MessageId::random(),
            correlation_id: Some(self.message_id),
            sender,
            target: self.target.clone(),
            epoch,
            term: None,
            issued_at: Timestamp::now(),
            expires_at: None,
            body,
        }
    }
}
