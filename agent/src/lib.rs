//! Tandem's guest agent.
//!
//! [`run`] is the whole daemon: it loads its durable [state](state), applies the managed
//! engine configuration, connects to the broker, serves its command queue through the
//! [dispatcher](dispatch) and publishes status reports until `shutdown` is cancelled.
//! `main.rs` only parses arguments and signals.
//!
//! Architecture invariant: the agent never decides a role. It obeys the highest epoch it
//! has seen and reports what its engine says.

mod backup;
mod backup_store;
pub mod config;
mod dispatch;
pub mod engine;
mod failsafe;
mod host;
pub mod identity;
mod lease;
mod notify;
mod operations;
mod seed;
mod state;
mod status;
mod supervisor;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context;
use tandem_proto::InstanceId;
use tandem_transport::{Transport, TransportConfig};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::{AgentConfig, Settings};
pub use engine::{server_id_for, Engine};
pub use seed::SeedTls;

use config::PerEngine;
use engine::mariadb::MariaDb;
use engine::EngineError;
use state::{State, StateFile};

/// One agent: its settings, its engine and its memory.
pub struct Agent<E: Engine> {
    settings: Settings,
    engine: E,
    /// Serializes commands that change anything (and the master's heartbeat write).
    exec_lock: tokio::sync::Mutex<()>,
    /// Places for commands that may wait (`max_waiting`): the rest of the prefetch is
    /// always free for questions.
    waiting: tokio::sync::Semaphore,
    state: std::sync::Mutex<State>,
    state_file: StateFile,
    /// Wakes the status loop for an immediate report.
    status_now: Notify,
    sequence: AtomicU64,
    host: std::sync::Mutex<host::HostProbe>,
    operations: operations::Operations,
    /// Managed settings the engine only takes after a restart, shown in every report
    /// (the agent never restarts an engine on its own: that is the conductor's call);
    /// recomputed whenever the engine comes back.
    restart_needed: std::sync::Mutex<Vec<String>>,
    /// One-time tokens for seeding connections, and where they are accepted.
    seed: seed::SeedOffers,
    /// The master's lease on writability (see [`lease`]).
    lease: lease::Lease,
    /// Its own handle to the broker (for what the transport counts: refused commands).
    transport: Transport,
    /// Its key: opens the secrets sealed to this agent.
    key: Arc<tandem_transport::signing::SigningKey>,
    /// Promises that carry a master through a broker outage (see [`failsafe`]).
    failsafe: failsafe::Failsafe,
    /// A master's latest observation (not "engine down"), which its renewals carry.
    last_master_report: std::sync::Mutex<Option<status::MasterReport>>,
    /// When a command last changed the engine or the agent's role: an observation begun
    /// before it is never resent (it would tell the conductor the old state as news).
    changed_at: std::sync::Mutex<std::time::Instant>,
}

/// Runs the agent until `shutdown` is cancelled: then it stops taking commands, lets the
/// one in flight finish (bounded), publishes a final `stopping` report and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    host::tune_allocator();
    // One TLS provider for the process: seeding, object stores and engine TLS use it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match settings.engine.own.clone() {
        PerEngine::Mariadb(own) => {
            let engine = MariaDb::new(settings.engine.clone(), own);
            run_with(settings, engine, shutdown).await
        }
        PerEngine::Postgresql => anyhow::bail!(
            "field `engine.kind` is \"postgresql\", which this agent version does not support yet"
        ),
    }
}

/// Writes and applies the settings the agent owns; returns those waiting for a restart.
async fn apply_managed_config<E: Engine>(
    engine: &E,
    id: &InstanceId,
    pair: Option<tandem_proto::PairSide>,
) -> Vec<String> {
    let mut restart_needed = Vec::new();
    match engine.apply_managed_config(id, pair).await {
        Ok(o) if !o.restart_needed.is_empty() => {
            tracing::warn!(
                settings = ?o.restart_needed,
                "managed settings need an engine restart to take effect"
            );
            restart_needed = o.restart_needed;
        }
        Ok(o) if !o.applied_live.is_empty() => {
            tracing::info!(settings = ?o.applied_live, "managed settings applied")
        }
        Ok(_) => {}
        // The engine may be down at boot; the status reports say so until it is back.
        Err(e) => tracing::warn!(error = %e, "managed configuration not applied"),
    }
    restart_needed
}

async fn run_with<E: Engine>(
    settings: Settings,
    engine: E,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // First, so every thread the runtime starts from here on inherits it.
    if settings.nice != 0 {
        if let Err(e) = host::set_nice(settings.nice) {
            tracing::warn!(nice = settings.nice, error = %e, "could not raise the agent's scheduling priority");
        }
    }
    let state_file = StateFile::new(&settings.state_dir)?;
    let mut state = state_file.load()?;
    state.boot_count += 1;
    let interrupted = state.fail_interrupted();
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "long commands were interrupted by the last stop: they end as failed, and what \
             they left is cleaned up now"
        );
    }
    state_file
        .save(&state)
        .context("record the agent's start")?;
    let id = settings.instance_id.clone();
    tracing::info!(
        instance_id = %id,
        highest_epoch = state.highest_epoch.get(),
        boot = state.boot_count,
        "tandem-agent starting"
    );

    // The admin account must log in, or nothing the agent is asked can work: a wrong
    // password stops the agent at start, saying so, rather than reporting ready. An
    // engine that is down is fine (it may be starting); the reports say so.
    if let Err(EngineError::LoginRefused(why)) = engine.probe().await {
        anyhow::bail!(
            "fields `engine.admin_user` ({}) and `engine.admin_password_file`: the agent \
             cannot log in to the engine ({why})",
            settings.engine.admin_user
        );
    }

    // The seeding listener is bound before anything is advertised, so a wrong address
    // stops the agent at start, not at the first seeding.
    let seed_listener = tokio::net::TcpListener::bind(settings.seed_listen)
        .await
        .with_context(|| {
            format!(
                "field `seed.listen`: cannot listen on {}",
                settings.seed_listen
            )
        })?;
    let seed_endpoint = tandem_proto::Endpoint {
        host: settings.seed_advertise_host.clone(),
        port: seed_listener.local_addr()?.port(),
    };

    // The transport outlives command intake, so the last report still gets out.
    let transport_shutdown = CancellationToken::new();
    let mut transport_config =
        TransportConfig::new(&settings.broker_uri, format!("tandem-agent {id}"));
    transport_config.other_uris = settings.broker_other_uris.clone();
    transport_config.queue_type = settings.queue_type;
    transport_config.delivery_limit = settings.delivery_limit;
    transport_config.ca_pem = settings.broker_ca_pem.clone();
    transport_config.prefetch = settings.prefetch;
    tracing::info!(keys = ?settings.trusted_keys, "only commands signed by these conductor keys are obeyed");
    transport_config.trusted_keys = Some(settings.trusted_keys.clone());
    let key = Arc::new(identity::key(&settings.state_dir)?);
    tracing::info!(public_key = %key.public_hex(), "this agent signs its reports and replies with this key");
    transport_config.enrolment_proof = settings.enrolment_token.as_deref().map(|token| {
        tandem_transport::identity::enrolment_proof(token, id.as_str(), &key.public_key())
    });
    transport_config.signing_key = Some(key.clone());
    transport_config.replay_window = settings.max_deadline;
    transport_config.declares = settings.broker_declares;
    let transport = tokio::select! {
        t = Transport::connect(transport_config, transport_shutdown.clone()) => t?,
        _ = shutdown.cancelled() => return Ok(()),
    };

    // Only now that the broker is reached does the agent change anything on the
    // engine: an agent that cannot reach its conductor leaves the engine as it was.
    let restart_needed = apply_managed_config(&engine, &id, state.pair).await;

    // The failsafe answers on the seeding listener's address, over UDP.
    let failsafe_socket = match tokio::net::UdpSocket::bind(seed_listener.local_addr()?).await {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::warn!(error = %e, "no failsafe socket: as a master this server fences \
                after one lease without the broker; as a replica it promises nothing");
            None
        }
    };
    let settings_lease = settings.lease;
    let settings_max_waiting = settings.max_waiting;
    let agent = Arc::new(Agent {
        settings,
        engine,
        exec_lock: tokio::sync::Mutex::new(()),
        waiting: tokio::sync::Semaphore::new(settings_max_waiting),
        state: std::sync::Mutex::new(state),
        state_file,
        status_now: Notify::new(),
        sequence: AtomicU64::new(0),
        host: std::sync::Mutex::new(host::HostProbe::new()),
        operations: operations::Operations::default(),
        restart_needed: std::sync::Mutex::new(restart_needed),
        seed: seed::SeedOffers::new(seed_endpoint),
        lease: lease::Lease::default(),
        transport: transport.clone(),
        key,
        failsafe: failsafe::Failsafe::new(id.clone(), settings_lease),
        last_master_report: std::sync::Mutex::new(None),
        changed_at: std::sync::Mutex::new(std::time::Instant::now()),
    });
    // A master restarted into a partition fences itself after one lease, as if the
    // lease had just been granted.
    if agent.state.lock().expect("poisoned").master {
        agent.lease.granted(true, agent.settings.lease);
    }
    // The lease is watched by a task of its own: whatever the status loop waits on (a
    // slow engine, an unconfirmed report), the fence comes when the lease runs out.
    let lease_stop = CancellationToken::new();
    tokio::spawn(agent.clone().watch_lease(lease_stop.clone()));
    tokio::spawn(
        agent
            .clone()
            .keep_master_reporting(transport.clone(), lease_stop.clone()),
    );
    let jobs = agent.operations.open();
    let runner = tokio::spawn(agent.clone().run_operations(jobs, transport.clone()));

    let seed_stop = CancellationToken::new();
    tokio::spawn(agent.clone().serve_seeds(seed_listener, seed_stop.clone()));
    if let Some(socket) = failsafe_socket {
        tokio::spawn(
            agent
                .clone()
                .serve_failsafe(socket.clone(), lease_stop.clone()),
        );
        tokio::spawn(agent.clone().hold_by_failsafe(socket, lease_stop.clone()));
    }

    transport.declare_agent_queue(&id).await?;
    let status_stop = CancellationToken::new();
    let status = {
        let agent = agent.clone();
        let transport = transport.clone();
        let stop = status_stop.clone();
        tokio::spawn(async move { agent.status_loop(&transport, stop).await })
    };
    notify::ready();
    tracing::info!(instance_id = %id, "tandem-agent ready");
    // Start-up is over in a few seconds; then the code only it needed goes back to the
    // page cache (see `host::page_out_cold_code`), and again every hour after a backup
    // or a seeding may have brought more in.
    {
        let stop = status_stop.clone();
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_secs(5);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let bytes = host::page_out_cold_code();
                tracing::debug!(bytes, "code pages handed back to the page cache");
                wait = std::time::Duration::from_secs(3600);
            }
        });
    }

    let served = transport
        .serve_commands(&id, agent.clone(), &shutdown)
        .await;
    notify::stopping();
    // A long command still running is abandoned: its record is forgotten at the next
    // start, so the conductor's re-send runs it again.
    runner.abort();
    seed_stop.cancel();
    status_stop.cancel();
    lease_stop.cancel();
    let _ = status.await;
    transport_shutdown.cancel();
    tracing::info!(instance_id = %id, "tandem-agent stopped");
    served.map_err(Into::into)
}
