//! Seeding throughput: a fresh replica seeded by Tandem's agent-to-agent stream against
//! the raw pipe `mariabackup --backup --stream=xbstream | mbstream -x` plus
//! `mariabackup --prepare`, on the same generated data, in the same run.
//!
//! `cargo bench -p tandem-agent --bench seed` (BENCH_MB, default 1100: the size of the
//! generated table; BENCH_ROUNDS, default 3, interleaved). The Tandem time runs from the
//! `SeedFrom` command to its result: connect, copy, unpack, prepare, and the swap and
//! restart of the target engine (which the raw pipe does not do at all).

use std::process::Command as Shell;
use std::time::{Duration, Instant};

use tandem_proto::{Command, Envelope, Epoch, InstanceId, ReplyBody, Secret, SeedSource, Sender};
use tandem_testkit::{AgentProcess, Broker, MariaDb, MariaDbOptions};
use tandem_transport::identity::PublicKey;
use tandem_transport::{Transport, TransportConfig};
use tokio_util::sync::CancellationToken;

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

fn envelope(target: &str, body: Command) -> Envelope<Command> {
    Envelope::new(
        Sender::Conductor {
            name: "bench".into(),
        },
        id(target),
        Epoch::new(1),
        body,
    )
    .expires_in(Duration::from_secs(60))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mb: u64 = std::env::var("BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1100);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let binary = std::env::var("TANDEM_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tandem-agent").to_owned());
    let broker = Broker::new().unwrap();
    let mut dbs = Vec::new();
    let mut agents = Vec::new();
    for name in ["seed-src", "seed-dst"] {
        let db = MariaDb::start(MariaDbOptions {
            server_id: tandem_agent::server_id_for(&id(name)),
            extra_args: vec!["--innodb-buffer-pool-size=256M".into()],
            ..Default::default()
        })
        .unwrap();
        agents.push(
            AgentProcess::start_mariadb(binary.as_ref(), name, "zone-a", broker.uri(), &db)
                .unwrap(),
        );
        dbs.push(db);
    }
    let (src, _dst) = (&dbs[0], &dbs[1]);
    let rows = mb * 1024; // 1 KiB per row
    let started = Instant::now();
    src.sql(&format!(
        "CREATE DATABASE bench; USE bench; CREATE TABLE t (id INT PRIMARY KEY, pad VARCHAR(1000)) ENGINE=InnoDB; \
         INSERT INTO t SELECT seq, REPEAT(CHAR(65 + seq % 26), 1000) FROM seq_1_to_{rows}"
    ))
    .unwrap();
    eprintln!(
        "generated a {:.0} MB data directory in {:.0?}",
        du(&src.datadir()) as f64 / 1e6,
        started.elapsed()
    );
    let mut copy_bytes = 0u64;

    let shutdown = CancellationToken::new();
    // Signed as the test conductors' commands are (the agent trusts that key).
    let mut config = TransportConfig::new(broker.uri(), "bench");
    config.signing_key = Some(std::sync::Arc::new(
        tandem_transport::signing::SigningKey::from_pkcs8(&tandem_testkit::conductor_key().pkcs8)
            .unwrap(),
    ));
    let keys = tandem_testkit::AgentKeys::default();
    for a in &agents {
        keys.add(&a.instance, a.key().unwrap().public_key());
    }
    config.reply_keys = Some(std::sync::Arc::new(keys));
    let client = Transport::connect(config, shutdown.clone()).await.unwrap();
    // Every try stamped (and so signed) anew, as the conductor does: a byte-for-byte
    // copy is refused as a replay.
    let call = async |env: &Envelope<Command>| {
        let mut env = env.clone();
        env.issued_at = tandem_proto::Timestamp::now();
        env.expires_at = Some(tandem_proto::Timestamp(env.issued_at.0 + 60_000));
        client
            .call(&env, Duration::from_secs(60))
            .await
            .unwrap()
            .body
            .into_result()
    };
    for name in ["seed-src", "seed-dst"] {
        while call(&envelope(name, Command::Ping)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let seed_at = match call(&envelope("seed-src", Command::GetStatus))
        .await
        .unwrap()
    {
        ReplyBody::Status { report } => report.seed_endpoint.unwrap(),
        other => panic!("{other:?}"),
    };

    let scratch = tempfile::tempdir().unwrap();
    let (mut raw, mut tandem) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // The raw pipe.
        let out = scratch.path().join(format!("raw-{round}"));
        std::fs::create_dir_all(&out).unwrap();
        let t = Instant::now();
        let ok = Shell::new("sh")
            .arg("-c")
            .arg(format!(
                "mariabackup --no-defaults --backup --stream=xbstream --socket={sock} --user=root \
                 --datadir={data} --target-dir={tmp} 2>/dev/null | mbstream -x -C {out} && \
                 mariabackup --no-defaults --prepare --target-dir={out} 2>/dev/null",
                sock = src.socket().display(),
                data = src.datadir().display(),
                tmp = scratch.path().join(format!("tmp-{round}")).display(),
                out = out.display(),
            ))
            .status()
            .unwrap();
        assert!(ok.success(), "the raw pipe failed");
        raw.push(t.elapsed().as_secs_f64());
        if round == 0 {
            // What both paths move: the copy itself (the binary log is not part of it).
            copy_bytes = du(&out);
        }
        let _ = std::fs::remove_dir_all(&out);

        // Tandem: offer, then seed the other server.
        let token = Secret::new(format!("bench-token-{round}-{}", uuid_like(round)));
        // Sealed to each side, as the conductor sends it.
        let sealed_to = |agent: &AgentProcess| -> PublicKey { agent.key().unwrap().public_key() };
        call(&envelope(
            "seed-src",
            Command::OfferSeed {
                token: sealed_to(&agents[0]).seal(&token).unwrap(),
                ttl_ms: 600_000,
            },
        ))
        .await
        .unwrap();
        let seed = envelope(
            "seed-dst",
            Command::SeedFrom(SeedSource {
                instance: id("seed-src"),
                host: seed_at.host.clone(),
                port: seed_at.port,
                token: sealed_to(&agents[1]).seal(&token).unwrap(),
                time_limit_s: None,
            }),
        );
        let t = Instant::now();
        let mut reply = call(&seed).await;
        while matches!(reply, Ok(ReplyBody::Accepted { .. })) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            reply = call(&seed).await;
        }
        assert!(matches!(reply, Ok(ReplyBody::Position { .. })), "{reply:?}");
        tandem.push(t.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: raw {:.2} s, tandem {:.2} s",
            raw[round], tandem[round]
        );
    }
    let (r, t) = (median(raw), median(tandem));
    let mbps = |s: f64| copy_bytes as f64 / 1e6 / s;
    println!(
        "\nseeding {:.0} MB (median of {rounds} interleaved rounds)\n",
        copy_bytes as f64 / 1e6
    );
    println!("| path | time | throughput |");
    println!("|---|---|---|");
    println!("| raw pipe: mariabackup --stream \\| mbstream -x, then --prepare | {r:.2} s | {:.0} MB/s |", mbps(r));
    println!("| tandem: agent-to-agent stream, unpack, prepare, swap + restart | {t:.2} s | {:.0} MB/s |", mbps(t));
    println!("\nratio (raw time / tandem time): {:.2}x", r / t);
    shutdown.cancel();
}

fn du(path: &std::path::Path) -> u64 {
    let out = Shell::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .unwrap()
        .stdout;
    String::from_utf8(out)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn uuid_like(n: usize) -> String {
    format!(
        "{:016x}",
        (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}
