use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Tandem's guest agent: obeys the conductor's replication commands for the database
/// engine on this host and reports its status.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML). Default /etc/tandem/agent.toml when it exists;
    /// TANDEM_AGENT_* environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Prints this agent's public key (made in its state directory if it has none yet),
    /// for `tandem instance enroll ID --key KEY`.
    PublicKey,
}

// One thread: the agent does little at a time, and it must stay small inside every VM.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // `Targets` rather than `EnvFilter`: the same RUST_LOG syntax for levels per target,
    // without a regex engine in every VM's agent.
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| "info,lapin=off".parse().expect("a valid default filter"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(filter)
        .init();
    let settings = match tandem_agent::AgentConfig::load(args.config.as_deref())
        .and_then(tandem_agent::AgentConfig::validate)
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem-agent: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Cmd::PublicKey) = args.command {
        return match tandem_agent::identity::key(&settings.state_dir) {
            Ok(key) => {
                println!("{}", key.public_hex());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tandem-agent: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match tandem_agent::run(settings, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping on signal");
    shutdown.cancel();
}
