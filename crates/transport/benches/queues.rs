//! Per-agent command queues at fleet sizes: quorum against classic, declared exactly as
//! an agent declares its own (`topology::agent_queue_arguments`, durable, bound to the
//! command exchange), in the same run on the local broker.
//!
//! For each queue type and size it measures: the time to declare every queue (8
//! channels, as a fleet of agents connecting at once would), the broker's memory, file
//! descriptors and Erlang processes per queue (before and after, from the node itself), the
//! broker's idle CPU with the queues in place, and the time the broker takes after a
//! restart of its application until every queue is running again.
//!
//! `cargo bench -p tandem-transport --bench queues` (env: BENCH_SIZES=1000,5000,10000,
//! BENCH_TYPES=classic,classic-v2,quorum, BENCH_IDLE_SECONDS=10). It restarts the broker's
//! application (`rabbitmqctl stop_app/start_app`): run it alone, never beside the
//! tests, on a broker started by `scripts/services-up` (open files raised; README,
//! "Broker sizing"). Results go to docs/benchmarks.md (B3).

use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tandem_testkit::Broker;
use tandem_transport::topology::{agent_queue_arguments, COMMAND_EXCHANGE};
use tandem_transport::{QueueType, TransportConfig};

const CHANNELS: usize = 8;

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What the broker's Erlang node says of itself, asked directly (`rabbitmqctl eval`,
/// after a garbage collection of every process, so memory is what is held, not what
/// awaits collection); file descriptors from /proc.
#[derive(Clone, Copy, Debug)]
struct Node {
    mem: u64,
    fds: u64,
    procs: u64,
    fd_total: u64,
    proc_total: u64,
}

fn node() -> Node {
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "eval",
            "[erlang:garbage_collect(P) || P <- erlang:processes()], \
             {erlang:memory(total), erlang:system_info(process_count), \
              erlang:system_info(process_limit)}.",
        ])
        .output()
        .expect("rabbitmqctl eval");
    // {466002704,10368,1048576}
    let text = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = text
        .trim()
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .map(|f| f.trim().parse().expect("a number from rabbitmqctl eval"))
        .collect();
    let pid = beam_pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let fd_total = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Node {
        mem: n[0],
        procs: n[1],
        proc_total: n[2],
        fds,
        fd_total,
    }
}

/// The node's figures once the last declarations have settled.
async fn settled_node() -> Node {
    tokio::time::sleep(Duration::from_secs(3)).await;
    node()
}

fn beam_pid() -> u32 {
    let out = Command::new("pgrep")
        .args(["-f", "beam.smp.*rabbit"])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a running RabbitMQ (beam.smp)")
}

/// The broker's CPU time so far, in clock ticks (utime + stime).
fn beam_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("beam's stat");
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many of the vhost's queues the broker reports as running.
fn running(vhost: &str) -> usize {
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "state",
        ])
        .output()
        .expect("rabbitmqctl list_queues");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == "running")
        .count()
}

/// A queue type as measured: the agent's own arguments, and for classic queues the
/// storage version (v1 is RabbitMQ 3.10's default; v2 is asked for by argument).
#[derive(Clone, Copy)]
enum Kind {
    Classic,
    ClassicV2,
    Quorum,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Classic => "classic",
            Kind::ClassicV2 => "classic-v2",
            Kind::Quorum => "quorum",
        }
    }

    fn arguments(self, uri: &str) -> FieldTable {
        let config = TransportConfig {
            queue_type: match self {
                Kind::Quorum => QueueType::Quorum,
                Kind::Classic | Kind::ClassicV2 => QueueType::Classic,
            },
            ..TransportConfig::new(uri.to_owned(), "queues bench")
        };
        let mut args = agent_queue_arguments(&config);
        if let Kind::ClassicV2 = self {
            args.insert("x-queue-version".into(), AMQPValue::LongUInt(2));
        }
        args
    }
}

async fn declare_all(uri: &str, args: FieldTable, n: usize) -> Duration {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect");
    let first = conn.create_channel().await.unwrap();
    first
        .exchange_declare(
            COMMAND_EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CHANNELS {
        let channel = conn.create_channel().await.unwrap();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(CHANNELS) {
                let queue = format!("tandem.agent.bench-{i}");
                channel
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        args.clone(),
                    )
                    .await
                    .expect("queue.declare");
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        COMMAND_EXCHANGE.into(),
                        format!("bench-{i}").as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("queue.bind");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    // Bounded: a close whose close-ok never comes must not stall the run.
    let _ =
        tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bench done".into())).await;
    took
}

struct Row {
    kind: &'static str,
    n: usize,
    declare: Duration,
    mem_per_queue: f64,
    fds: i64,
    procs_per_queue: f64,
    idle_cpu: f64,
    recovery: Option<Duration>,
}

async fn measure(kind: Kind, n: usize, idle: Duration) -> Row {
    let broker = Broker::new().expect("a bench vhost");
    let before = settled_node().await;
    let declare = declare_all(broker.uri(), kind.arguments(broker.uri()), n).await;
    let after = settled_node().await;
    let pid = beam_pid();
    let t0 = beam_ticks(pid);
    tokio::time::sleep(idle).await;
    let ticks = beam_ticks(pid) - t0;
    let hz = clock_ticks_per_second();
    let idle_cpu = ticks as f64 / hz / idle.as_secs_f64();

    // Recovery: the broker's application restarted, timed until every queue runs.
    rabbitmqctl(&["stop_app"]);
    let start = Instant::now();
    rabbitmqctl(&["start_app"]);
    let deadline = start + Duration::from_secs(600);
    let recovery = loop {
        if running(broker.vhost()) >= n {
            break Some(start.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Deleting the vhost (and its queues) before the next row: synchronously.
    rabbitmqctl(&["delete_vhost", broker.vhost()]);
    Row {
        kind: kind.label(),
        n,
        declare,
        mem_per_queue: (after.mem as f64 - before.mem as f64) / n as f64 / 1024.0,
        fds: after.fds as i64 - before.fds as i64,
        procs_per_queue: (after.procs as f64 - before.procs as f64) / n as f64,
        idle_cpu,
        recovery,
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = env_list("BENCH_SIZES", "1000,5000,10000")
        .iter()
        .map(|s| s.parse().expect("BENCH_SIZES: numbers"))
        .collect();
    let types: Vec<Kind> = env_list("BENCH_TYPES", "classic,classic-v2,quorum")
        .iter()
        .map(|t| match t.as_str() {
            "classic" => Kind::Classic,
            "classic-v2" => Kind::ClassicV2,
            "quorum" => Kind::Quorum,
            other => panic!("BENCH_TYPES: classic, classic-v2 or quorum, not {other}"),
        })
        .collect();
    let idle = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let n0 = settled_node().await;
    println!(
        "broker: open files {}, Erlang processes {} (limits); {} channels declaring",
        n0.fd_total, n0.proc_total, CHANNELS
    );
    println!(
        "{:>8} {:>7} {:>10} {:>12} {:>9} {:>9} {:>10} {:>10}",
        "type", "queues", "declare", "declare/q", "KiB/q", "fds", "procs/q", "idle CPU"
    );
    // Interleaved: each size runs every type before the next size.
    for &n in &sizes {
        for &kind in &types {
            let r = measure(kind, n, idle).await;
            println!(
                "{:>8} {:>7} {:>9.2}s {:>10.0}µs {:>9.1} {:>9} {:>10.2} {:>9.1}%   recovery {}",
                r.kind,
                r.n,
                r.declare.as_secs_f64(),
                r.declare.as_secs_f64() * 1e6 / r.n as f64,
                r.mem_per_queue,
                r.fds,
                r.procs_per_queue,
                r.idle_cpu * 100.0,
                r.recovery
                    .map(|d| format!("{:.1} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "not within 600 s".into()),
            );
        }
    }
}
