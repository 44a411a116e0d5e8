use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Tandem's conductor: decides replication topology, drives the agents, serves the API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML). Default /etc/tandem/conductor.toml when it exists;
    /// TANDEM_CONDUCTOR_* environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Prints the public key commands are signed with (made on first use), for the
    /// agents' `conductor_keys`.
    PublicKey,
    /// API tokens: make one (printed once, stored hashed), list them, revoke one.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(clap::Subcommand)]
enum TokenCmd {
    /// Makes a token and prints it; `reader` may read, `operator` may also change.
    Create {
        name: String,
        #[arg(long, default_value = "reader")]
        role: String,
    },
    List,
    Revoke {
        name: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=off".into()),
        )
        .init();
    let settings = match tandem_conductor::ConductorConfig::load(args.config.as_deref())
        .and_then(tandem_conductor::ConductorConfig::validate)
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem-conductor: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Sub::PublicKey) = args.command {
        return match tandem_conductor::keys::signing_key(&settings.data_dir) {
            Ok(key) => {
                println!("{}", key.public_hex());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tandem-conductor: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Sub::Token(cmd)) = args.command {
        return match token(&settings, cmd) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tandem-conductor: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match tandem_conductor::run(settings, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            // At once, without waiting for tasks to wind down: a conductor that lost the
            // store's leadership must not go on acting while it does.
            std::process::exit(1)
        }
    }
}

/// The token subcommands, on the configured store (beside a running conductor: the
/// store takes concurrent writers).
fn token(settings: &tandem_conductor::Settings, cmd: TokenCmd) -> anyhow::Result<()> {
    use tandem_conductor::tokens::{self, Role};
    let store = tandem_conductor::open_store(settings)?;
    match cmd {
        TokenCmd::Create { name, role } => {
            let role = Role::parse(&role).map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            println!("{}", tokens::create(&*store, &name, role)?);
        }
        TokenCmd::List => {
            for t in store.tokens()? {
                println!("{:<24} {}", t.name, t.role.as_str());
            }
        }
        TokenCmd::Revoke { name } => {
            anyhow::ensure!(store.revoke_token(&name)?, "no token is named {name:?}");
            println!("revoked {name}");
        }
    }
    Ok(())
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
