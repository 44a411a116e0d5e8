//! How the conductor talks to agents: one signed command, one reply. The broker
//! ([`tandem_transport::Transport`]) in production; a scripted fake agent in the
//! workflow unit tests. Everything the workflows, backups and the API send goes
//! through [`AgentLink`], with the retry and version rules of
//! [`Conductor::call_within`].

use std::time::Duration;

use tokio::time::Instant;

use futures_util::future::BoxFuture;
use tandem_proto::{
    Command, CommandError, Envelope, Epoch, ErrorKind, InstanceId, MessageId, Reply, Sender,
    Timestamp,
};
use tandem_transport::{CallError, Transport, TransportError};

use crate::Conductor;

/// One command to one agent and its reply; the conductor's only way to reach agents.
pub trait AgentLink: Send + Sync + 'static {
    /// Sends `command` and waits at most `timeout` for the reply.
    fn call<'a>(
        &'a self,
        command: &'a Envelope<Command>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Envelope<Reply>, CallError>>;
    /// Whether the link is up now (the health check says so).
    fn is_connected(&self) -> bool;
    /// Makes sure `instance`'s command queue exists (an agent with its own broker user
    /// may not declare it).
    fn ensure_agent_queue<'a>(
        &'a self,
        instance: &'a InstanceId,
    ) -> BoxFuture<'a, Result<(), TransportError>>;
}

impl AgentLink for Transport {
    fn call<'a>(
        &'a self,
        command: &'a Envelope<Command>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Envelope<Reply>, CallError>> {
        Box::pin(Transport::call(self, command, timeout))
    }
    fn is_connected(&self) -> bool {
        Transport::is_connected(self)
    }
    fn ensure_agent_queue<'a>(
        &'a self,
        instance: &'a InstanceId,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(Transport::ensure_agent_queue(self, instance))
    }
}

impl Conductor {
    /// Sends `command` with a fixed message id until it gets a reply that is not a
    /// retryable failure, or `budget` runs out.
    pub(crate) async fn call_until(
        &self,
        message_id: MessageId,
        target: &InstanceId,
        epoch: Epoch,
        command: Command,
        budget: Duration,
    ) -> Reply {
        self.call_within(
            message_id,
            target,
            epoch,
            command,
            budget,
            self.settings.command_timeout,
        )
        .await
    }

    /// As [`Conductor::call_until`], each try waiting at most `timeout` for its reply.
    pub(crate) async fn call_within(
        &self,
        message_id: MessageId,
        target: &InstanceId,
        epoch: Epoch,
        command: Command,
        budget: Duration,
        timeout: Duration,
    ) -> Reply {
        let started = Instant::now();
        // The version rule: never send a command the agent's advertised protocol
        // versions do not cover (an agent that has not reported yet is given the benefit:
        // it will answer `unsupported` itself).
        let mut version = tandem_proto::ProtocolVersion::CURRENT;
        if let Some(report) = self.registry.report(target) {
            match tandem_proto::version::ensure_supported(&command, &report.protocol) {
                Ok(v) => version = v,
                Err(e) => return Reply::Err(CommandError::unsupported(e.to_string())),
            }
        }
        let mut envelope = Envelope::new(
            Sender::Conductor {
                name: self.settings.name.clone(),
            },
            target.clone(),
            epoch,
            command,
        );
        envelope.message_id = message_id;
        envelope.protocol_version = version;
        envelope.term = self.term;
        loop {
            envelope.issued_at = Timestamp::now();
            envelope.expires_at = Some(envelope.issued_at.plus(timeout));
            let outcome = match self.agents.call(&envelope, timeout).await {
                Ok(reply) => reply.body,
                Err(CallError::UnknownInstance(i)) => Reply::Err(CommandError::new(
                    ErrorKind::BadRequest,
                    format!("no agent queue is bound for instance {i}"),
                )),
                Err(e @ CallError::NotEnrolled(_)) => {
                    Reply::Err(CommandError::new(ErrorKind::BadRequest, e.to_string()))
                }
                Err(e) => Reply::Err(CommandError::new(ErrorKind::TimedOut, e.to_string())),
            };
            let retry = matches!(&outcome, Reply::Err(e) if e.retryable);
            if !retry || started.elapsed() >= budget {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
