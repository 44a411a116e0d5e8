//! The failsafe: how a master keeps writing through a broker outage without ever
//! overlapping a promotion.
//!
//! A master's lease is renewed by broker-confirmed reports. When those stop, the master
//! may renew it instead by a *promise* from every replica of its set, asked for directly
//! (agent to agent, one UDP datagram each way, on the port of the replica's seeding
//! listener): "I will not be drained, detached, re-pointed or promoted for the next
//! `promise_ms`". A replica gives one only while it receives from that master and was
//! told by the conductor to answer it ([`FailsafeAssignment::Replica`]); every command
//! that could end in a promotion first withdraws it (no promise given any more, the last
//! one waited out). The master renews to `ping sent + promise_ms` only with every
//! replica's promise, so its lease ends before any replica's promise does, and a
//! promotion needs at least one replica of its list to have withdrawn.
//!
//! The datagrams are authenticated with a key per replica (HMAC-SHA-256, computed by
//! the agent); a promise answers one ping's random nonce, so none can be replayed.

use serde::{Deserialize, Serialize};

use crate::{Endpoint, Epoch, InstanceId, Sealed};

/// What the conductor tells an agent about the failsafe of its set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "as", rename_all = "snake_case")]
pub enum FailsafeAssignment {
    /// As the master: the replicas whose promises together renew the lease. The list
    /// belongs to the epoch of the command that carries it; an empty list means no
    /// failsafe (a broker outage fences the master after one lease).
    Master { peers: Vec<FailsafePeer> },
    /// As a replica: answer pings from `master`, authenticated with `key` (sealed to
    /// this replica).
    Replica { master: InstanceId, key: Sealed },
}

/// One replica as its master's failsafe sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailsafePeer {
    pub instance: InstanceId,
    /// Where its agent answers pings (UDP, the host and port of its seeding listener);
    /// `None` when it never said, which makes the failsafe unable to hold.
    pub endpoint: Option<Endpoint>,
    /// Sealed to the master.
    pub key: Sealed,
}

/// What an agent reports of its failsafe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "as", rename_all = "snake_case")]
pub enum FailsafeState {
    /// A master holding the list of `epoch`; `held` counts the lease renewals that
    /// came from promises (broker outages ridden out) since the agent started.
    Master {
        epoch: Epoch,
        peers: Vec<InstanceId>,
        #[serde(default)]
        held: u64,
    },
    /// A replica that answers `master`'s pings.
    Replica { master: InstanceId },
}

/// One failsafe datagram's content; it travels as MessagePack inside a
/// [`FailsafeDatagram`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailsafeMessage {
    /// Master to replica: promise me `promise_ms`.
    Ping {
        from: InstanceId,
        to: InstanceId,
        nonce: u64,
        promise_ms: u64,
    },
    /// Replica to master: promised, from when this ping arrived.
    Promise {
        from: InstanceId,
        to: InstanceId,
        nonce: u64,
        promise_ms: u64,
    },
}

/// A message and its authentication code (HMAC-SHA-256 of `body` under the replica's
/// key), as one MessagePack datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeDatagram {
    #[serde(with = "serde_bytes_compat")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    pub mac: Vec<u8>,
}

/// Byte strings as MessagePack `bin`, not as arrays of integers.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl FailsafeMessage {
    /// The replica whose key authenticates this message.
    pub fn replica(&self) -> &InstanceId {
        match self {
            FailsafeMessage::Ping { to, .. } => to,
            FailsafeMessage::Promise { from, .. } => from,
        }
    }
}
