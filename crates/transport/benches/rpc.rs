//! Request/reply through Tandem's transport against bare lapin doing the same protocol
//! steps (publisher confirm + mandatory publish to a durable queue, manual-ack consumer,
//! direct reply-to), in the same run, on the local broker.
//!
//! `cargo bench -p tandem-transport --bench rpc` (env: BENCH_SERIAL, BENCH_CALLS,
//! BENCH_QUEUE=classic|quorum, classic by default as for agents). Prints a table;
//! results go to docs/benchmarks.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tandem_proto::{Command, Envelope, Epoch, InstanceId, Reply, ReplyBody, Sender, VersionRange};
use tandem_testkit::Broker;
use tandem_transport::{CommandHandler, QueueType, Transport, TransportConfig};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

struct Pong;
impl CommandHandler for Pong {
    async fn handle(&self, c: Envelope<Command>, _: bool) -> Envelope<Reply> {
        let me = Sender::Agent {
            instance: c.target.clone(),
        };
        c.answer(
            me,
            c.epoch,
            Reply::Ok(ReplyBody::Pong {
                agent_version: "bench".into(),
                protocol: VersionRange::OURS,
            }),
        )
    }
}

fn ping() -> Envelope<Command> {
    ping_to("bench-agent")
}

fn ping_to(agent: &str) -> Envelope<Command> {
    Envelope::new(
        Sender::Conductor {
            name: "bench".into(),
        },
        InstanceId::new(agent).unwrap(),
        Epoch::new(1),
        Command::Ping,
    )
}

/// The same round trip with lapin alone: no envelope, no codec, no supervision.
struct Bare {
    channel: Channel,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>,
    payload: Vec<u8>,
    _conns: (Connection, Connection),
}

impl Bare {
    async fn start(uri: &str, queue_type: QueueType, prefetch: u16, payload: Vec<u8>) -> Bare {
        let server = Connection::connect(uri, ConnectionProperties::default())
            .await
            .unwrap();
        let sch = server.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        if queue_type == QueueType::Quorum {
            args.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString("quorum".into()),
            );
        }
        sch.exchange_declare(
            "bare.commands".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        sch.queue_declare(
            "bare.agent".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        sch.queue_bind(
            "bare.agent".into(),
            "bare.commands".into(),
            "bare".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        sch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = sch
            .basic_consume(
                "bare.agent".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let reply_payload = payload.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let ch = sch.clone();
                let body = reply_payload.clone();
                tokio::spawn(async move {
                    let props = BasicProperties::default()
                        .with_correlation_id(d.properties.correlation_id().clone().unwrap());
                    ch.basic_publish(
                        "".into(),
                        d.properties.reply_to().clone().unwrap(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await
                    .unwrap();
                    d.ack(BasicAckOptions::default()).await.unwrap();
                });
            }
        });

        let client = Connection::connect(uri, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = client.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>> = Default::default();
        let mut replies = channel
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let p = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = replies.next().await {
                let key = d.properties.correlation_id().as_ref().unwrap().to_string();
                if let Some(tx) = p.lock().unwrap().remove(&key) {
                    let _ = tx.send(d.data);
                }
            }
        });
        Bare {
            channel,
            pending,
            payload,
            _conns: (server, client),
        }
    }

    async fn call(&self) {
        let key = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(key.clone(), tx);
        let props = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id(key.as_str().into())
            .with_delivery_mode(2);
        let confirm = self
            .channel
            .basic_publish(
                "bare.commands".into(),
                "bare".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &self.payload,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(confirm, Confirmation::Ack(None)));
        rx.await.unwrap();
    }
}

struct Figures {
    p50: Duration,
    p99: Duration,
    throughput: Vec<(usize, f64)>,
}

async fn measure<F, Fut>(call: F, serial: usize, calls: usize) -> Figures
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for _ in 0..200 {
        call().await;
    }
    let mut lat = Vec::with_capacity(serial);
    for _ in 0..serial {
        let t = Instant::now();
        call().await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let mut throughput = Vec::new();
    for inflight in [1usize, 8, 64, 256] {
        let per_task = calls.div_ceil(inflight);
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..inflight {
            let call = call.clone();
            tasks.spawn(async move {
                for _ in 0..per_task {
                    call().await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        throughput.push((
            inflight,
            (per_task * inflight) as f64 / t.elapsed().as_secs_f64(),
        ));
    }
    Figures {
        p50: pct(0.5),
        p99: pct(0.99),
        throughput,
    }
}

fn median(rounds: &[Figures]) -> Figures {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let secs = |f: &dyn Fn(&Figures) -> Duration| {
        Duration::from_secs_f64(mid(rounds.iter().map(|r| f(r).as_secs_f64()).collect()))
    };
    Figures {
        p50: secs(&|r| r.p50),
        p99: secs(&|r| r.p99),
        throughput: (0..rounds[0].throughput.len())
            .map(|i| {
                (
                    rounds[0].throughput[i].0,
                    mid(rounds.iter().map(|r| r.throughput[i].1).collect()),
                )
            })
            .collect(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The key book of a client that talks to one agent.
#[derive(Debug)]
struct OneKey(tandem_transport::identity::PublicKey);

impl tandem_transport::identity::KeyBook for OneKey {
    fn key_of(&self, _: &InstanceId) -> Option<tandem_transport::identity::PublicKey> {
        Some(self.0)
    }
}

#[tokio::main]
async fn main() {
    let serial = env_usize("BENCH_SERIAL", 3000);
    let calls = env_usize("BENCH_CALLS", 6000);
    let queue_type = match std::env::var("BENCH_QUEUE").as_deref() {
        Ok("quorum") => QueueType::Quorum,
        _ => QueueType::Classic,
    };
    let broker = Broker::new().expect("local RabbitMQ (see README)");
    let shutdown = CancellationToken::new();

    let mut config = TransportConfig::new(broker.uri(), "bench-agent");
    config.queue_type = queue_type;
    let agent = Transport::connect(config.clone(), shutdown.clone())
        .await
        .unwrap();
    let id = InstanceId::new("bench-agent").unwrap();
    agent.declare_agent_queue(&id).await.unwrap();
    {
        let agent = agent.clone();
        let id = id.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { agent.serve_commands(&id, Arc::new(Pong), &stop).await });
    }
    let client = Transport::connect(
        TransportConfig::new(broker.uri(), "bench-client"),
        shutdown.clone(),
    )
    .await
    .unwrap();

    // The same again as a deployment runs: the client authenticates each command for
    // the agent's key and believes a reply only from it; the agent checks commands
    // against the trusted conductor key and authenticates its replies.
    let agent_key = Arc::new(
        tandem_transport::signing::SigningKey::from_pkcs8(
            &tandem_transport::signing::SigningKey::generate().unwrap(),
        )
        .unwrap(),
    );
    let key = Arc::new(
        tandem_transport::signing::SigningKey::from_pkcs8(
            &tandem_transport::signing::SigningKey::generate().unwrap(),
        )
        .unwrap(),
    );
    let mut signed_config = TransportConfig::new(broker.uri(), "bench-agent-signed");
    signed_config.queue_type = queue_type;
    signed_config.trusted_keys =
        Some(tandem_transport::signing::TrustedKeys::from_hex(&[key.public_hex()]).unwrap());
    signed_config.signing_key = Some(agent_key.clone());
    let signed_agent = Transport::connect(signed_config, shutdown.clone())
        .await
        .unwrap();
    let signed_id = InstanceId::new("bench-signed").unwrap();
    signed_agent.declare_agent_queue(&signed_id).await.unwrap();
    {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            signed_agent
                .serve_commands(&signed_id, Arc::new(Pong), &stop)
                .await
        });
    }
    let mut signing_client = TransportConfig::new(broker.uri(), "bench-client-signed");
    signing_client.signing_key = Some(key);
    signing_client.reply_keys = Some(Arc::new(OneKey(agent_key.public_key())));
    let signed_client = Transport::connect(signing_client, shutdown.clone())
        .await
        .unwrap();

    let payload = tandem_proto::codec::encode(&ping()).unwrap();
    let bare =
        Arc::new(Bare::start(broker.uri(), queue_type, config.prefetch, payload.clone()).await);

    // Interleaved rounds, medians: the broker drifts over a run (its logs grow, it
    // collects garbage), and measuring one side after the other would charge the drift
    // to one of them.
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let mut bare_rounds = Vec::new();
    let mut our_rounds = Vec::new();
    let mut signed_rounds = Vec::new();
    for _ in 0..rounds {
        let b = bare.clone();
        bare_rounds.push(
            measure(
                move || {
                    let b = b.clone();
                    async move { b.call().await }
                },
                serial,
                calls,
            )
            .await,
        );
        let c = client.clone();
        our_rounds.push(
            measure(
                move || {
                    let c = c.clone();
                    async move {
                        let r = c.call(&ping(), Duration::from_secs(10)).await.unwrap();
                        assert!(matches!(r.body, Reply::Ok(ReplyBody::Pong { .. })));
                    }
                },
                serial,
                calls,
            )
            .await,
        );
        let c = signed_client.clone();
        signed_rounds.push(
            measure(
                move || {
                    let c = c.clone();
                    async move {
                        let r = c
                            .call(&ping_to("bench-signed"), Duration::from_secs(10))
                            .await
                            .unwrap();
                        assert!(matches!(r.body, Reply::Ok(ReplyBody::Pong { .. })));
                    }
                },
                serial,
                calls,
            )
            .await,
        );
    }
    let bare_figures = median(&bare_rounds);
    let ours = median(&our_rounds);
    let signed = median(&signed_rounds);

    println!(
        "request/reply, {:?} queue, {} byte command, {serial} serial calls, {calls} calls per concurrency level, median of {rounds} interleaved rounds",
        queue_type,
        payload.len()
    );
    println!(
        "| metric | bare lapin | tandem transport | ratio | tandem, authenticated both ways | authenticated / unauthenticated |"
    );
    println!("|---|---|---|---|---|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (name, b, o, s) in [
        ("round trip p50", bare_figures.p50, ours.p50, signed.p50),
        ("round trip p99", bare_figures.p99, ours.p99, signed.p99),
    ] {
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.2}x | {:.3} ms | {:.2}x |",
            ms(b),
            ms(o),
            ms(o) / ms(b),
            ms(s),
            ms(s) / ms(o)
        );
    }
    for (((n, b), (_, o)), (_, s)) in bare_figures
        .throughput
        .iter()
        .zip(&ours.throughput)
        .zip(&signed.throughput)
    {
        println!(
            "| throughput, {n} in flight | {b:.0} calls/s | {o:.0} calls/s | {:.2}x | {s:.0} calls/s | {:.2}x |",
            o / b,
            s / o
        );
    }
    shutdown.cancel();
}
