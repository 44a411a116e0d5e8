use std::time::Duration;

use tandem_proto::{CodecError, InstanceId};

/// Failures of the transport itself.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("broker URI {uri} ({which}) is not an AMQP URI: {reason}")]
    BadUri {
        uri: String,
        which: String,
        reason: String,
    },
    #[error(
        "could not connect to the broker at {uri} within {waited:?}{}",
        last(last_error)
    )]
    NeverConnected {
        uri: String,
        waited: Duration,
        last_error: Option<String>,
    },
    #[error(
        "no connection to the broker after waiting {waited:?}{}",
        last(last_error)
    )]
    NotConnected {
        waited: Duration,
        last_error: Option<String>,
    },
    #[error("the transport is shutting down")]
    ShutDown,
    /// A connection attempt that did not complete in time.
    #[error("{0}")]
    ConnectTimeout(String),
    #[error("broker operation {op} failed: {source}")]
    Amqp {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker refused (nacked) a message published to {exchange}/{routing_key}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

fn last(e: &Option<String>) -> String {
    e.as_ref()
        .map(|e| {
            // What the operator can do about the commonest TLS failure.
            let hint = if e.contains("invalid peer certificate") {
                "; the broker's certificate is not one this side can verify: trust the CA \
                 that signed it (the agent's `broker.ca_file`, the conductor's \
                 `broker_ca_file`), and make sure it names the host in the URI"
            } else {
                ""
            };
            format!(" (last error: {e}{hint})")
        })
        .unwrap_or_default()
}

impl TransportError {
    pub(crate) fn amqp(op: &'static str) -> impl FnOnce(lapin::Error) -> TransportError {
        move |source| TransportError::Amqp { op, source }
    }
}

/// Why a request/reply call did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "no agent queue is bound for instance {0}: the instance is unknown, or its agent has \
         never started against this broker"
    )]
    UnknownInstance(InstanceId),
    #[error(
        "instance {0} is unknown here: no agent has enrolled under that name, so its \
         replies could not be told from forged ones (`tandem instance keys` lists the \
         enrolled; `tandem instance enroll {0}` enrols one)"
    )]
    NotEnrolled(InstanceId),
    #[error("no reply from instance {instance} within {waited:?}")]
    TimedOut {
        instance: InstanceId,
        waited: Duration,
    },
    #[error("the reply from instance {instance} could not be decoded: {source}")]
    BadReply {
        instance: InstanceId,
        #[source]
        source: CodecError,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl CallError {
    /// Whether sending the same command again (same message id) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CallError::TimedOut { .. }
                | CallError::Transport(
                    TransportError::NotConnected { .. } | TransportError::Amqp { .. }
                )
        )
    }
}
