//! The agent's footprint: resident memory while idle and CPU time per status report,
//! for the release binary managing a real MariaDB, reporting every second.
//!
//! The shipped agent is built with the `agent` profile; measure that one:
//! `cargo build --profile agent -p tandem-agent && \
//!  TANDEM_AGENT_BIN=target/agent/tandem-agent cargo bench -p tandem-agent --bench idle`
//! (BENCH_SECONDS, default 30). Without TANDEM_AGENT_BIN the release build is measured.
//!
//! With BENCH_HEAVY_MB (say 1000) the agent then does heavy work on a table of that
//! size, a full backup into a local store and a restore of it (the receiving path of a
//! seeding: unpack, prepare, install), and its idle RSS is measured again after each:
//! it must come back to within 1 MiB of where it started (measured once the agent has
//! settled, 15 s after the work).

use std::time::{Duration, Instant};

use tandem_testkit::{AgentProcess, Broker, MariaDb, MariaDbOptions};
use tandem_transport::{Transport, TransportConfig};
use tokio_util::sync::CancellationToken;

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let broker = Broker::new().unwrap();
    let id = tandem_proto::InstanceId::new("bench-1").unwrap();
    let db = MariaDb::start(MariaDbOptions {
        server_id: tandem_agent::server_id_for(&id),
        ..Default::default()
    })
    .unwrap();
    let binary = std::env::var("TANDEM_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tandem-agent").to_owned());
    let store = tempfile::tempdir().unwrap();
    let env = [
        (
            "TANDEM_AGENT_BACKUP_STORE__KIND".to_owned(),
            "local".to_owned(),
        ),
        (
            "TANDEM_AGENT_BACKUP_STORE__PATH".to_owned(),
            store.path().display().to_string(),
        ),
    ];
    let agent = AgentProcess::start_mariadb_with(
        binary.as_ref(),
        "bench-1",
        "zone-a",
        broker.uri(),
        &db,
        &env,
    )
    .unwrap();
    let pid = agent.process().unwrap().pid();
    let shutdown = CancellationToken::new();
    // Signed as the test conductors' commands are (the agent trusts that key).
    let mut config = TransportConfig::new(broker.uri(), "bench");
    config.signing_key = Some(std::sync::Arc::new(
        tandem_transport::signing::SigningKey::from_pkcs8(&tandem_testkit::conductor_key().pkcs8)
            .unwrap(),
    ));
    let keys = tandem_testkit::AgentKeys::default();
    keys.add(&agent.instance, agent.key().unwrap().public_key());
    config.reply_keys = Some(std::sync::Arc::new(keys));
    let client = Transport::connect(config, shutdown.clone()).await.unwrap();
    let mut reports = client.subscribe_status("#");
    // Warm up: first report, allocator settled.
    tokio::time::timeout(Duration::from_secs(30), reports.next())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let first = idle(pid, seconds, &mut reports).await;
    println!(
        "agent footprint ({}), MariaDB engine, 1 s status interval, 200 ms probe, {seconds} s",
        if std::env::var("TANDEM_AGENT_BIN").is_ok() {
            "TANDEM_AGENT_BIN"
        } else {
            "release profile"
        }
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| idle RSS (median of samples) | {:.2} MiB |",
        mib(first.median_kib)
    );
    println!("| peak RSS (VmHWM) | {:.2} MiB |", mib(first.peak_kib));
    println!(
        "| of which file-backed / anonymous (at the end) | {:.2} / {:.2} MiB |",
        mib(first.file_kib),
        mib(first.anon_kib)
    );
    println!("| status reports received | {} |", first.reports);
    println!("| CPU time total | {:.3} s |", first.cpu_s);
    println!(
        "| CPU time per status report (incl. 5 probes) | {:.2} ms |",
        first.cpu_s * 1000.0 / first.reports.max(1) as f64
    );
    println!(
        "| CPU share | {:.2} % |",
        first.cpu_s * 100.0 / seconds as f64
    );

    let heavy_mb: u64 = std::env::var("BENCH_HEAVY_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if heavy_mb > 0 {
        let call = async |body: tandem_proto::Command| {
            let env = tandem_proto::Envelope::new(
                tandem_proto::Sender::Conductor {
                    name: "bench".into(),
                },
                id.clone(),
                tandem_proto::Epoch::new(1),
                body,
            );
            loop {
                let mut e = env.clone();
                e.issued_at = tandem_proto::Timestamp::now();
                e.expires_at = Some(tandem_proto::Timestamp(e.issued_at.0 + 60_000));
                match client.call(&e, Duration::from_secs(60)).await.unwrap().body {
                    tandem_proto::Reply::Ok(tandem_proto::ReplyBody::Accepted { .. }) => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    other => break other.into_result().unwrap(),
                }
            }
        };
        // About heavy_mb MB of rows that do not compress to nothing.
        let rows = heavy_mb * 1000;
        db.sql(&format!(
            "CREATE DATABASE heavy; USE heavy; \
             CREATE TABLE t (id INT PRIMARY KEY, pad VARCHAR(1000)); INSERT INTO t SELECT seq, CONCAT(SHA2(seq, 512), REPEAT(MD5(seq), 24)) FROM seq_1_to_{rows}"
        ))
        .unwrap();
        let t = Instant::now();
        call(tandem_proto::Command::TakeBackup(
            tandem_proto::BackupRequest {
                backup_id: "heavy-1".parse().unwrap(),
                kind: tandem_proto::BackupKind::Full,
                time_limit_s: None,
            },
        ))
        .await;
        let backup_s = t.elapsed().as_secs_f64();
        // The agent releases what the work held, and again once its helper threads end.
        tokio::time::sleep(SETTLE).await;
        let after_backup = idle(pid, seconds, &mut reports).await;
        let t = Instant::now();
        call(tandem_proto::Command::Restore(
            tandem_proto::RestoreRequest {
                backup_id: "heavy-1".parse().unwrap(),
                time_limit_s: None,
            },
        ))
        .await;
        let restore_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(SETTLE).await;
        let after_restore = idle(pid, seconds, &mut reports).await;
        let data_mb = du(&store.path().join("heavy-1.xb.zst")) as f64 / 1e6;
        println!(
            "\nafter heavy work on {heavy_mb} MB of rows (backup {backup_s:.1} s, {data_mb:.0} MB \
             stored; restore {restore_s:.1} s), idle {seconds} s each\n"
        );
        println!("| idle RSS (median) | before | after a full backup | after a restore of it |");
        println!("|---|---|---|---|");
        println!(
            "| MiB | {:.2} | {:.2} | {:.2} |",
            mib(first.median_kib),
            mib(after_backup.median_kib),
            mib(after_restore.median_kib)
        );
        println!(
            "| of which file-backed / anonymous MiB | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
            mib(first.file_kib),
            mib(first.anon_kib),
            mib(after_backup.file_kib),
            mib(after_backup.anon_kib),
            mib(after_restore.file_kib),
            mib(after_restore.anon_kib)
        );
        if std::env::var("BENCH_SMAPS").is_ok() {
            print_smaps(pid);
        }
        println!(
            "| peak RSS (VmHWM) MiB | {:.2} | {:.2} | {:.2} |",
            mib(first.peak_kib),
            mib(after_backup.peak_kib),
            mib(after_restore.peak_kib)
        );
    }
    shutdown.cancel();
}

/// Longer than the agent takes to settle after heavy work (`host::SETTLE`, 12 s).
const SETTLE: Duration = Duration::from_secs(15);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn du(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What an idle agent uses over `seconds`.
struct Idle {
    median_kib: u64,
    peak_kib: u64,
    file_kib: u64,
    anon_kib: u64,
    reports: u64,
    cpu_s: f64,
}

async fn idle(
    pid: u32,
    seconds: u64,
    reports: &mut tandem_transport::Subscription<tandem_proto::StatusReport>,
) -> Idle {
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let cpu0 = cpu_ticks(pid);
    let start = Instant::now();
    let mut count = 0u64;
    let mut rss_samples = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), reports.next()).await
        {
            count += 1;
        }
        rss_samples.push(proc_field(pid, "status", "VmRSS:").unwrap_or(0));
    }
    rss_samples.sort();
    Idle {
        median_kib: rss_samples[rss_samples.len() / 2],
        peak_kib: proc_field(pid, "status", "VmHWM:").unwrap_or(0),
        // Where the resident memory is: file-backed (code and relocated data of the
        // binary) or anonymous (heap, stacks).
        file_kib: proc_field(pid, "status", "RssFile:").unwrap_or(0),
        anon_kib: proc_field(pid, "status", "RssAnon:").unwrap_or(0),
        reports: count,
        cpu_s: (cpu_ticks(pid) - cpu0) as f64 / ticks_per_sec,
    }
}

/// Where the resident memory is, mapping by mapping (BENCH_SMAPS): for finding what
/// heavy work leaves behind.
fn print_smaps(pid: u32) {
    let threads = proc_field(pid, "status", "Threads:").unwrap_or(0);
    eprintln!("threads: {threads}");
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut current = String::new();
    let mut rows: Vec<(u64, u64, String)> = Vec::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            current = line.to_owned();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            rows.push((rss, 0, current.clone()));
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            if let Some(last) = rows.last_mut() {
                last.1 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            }
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (rss, anon, m) in rows.iter().take(25) {
        eprintln!("{rss:>6} kB rss {anon:>6} kB anon  {m}");
    }
}
