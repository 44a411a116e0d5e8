use std::time::Duration;

/// The queue type of agents' command queues. Classic by default: on one broker it
/// holds less than half the memory of a quorum queue, declares three times faster,
/// costs a quarter of the idle CPU and recovers twice as fast after a restart (issue
/// 19's measurement, `cargo bench -p tandem-transport --bench queues`); quorum queues
/// are for a RabbitMQ cluster, where they are replicated across its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, with a delivery limit kept by the broker: a message that crashes its
    /// consumer over and over is dead-lettered after `delivery_limit` attempts.
    Quorum,
    /// Classic durable queue with persistent messages; undecodable messages are
    /// dead-lettered, and the agent itself bounds the deliveries of a command that
    /// stops it each time (it counts them in its durable state).
    Classic,
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// `amqp://user:pass@host:port/vhost`, or `amqps://…` for TLS (the broker's
    /// certificate verified, and its name checked against the host in the URI).
    pub uri: String,
    /// The other nodes of a RabbitMQ cluster (the same user and virtual host): when a
    /// connection cannot be made, or is lost, the next node is tried, in turn.
    pub other_uris: Vec<String>,
    /// For `amqps`: certificates (PEM) of the CA that signed the broker's certificate,
    /// trusted besides the system's (a private CA).
    pub ca_pem: Option<String>,
    /// Shown in the broker's connection list (`rabbitmqctl list_connections client_properties`).
    pub connection_name: String,
    /// How many unacknowledged commands one agent holds at once.
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// Deliveries before a command is given up: dead-lettered by a quorum queue,
    /// refused by the agent (after counting them durably) on either queue type.
    pub delivery_limit: u32,
    /// How long [`crate::Transport::connect`] waits for the first connection.
    pub connect_timeout: Duration,
    /// The longest pause between two reconnection attempts.
    pub max_reconnect_delay: Duration,
    /// The dead-letter queue keeps at most this many messages (the oldest go first)…
    pub dead_letter_max_length: u32,
    /// …each for at most this long.
    pub dead_letter_ttl: Duration,
    /// Signs everything this side publishes: the conductor's commands, an agent's
    /// reports, events and replies.
    pub signing_key: Option<std::sync::Arc<crate::signing::SigningKey>>,
    /// An agent not yet enrolled: the proof it presents with every report (see
    /// [`crate::identity`]).
    pub enrolment_proof: Option<String>,
    /// When set, a reply counts only when signed by the key this book pins for the
    /// instance called (the conductor's); a call to an instance with no key fails.
    pub reply_keys: Option<std::sync::Arc<dyn crate::identity::KeyBook>>,
    /// When set, a command not signed by one of these keys is dead-lettered before it
    /// is decoded (an agent's).
    pub trusted_keys: Option<crate::signing::TrustedKeys>,
    /// How long an accepted command's copy counts as a replay (the longest deadline
    /// the receiving side accepts).
    pub replay_window: Duration,
    /// Whether this side declares the topology (exchanges, the dead-letter queue, its
    /// own queue). An agent with a least-privilege broker user cannot and does not:
    /// the conductor declared its queue when it made the user.
    pub declares: bool,
}

impl TransportConfig {
    pub fn new(uri: impl Into<String>, connection_name: impl Into<String>) -> Self {
        TransportConfig {
            uri: uri.into(),
            other_uris: Vec::new(),
            ca_pem: None,
            connection_name: connection_name.into(),
            prefetch: 64,
            queue_type: QueueType::Classic,
            delivery_limit: 5,
            connect_timeout: Duration::from_secs(10),
            max_reconnect_delay: Duration::from_secs(2),
            dead_letter_max_length: 10_000,
            dead_letter_ttl: Duration::from_secs(7 * 24 * 3600),
            signing_key: None,
            enrolment_proof: None,
            reply_keys: None,
            trusted_keys: None,
            replay_window: Duration::from_secs(600),
            declares: true,
        }
    }

    /// The URI with any password replaced, for logs and errors.
    pub fn redacted_uri(&self) -> String {
        redact_uri(&self.uri)
    }

    /// Node `i` of the broker (`uri` is 0, then `other_uris`; past the last, round
    /// again).
    pub fn node_uri(&self, i: usize) -> &str {
        match i % (1 + self.other_uris.len()) {
            0 => &self.uri,
            k => &self.other_uris[k - 1],
        }
    }

    /// [`TransportConfig::node_uri`] with any password replaced.
    pub fn redacted_node_uri(&self, i: usize) -> String {
        redact_uri(self.node_uri(i))
    }
}

fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return uri.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => uri.to_owned(),
    }
}

/// The CA certificates in `path` (PEM), for [`TransportConfig::ca_pem`]; the error names
/// the configuration `field` that gave the path.
pub fn read_ca_file(path: &std::path::Path, field: &str) -> Result<String, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("field `{field}`: cannot read {}: {e}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "field `{field}`: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        for (input, expect) in [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            ("amqp://127.0.0.1:5672", "amqp://127.0.0.1:5672"),
            ("amqp://user@h/v", "amqp://user@h/v"),
        ] {
            assert_eq!(super::redact_uri(input), expect);
        }
    }
}
