//! The transport on a three-node RabbitMQ cluster of the test's own: the conductor's
//! side and the agent's connect to different nodes, each knowing them all; the agent's
//! command queue is a quorum queue. Killing a node (SIGKILL of its Erlang VM) loses no
//! command: both sides reconnect to another node, and every command the caller keeps
//! re-sending (the same message, as the conductor does) is answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_proto::{Command, Envelope, Epoch, InstanceId, MessageId, Reply, ReplyBody, Sender};
use tandem_testkit::BrokerCluster;
use tandem_transport::{CommandHandler, QueueType, Transport, TransportConfig};
use tokio_util::sync::CancellationToken;

/// Counts how often each command was handled.
#[derive(Default)]
struct CountingAgent {
    seen: Mutex<HashMap<MessageId, u32>>,
}

impl CommandHandler for CountingAgent {
    async fn handle(&self, command: Envelope<Command>, _redelivered: bool) -> Envelope<Reply> {
        *self
            .seen
            .lock()
            .unwrap()
            .entry(command.message_id)
            .or_default() += 1;
        let me = Sender::Agent {
            instance: command.target.clone(),
        };
        command.answer(me, command.epoch, Reply::Ok(ReplyBody::Done))
    }
}

/// A transport on node `first` of `cluster`, knowing every node.
fn config(cluster: &BrokerCluster, first: usize, name: &str) -> TransportConfig {
    let mut uris = cluster.uris_from(first);
    let mut config = TransportConfig::new(uris.remove(0), name);
    config.other_uris = uris;
    config.queue_type = QueueType::Quorum;
    config
}

/// The nodes are started, and started again, from the test's own thread: the test kit
/// kills a child when the thread that started it ends (a runtime's blocking thread
/// ends when idle).
#[test]
fn a_node_killed_under_commands_loses_none_and_both_sides_move_to_another_node() {
    tandem_testkit::init_tracing();
    let cluster = BrokerCluster::start(3).unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(commands_through_node_kills(cluster));
}

async fn commands_through_node_kills(mut cluster: BrokerCluster) {
    let shutdown = CancellationToken::new();
    let instance = InstanceId::new("db-1").unwrap();

    // The agent on node 1, the conductor on node 0.
    let agent_transport = Transport::connect(config(&cluster, 1, "test-agent"), shutdown.clone())
        .await
        .unwrap();
    agent_transport
        .declare_agent_queue(&instance)
        .await
        .unwrap();
    let agent = Arc::new(CountingAgent::default());
    {
        let (t, a, i, stop) = (
            agent_transport.clone(),
            agent.clone(),
            instance.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move { t.serve_commands(&i, a, &stop).await.unwrap() });
    }
    let client = Transport::connect(config(&cluster, 0, "test-conductor"), shutdown.clone())
        .await
        .unwrap();

    let total = 120;
    let mut sent = Vec::new();
    let mut retried = 0;
    for n in 0..total {
        // Node 0 (the conductor's) dies a third of the way; node 1 (the agent's, where
        // its quorum queue was made) two thirds of the way, after node 0 is back.
        if n == total / 3 {
            cluster.kill(0);
        }
        if n == 2 * total / 3 {
            // On the test's thread (see above), blocking the runtime's other work for
            // the node's start.
            cluster.restart(0).unwrap();
            cluster.kill(1);
        }
        let command = Envelope::new(
            Sender::Conductor {
                name: "test".into(),
            },
            instance.clone(),
            Epoch::new(1),
            Command::SetReadOnly,
        );
        let started = Instant::now();
        loop {
            match client.call(&command, Duration::from_secs(2)).await {
                Ok(reply) => {
                    assert_eq!(reply.correlation_id, Some(command.message_id));
                    break;
                }
                Err(e) => {
                    retried += 1;
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "command {n} unanswered for a minute: {e}\n{}\n{}",
                        cluster
                            .ctl(&[
                                "list_queues",
                                "-p",
                                cluster.vhost(),
                                "name",
                                "type",
                                "leader",
                                "members",
                                "online",
                                "messages"
                            ])
                            .unwrap_or_else(|e| e.to_string()),
                        cluster
                            .ctl(&["cluster_status"])
                            .unwrap_or_else(|e| e.to_string())
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        sent.push(command.message_id);
    }
    let seen = agent.seen.lock().unwrap().clone();
    let missing = sent.iter().filter(|m| !seen.contains_key(m)).count();
    assert_eq!(missing, 0, "commands answered but never handled");
    assert!(retried > 0, "no node kill was felt: the test tests nothing");
    // A command re-sent while its first copy waited may arrive twice (the agent's
    // record answers the repeat without running it again); none arrives more often.
    let most = seen.values().copied().max().unwrap();
    assert!(most <= 3, "a command handled {most} times");
    shutdown.cancel();
}

#[tokio::test]
async fn a_cluster_node_uri_that_is_not_amqp_is_refused_at_once_naming_it() {
    let mut config = TransportConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", "test");
    config.other_uris = vec![
        "amqp://guest:guest@127.0.0.1:5673/%2f".into(),
        "http://guest:s3cret@elsewhere/".into(),
    ];
    let err = Transport::connect(config, CancellationToken::new())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("other URI 2"), "{err}");
    assert!(!err.contains("s3cret"), "the password shown: {err}");
}
