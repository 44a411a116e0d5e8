//! The agent's footprint: resident memory while idle and CPU time per status report,
//! for the release binary managing a real MariaDB, reporting every second.
//!
//! The shipped agent is built with the `agent` profile; measure that one:
//! `cargo build --profile agent -p tandem-agent && \
//!  TANDEM_AGENT_BIN=target/agent/tandem-agent cargo bench -p tandem-agent --bench idle`
//! (BENCH_SECONDS, default 30). Without TANDEM_AGENT_BIN the release build is measured.

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
    let agent =
        AgentProcess::start_mariadb(binary.as_ref(), "bench-1", "zone-a", broker.uri(), &db)
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

    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let cpu0 = cpu_ticks(pid);
    let start = Instant::now();
    let mut count = 0u64;
    let mut peak_rss = 0u64;
    let mut rss_samples = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), reports.next()).await
        {
            count += 1;
        }
        let rss = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
        peak_rss = peak_rss.max(proc_field(pid, "status", "VmHWM:").unwrap_or(0));
        rss_samples.push(rss);
    }
    let cpu = (cpu_ticks(pid) - cpu0) as f64 / ticks_per_sec;
    // Where the resident memory is: file-backed (code and relocated data of the
    // binary) or anonymous (heap, stacks).
    let file_rss = proc_field(pid, "status", "RssFile:").unwrap_or(0);
    let anon_rss = proc_field(pid, "status", "RssAnon:").unwrap_or(0);
    rss_samples.sort();
    let median = rss_samples[rss_samples.len() / 2];
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
        median as f64 / 1024.0
    );
    println!("| peak RSS (VmHWM) | {:.2} MiB |", peak_rss as f64 / 1024.0);
    println!(
        "| of which file-backed / anonymous (at the end) | {:.2} / {:.2} MiB |",
        file_rss as f64 / 1024.0,
        anon_rss as f64 / 1024.0
    );
    println!("| status reports received | {count} |");
    println!("| CPU time total | {:.3} s |", cpu);
    println!(
        "| CPU time per status report (incl. 5 probes) | {:.2} ms |",
        cpu * 1000.0 / count.max(1) as f64
    );
    println!(
        "| CPU share | {:.2} % |",
        cpu * 100.0 / start.elapsed().as_secs_f64()
    );
    shutdown.cancel();
}
