//! The transport against the real broker, each test in its own virtual host.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tandem_proto::{
    Command, Envelope, Epoch, InstanceId, Reply, ReplyBody, Sender, StatusReport, VersionRange,
};
use tandem_testkit::Broker;
use tandem_transport::topology::DEAD_LETTER_QUEUE;
use tandem_transport::{CallError, CommandHandler, QueueType, Transport, TransportConfig};
use tokio_util::sync::CancellationToken;

/// Answers ping with pong; `wait_for_position` sleeps `timeout_ms` first (a slow command).
struct TestAgent {
    handled: AtomicU32,
}

impl CommandHandler for TestAgent {
    async fn handle(&self, command: Envelope<Command>, _redelivered: bool) -> Envelope<Reply> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        let body = match &command.body {
            Command::Ping => ReplyBody::Pong {
                agent_version: "test".into(),
                protocol: VersionRange::OURS,
            },
            Command::WaitForPosition { timeout_ms, .. } => {
                tokio::time::sleep(Duration::from_millis(*timeout_ms)).await;
                ReplyBody::Done
            }
            _ => ReplyBody::Done,
        };
        let me = Sender::Agent {
            instance: command.target.clone(),
        };
        command.answer(me, command.epoch, Reply::Ok(body))
    }
}

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

fn command(target: &str, body: Command) -> Envelope<Command> {
    Envelope::new(
        Sender::Conductor {
            name: "test".into(),
        },
        id(target),
        Epoch::new(1),
        body,
    )
}

fn ping(target: &str) -> Envelope<Command> {
    command(target, Command::Ping)
}

fn slow(target: &str, millis: u64) -> Envelope<Command> {
    command(
        target,
        Command::WaitForPosition {
            position: tandem_proto::Position::Gtid(tandem_proto::GtidSet::empty()),
            timeout_ms: millis,
        },
    )
}

struct Setup {
    broker: Broker,
    shutdown: CancellationToken,
    client: Transport,
    agent: Arc<TestAgent>,
    agent_transport: Transport,
    serving: tokio::task::JoinHandle<()>,
}

async fn setup(instance: &str, queue_type: QueueType) -> Setup {
    setup_with(instance, queue_type, 10_000).await
}

/// With a dead-letter queue of at most `dead_letters` messages (both ends declare it,
/// so both must agree).
async fn setup_with(instance: &str, queue_type: QueueType, dead_letters: u32) -> Setup {
    tandem_testkit::init_tracing();
    let broker = Broker::new().unwrap();
    let shutdown = CancellationToken::new();
    let mut config = TransportConfig::new(broker.uri(), "test-agent");
    config.queue_type = queue_type;
    config.dead_letter_max_length = dead_letters;
    let agent_transport = Transport::connect(config, shutdown.clone()).await.unwrap();
    let agent = Arc::new(TestAgent {
        handled: AtomicU32::new(0),
    });
    agent_transport
        .declare_agent_queue(&id(instance))
        .await
        .unwrap();
    let serving = {
        let t = agent_transport.clone();
        let a = agent.clone();
        let instance = id(instance);
        let stop = shutdown.clone();
        tokio::spawn(async move { t.serve_commands(&instance, a, &stop).await.unwrap() })
    };
    let mut client_config = TransportConfig::new(broker.uri(), "test-conductor");
    client_config.dead_letter_max_length = dead_letters;
    let client = Transport::connect(client_config, shutdown.clone())
        .await
        .unwrap();
    Setup {
        broker,
        shutdown,
        client,
        agent,
        agent_transport,
        serving,
    }
}

#[tokio::test]
async fn a_request_reaches_the_agent_and_its_reply_returns() {
    for queue_type in [QueueType::Quorum, QueueType::Classic] {
        let s = setup("db-1", queue_type).await;
        let request = ping("db-1");
        let reply = s
            .client
            .call(&request, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply.correlation_id, Some(request.message_id));
        assert!(
            matches!(reply.body, Reply::Ok(ReplyBody::Pong { .. })),
            "{reply:?}"
        );
        assert_eq!(s.agent.handled.load(Ordering::SeqCst), 1);
        s.shutdown.cancel();
        s.serving.await.unwrap();
    }
}

#[tokio::test]
async fn a_request_to_an_unknown_instance_fails_fast_with_a_clear_error() {
    let s = setup("db-1", QueueType::Quorum).await;
    let err = s
        .client
        .call(&ping("db-nobody"), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::UnknownInstance(i) if i.as_str() == "db-nobody"),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("no agent queue is bound for instance db-nobody"));
    assert!(!err.is_retryable());
    s.shutdown.cancel();
}

/// Publishes each of `garbage` as a raw command to db-1, then checks a ping is still
/// answered.
async fn garbage_then_ping(s: &Setup, garbage: &[&[u8]]) {
    for g in garbage {
        s.client.publish_raw_command(&id("db-1"), g).await.unwrap();
    }
    let reply = s
        .client
        .call(&ping("db-1"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(reply.body, Reply::Ok(ReplyBody::Pong { .. })));
}

#[tokio::test]
async fn undecodable_bytes_are_dead_lettered_and_the_consumer_keeps_serving() {
    let s = setup("db-1", QueueType::Quorum).await;
    garbage_then_ping(&s, &[&b"\xc1\xc1 not msgpack"[..], b"", &[0x80][..]]).await;
    assert_eq!(
        s.agent.handled.load(Ordering::SeqCst),
        1,
        "garbage reached the handler"
    );
    let mut depth = 0;
    for _ in 0..100 {
        depth = s.client.queue_depth(DEAD_LETTER_QUEUE).await.unwrap();
        if depth == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        depth, 3,
        "all three bad messages are in the dead-letter queue"
    );
    assert_eq!(s.client.queue_depth("tandem.agent.db-1").await.unwrap(), 0);
    s.shutdown.cancel();
}

#[tokio::test]
async fn an_agent_queue_made_as_another_type_is_used_as_it_is() {
    // A fleet upgraded to classic queues keeps the quorum queues it has: the agent's
    // declaration fails on them (PRECONDITION_FAILED) and the queue is used unchanged,
    // with what waits in it, on a connection that stays usable.
    let s = setup("db-1", QueueType::Quorum).await;
    s.shutdown.cancel();
    s.serving.await.unwrap();
    let waiting = ping("db-1");
    let shutdown = CancellationToken::new();
    let client = Transport::connect(
        TransportConfig::new(s.broker.uri(), "test-conductor"),
        shutdown.clone(),
    )
    .await
    .unwrap();
    // Sent while no agent serves: it waits in the quorum queue.
    let early = {
        let (c, w) = (client.clone(), waiting.clone());
        tokio::spawn(async move { c.call(&w, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let config = TransportConfig::new(s.broker.uri(), "test-agent");
    assert_eq!(
        config.queue_type,
        QueueType::Classic,
        "classic is the default"
    );
    let agent_transport = Transport::connect(config, shutdown.clone()).await.unwrap();
    agent_transport
        .declare_agent_queue(&id("db-1"))
        .await
        .expect("the existing queue is accepted");
    let agent = Arc::new(TestAgent {
        handled: AtomicU32::new(0),
    });
    let serving = {
        let (t, a, stop) = (agent_transport.clone(), agent.clone(), shutdown.clone());
        tokio::spawn(async move { t.serve_commands(&id("db-1"), a, &stop).await.unwrap() })
    };
    let reply = early
        .await
        .unwrap()
        .expect("the waiting command is answered");
    assert_eq!(reply.correlation_id, Some(waiting.message_id));
    let again = client
        .call(&ping("db-1"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(again.body, Reply::Ok(ReplyBody::Pong { .. })));
    assert_eq!(agent.handled.load(Ordering::SeqCst), 2);
    shutdown.cancel();
    serving.await.unwrap();
}

#[tokio::test]
async fn the_dead_letter_queue_is_bounded() {
    let s = setup_with("db-1", QueueType::Quorum, 2).await;
    let garbage: Vec<[u8; 2]> = (0..5u8).map(|n| [0xc1, n]).collect();
    garbage_then_ping(&s, &garbage.iter().map(|g| &g[..]).collect::<Vec<_>>()).await;
    // Each delivery is handled in a task of its own: give the five time to be
    // dead-lettered (the queue can only shrink to its bound, never below).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.client.queue_depth(DEAD_LETTER_QUEUE).await.unwrap(),
        2,
        "the dead-letter queue keeps only its newest two"
    );
    s.shutdown.cancel();
}

#[tokio::test]
async fn the_transport_recovers_after_the_broker_drops_all_connections() {
    let s = setup("db-1", QueueType::Quorum).await;
    s.client
        .call(&ping("db-1"), Duration::from_secs(5))
        .await
        .unwrap();
    let (client_gen, agent_gen) = (
        s.client.connection_generation(),
        s.agent_transport.connection_generation(),
    );
    s.broker.close_all_connections().unwrap();
    // The next request waits for the new connection (within its deadline) and succeeds:
    // both sides must have reconnected, and the agent must have re-subscribed.
    let reply = s
        .client
        .call(&ping("db-1"), Duration::from_secs(15))
        .await
        .unwrap();
    assert!(matches!(reply.body, Reply::Ok(ReplyBody::Pong { .. })));
    assert!(s.client.connection_generation() > client_gen);
    assert!(s.agent_transport.connection_generation() > agent_gen);
    s.shutdown.cancel();
    s.serving.await.unwrap();
}

#[tokio::test]
async fn a_late_reply_is_dropped_and_never_matched_to_another_call() {
    let s = setup("db-1", QueueType::Quorum).await;
    let err = s
        .client
        .call(&slow("db-1", 800), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::TimedOut { .. }), "{err:?}");
    assert!(err.is_retryable());
    // A second call runs while the late reply of the first arrives.
    let second = ping("db-1");
    let reply = s
        .client
        .call(&second, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.correlation_id, Some(second.message_id));
    for _ in 0..100 {
        if s.client.dropped_replies() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.client.dropped_replies(), 1, "the late reply was dropped");
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_wrong_broker_address_is_a_clear_error() {
    let mut config = TransportConfig::new("amqp://guest:secret@127.0.0.1:1/%2f", "test");
    config.connect_timeout = Duration::from_millis(500);
    let err = match Transport::connect(config, CancellationToken::new()).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("could not connect to the broker at amqp://guest:***@127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}

#[tokio::test]
async fn status_reports_reach_followers_by_zone_pattern() {
    let s = setup("db-1", QueueType::Quorum).await;
    let mut zone_a = s.client.subscribe_status("zone-a.*");
    let mut all = s.client.subscribe_status("#");
    // Give the followers' bindings a moment to exist before publishing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (zone, instance, seq) in [("zone-b", "db-2", 1), ("zone-a", "db-1", 2)] {
        let env = Envelope::new(
            Sender::Agent {
                instance: id(instance),
            },
            id(instance),
            Epoch::ZERO,
            sample_report(zone, instance, seq),
        );
        s.agent_transport.publish_status(&env).await.unwrap();
    }
    assert_eq!(next(&mut zone_a).await.body.instance.as_str(), "db-1");
    let first = next(&mut all).await;
    let second = next(&mut all).await;
    assert_eq!((first.body.sequence, second.body.sequence), (1, 2));
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_follower_that_falls_behind_waits_for_a_bounded_feed_whose_oldest_reports_go_first() {
    let s = setup("db-1", QueueType::Quorum).await;
    let bound = tandem_transport::FeedBound {
        prefetch: 5,
        queued: 20,
    };
    let mut slow = s.client.subscribe_status_bounded("#", bound);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 500 reports while the follower takes none.
    for seq in 1..=500 {
        let env = Envelope::new(
            Sender::Agent {
                instance: id("db-1"),
            },
            id("db-1"),
            Epoch::ZERO,
            sample_report("zone-a", "db-1", seq),
        );
        s.agent_transport.publish_status(&env).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut taken = Vec::new();
    while let Ok(Some(env)) = tokio::time::timeout(Duration::from_millis(500), slow.next()).await {
        taken.push(env.body.sequence);
    }
    // What waited: the first few (taken before the follower stopped, and the
    // prefetch), then only the newest `queued`, ending with the last one published.
    let waiting = usize::from(bound.prefetch) * 2 + bound.queued as usize;
    assert!(
        taken.len() <= waiting,
        "{} reports waited for the follower, more than {waiting}: {taken:?}",
        taken.len()
    );
    assert_eq!(
        taken.last(),
        Some(&500),
        "the newest is never dropped: {taken:?}"
    );
    assert!(taken.windows(2).all(|w| w[0] < w[1]), "in order: {taken:?}");
    let newest: Vec<u64> = (481..=500).collect();
    assert!(
        taken.ends_with(&newest),
        "the newest 20 all wait: {taken:?}"
    );
    s.shutdown.cancel();
}

async fn next(sub: &mut tandem_transport::Subscription<StatusReport>) -> Envelope<StatusReport> {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a report within 5 s")
        .expect("subscription open")
}

fn sample_report(zone: &str, instance: &str, sequence: u64) -> StatusReport {
    StatusReport {
        instance: id(instance),
        zone: zone.into(),
        host_id: None,
        tags: vec![],
        agent_version: "test".into(),
        protocol: VersionRange::OURS,
        engine: tandem_proto::EngineKind::Mariadb,
        engine_version: None,
        seed_endpoint: None,
        endpoint: None,
        role: tandem_proto::Role::Standalone,
        writable: Some(true),
        replicates_from: None,
        replicates_to: vec![],
        position: None,
        lag: None,
        seconds_behind_master: None,
        replication: None,
        health: tandem_proto::Health::Healthy,
        last_error: None,
        host: Default::default(),
        highest_epoch: Epoch::ZERO,
        sequence,
        taken_at: tandem_proto::Timestamp::now(),
        operations: vec![],
        engine_settings: Default::default(),
        fenced: false,
        lease_ms: None,
        semi_sync: None,
        fencing_hazards: Vec::new(),
        restart_needed: Vec::new(),
        failsafe: None,
        refused_commands: 0,
        pair_side: None,
    }
}
