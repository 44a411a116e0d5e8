//! Tandem's conductor.
//!
//! [`run`] opens the [store] (the only source of truth for intent), resumes any
//! [workflow] a previous process left unfinished, follows every agent's status reports
//! into the [registry], and serves the [HTTP API](api) until `shutdown` is cancelled.
//!
//! Architecture invariant: only the conductor decides roles; agents obey the highest
//! epoch they have seen and report what their engines say.

pub mod access;
pub mod agents;
pub mod api;
pub mod api_tls;
pub mod backoff;
pub mod backups;
pub mod broker_users;
pub mod config;
pub mod decide;
pub mod detector;
pub mod enrolment;
pub mod events;
pub mod failover_memory;
pub mod failpoint;
pub mod failsafe;
pub mod fence;
pub mod intake;
pub mod keys;
pub mod leadership;
pub mod metadata;
pub mod placement;
pub mod provisioner;
pub mod registry;
pub mod store;
pub mod tokens;
pub mod workflow;
pub mod zones;

use std::sync::Arc;

use tandem_transport::{Transport, TransportConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ConductorConfig, Settings};
use store::{InstanceRecord, Store};

/// A backup the conductor asked for and has not recorded yet.
#[derive(Debug, Clone)]
pub struct BackupRun {
    pub instance: tandem_proto::InstanceId,
    pub state: tandem_api::BackupRunState,
    pub error: Option<String>,
    /// The agent's operation (the command's message id) and the epoch it was sent with:
    /// what a cancel names.
    pub operation: tandem_proto::MessageId,
    pub epoch: tandem_proto::Epoch,
}

impl BackupRun {
    pub fn view(&self) -> tandem_api::BackupRunView {
        tandem_api::BackupRunView {
            instance: self.instance.clone(),
            state: self.state,
            error: self.error.clone(),
        }
    }
}

pub struct Conductor {
    pub settings: Settings,
    /// How commands reach agents: the broker, or a fake agent in unit tests.
    pub agents: Box<dyn agents::AgentLink>,
    pub registry: registry::Registry,
    pub store: Box<dyn Store>,
    pub events: events::Events,
    /// Random bytes kept in the data directory: seed tokens and enrolment tokens are
    /// derived from it.
    pub secret: [u8; 32],
    /// The key each instance speaks with: reports and replies signed by any other are
    /// dropped.
    pub enrolments: Arc<enrolment::Enrolments>,
    /// Backups being taken, by backup id (see [`api`]).
    pub backups_running:
        std::sync::Mutex<std::collections::HashMap<tandem_proto::BackupId, BackupRun>>,
    /// Instances with an open drift event.
    open_drift: std::sync::Mutex<std::collections::HashSet<tandem_proto::InstanceId>>,
    /// The failure detector's current verdict on every set.
    pub failover_watch: detector::Watch,
    /// When this process started (the age of a master it never heard from).
    pub started: tokio::time::Instant,
    /// Reports believed and waiting to be processed (see [`intake`]).
    pub intake: intake::Intake,
    /// The store's term this conductor acts in, carried by every command it sends.
    pub term: Option<tandem_proto::Term>,
}

impl Conductor {
    /// Whether a message naming `instance`, from `sender`, is believed (see
    /// [`enrolment`]): an agent enrolling with a valid proof is pinned here; anything
    /// else not signed by the pinned key is dropped, with one event and one log line
    /// per instance, key and reason.
    fn believes(
        &self,
        instance: &tandem_proto::InstanceId,
        sender: &tandem_transport::identity::Sender,
    ) -> bool {
        use enrolment::Admission;
        let refusal = match self.enrolments.admit(instance, sender) {
            Admission::Known => return true,
            Admission::Enrol(key) => match self.enrolments.pin(&*self.store, instance, &key) {
                Ok(_) => {
                    tracing::info!(%instance, %key, "instance enrolled by its token");
                    self.events.publish(events::ApiEvent::InstanceEnrolled {
                        instance: instance.clone(),
                        key: key.to_hex(),
                        by: "token".into(),
                        at: tandem_proto::Timestamp::now(),
                    });
                    return true;
                }
                Err(e) => {
                    tracing::error!(%instance, error = %e, "could not pin an enrolling key");
                    return false;
                }
            },
            Admission::Refused(r) => r,
        };
        if self.enrolments.first_refusal(instance, &refusal) {
            tracing::warn!(%instance, "ignoring a message naming this instance: {refusal}");
            self.events.publish(events::ApiEvent::MessageRefused {
                instance: instance.clone(),
                reason: refusal.to_string(),
                at: tandem_proto::Timestamp::now(),
            });
        }
        false
    }

    /// Says that the status intake fell behind or caught up again.
    fn announce_intake(&self, standing: intake::Standing) {
        let state = self.intake.state();
        let at = tandem_proto::Timestamp::now();
        let lag_ms = state.lag.as_millis() as u64;
        match standing {
            intake::Standing::FellBehind => {
                tracing::warn!(
                    lag_ms,
                    waiting = state.waiting,
                    replaced = state.replaced,
                    backlog = state.backlog,
                    "the status intake is behind: reports wait longer than their period \
                     (in the broker, or here, where only each instance's newest is kept)"
                );
                self.events.publish(events::ApiEvent::IntakeBehind {
                    lag_ms,
                    waiting: state.waiting,
                    replaced: state.replaced,
                    backlog: state.backlog,
                    at,
                });
            }
            intake::Standing::CaughtUp => {
                tracing::info!(lag_ms, "the status intake caught up");
                self.events
                    .publish(events::ApiEvent::IntakeCaughtUp { lag_ms, at });
            }
        }
    }

    /// Raises a drift event for `instance` while its engine differs from the intent (a
    /// workflow in progress on its set is expected drift, so none is raised then), and a
    /// `drift_closed` event once they agree again.
    fn check_drift(&self, instance: &tandem_proto::InstanceId) {
        let Ok(Some(set_id)) = self.store.set_of(instance) else {
            return;
        };
        let busy = self
            .store
            .active_workflows()
            .map(|w| w.iter().any(|w| w.set_id == set_id))
            .unwrap_or(true);
        let Ok(Some(set)) = self.store.set(&set_id) else {
            return;
        };
        let Some(member) = set.members.iter().find(|m| &m.instance == instance) else {
            return;
        };
        let differences = decide::drift::drift(member, self.registry.shared(instance).as_deref());
        let mut open = self.open_drift.lock().expect("poisoned");
        let now = tandem_proto::Timestamp::now();
        if !differences.is_empty() && !busy {
            open.insert(instance.clone());
            tracing::warn!(set = %set_id, instance = %instance, ?differences, "drift between intent and engine");
            self.events.publish(events::ApiEvent::Drift {
                set: set_id.clone(),
                instance: instance.clone(),
                differences,
                at: now,
            });
        } else if differences.is_empty() && open.remove(instance) {
            self.events.publish(events::ApiEvent::DriftClosed {
                set: set_id.clone(),
                instance: instance.clone(),
                at: now,
            });
        }
    }
}

/// Runs the conductor on `settings.listen` until `shutdown`: first it takes the store's
/// leadership (standing by while another conductor holds it), then it listens.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(led) = lead(&settings, &shutdown).await? else {
        return Ok(());
    };
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    run_led(settings, listener, led, shutdown).await
}

/// As [`run`], on a listener the caller bound (tests bind port 0).
pub async fn run_with_listener(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(led) = lead(&settings, &shutdown).await? else {
        return Ok(());
    };
    run_led(settings, listener, led, shutdown).await
}

/// The configured store, opened for a tool beside the acting conductor (the token
/// subcommands): it takes no term, so its writes are not fenced.
pub fn open_store(settings: &Settings) -> anyhow::Result<Box<dyn Store>> {
    Ok(match &settings.store {
        config::StoreSettings::Sqlite => Box::new(store::sqlite::SqliteStore::open(
            &settings.data_dir.join("tandem.db"),
        )?),
        config::StoreSettings::Postgres { url, .. } => {
            Box::new(store::postgres::PgStore::open(url)?)
        }
    })
}

/// The store's leadership, and the store when taking the leadership needed it open.
struct Led {
    leadership: leadership::Leadership,
    /// The shared store, already acting in the lease's term.
    store: Option<Box<dyn Store>>,
}

/// Takes the store's leadership, standing by while another conductor holds it; `None`
/// when `shutdown` came first.
async fn lead(settings: &Settings, shutdown: &CancellationToken) -> anyhow::Result<Option<Led>> {
    match &settings.store {
        config::StoreSettings::Sqlite => Ok(leadership::acquire(&settings.data_dir, shutdown)
            .await?
            .map(|leadership| Led {
                leadership,
                store: None,
            })),
        config::StoreSettings::Postgres { url, lease } => {
            let store = {
                let url = url.clone();
                tokio::task::spawn_blocking(move || store::postgres::PgStore::open(&url)).await??
            };
            let holder = format!(
                "{} (pid {}, {})",
                settings.name,
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            );
            let Some(leadership) = leadership::acquire_lease(url, *lease, holder, shutdown).await?
            else {
                return Ok(None);
            };
            if let leadership::Leadership::Lease(keeper) = &leadership {
                store.act_in(keeper.term)?;
            }
            Ok(Some(Led {
                leadership,
                store: Some(Box::new(store)),
            }))
        }
    }
}

async fn run_led(
    settings: Settings,
    listener: TcpListener,
    led: Led,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Led { leadership, store } = led;
    let db = settings.data_dir.join("tandem.db");
    let fresh = store.is_none() && !db.exists();
    let prepared = match store {
        Some(shared) => prepare(settings, shared, &leadership, &shutdown).await,
        None => match store::sqlite::SqliteStore::open(&db) {
            Ok(local) => prepare(settings, Box::new(local), &leadership, &shutdown).await,
            Err(e) => Err(e),
        },
    };
    let (conductor, transport) = match prepared {
        Ok(c) => c,
        Err(e) => {
            // A conductor that never started leaves no store behind: the next start
            // (with the broker address put right, say) is a first start again. The keys
            // stay: their public halves may already be in agents' configurations.
            if fresh {
                forget_new_store(&db);
            }
            return Err(e);
        }
    };
    tracing::info!(leadership = %leadership.describe(), "acting conductor of this store");
    serve(conductor, transport, listener, leadership, shutdown).await
}

/// Removes a store this process made (and the operator token it wrote for it).
fn forget_new_store(db: &std::path::Path) {
    let mut files = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(name.into());
    }
    if let Some(dir) = db.parent() {
        files.push(dir.join("admin.token"));
    }
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// Everything before serving: the store, the term, the keys, the broker.
async fn prepare(
    settings: Settings,
    store: Box<dyn Store>,
    leadership: &leadership::Leadership,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<Conductor>, Transport)> {
    // A shared store's term was taken with its lease; the local store's is taken now.
    let term = match leadership {
        leadership::Leadership::Lease(keeper) => keeper.term,
        leadership::Leadership::Lock { .. } => store.begin_term()?,
    };
    tracing::info!(term, "this conductor's term");
    if let Some(path) = tokens::bootstrap(&*store, &settings.data_dir)? {
        tracing::warn!(file = %path.display(), "no API token existed: wrote an operator token (`admin`) there");
    }
    let mut transport_config = TransportConfig::new(
        &settings.broker_uri,
        format!("tandem-conductor {}", settings.name),
    );
    transport_config.ca_pem = settings.broker_ca_pem.clone();
    transport_config.other_uris = settings.broker_other_uris.clone();
    transport_config.queue_type = settings.agent_queue_type;
    let signing = keys::signing_key(&settings.data_dir)?;
    tracing::info!(key = signing.id(), public_key = %signing.public_hex(), "commands are signed");
    transport_config.signing_key = Some(Arc::new(signing));
    let secret = keys::load_secret(&settings.data_dir)?;
    let enrolments = Arc::new(enrolment::Enrolments::load(&*store, secret)?);
    transport_config.reply_keys = Some(enrolments.clone());
    let transport = Transport::connect(transport_config, shutdown.clone()).await?;
    let conductor = Conductor::new(
        settings,
        store,
        Box::new(transport.clone()),
        enrolments,
        secret,
    )
    .in_term(tandem_proto::Term::new(term));
    Ok((Arc::new(conductor), transport))
}

impl Conductor {
    /// A conductor on `store`, reaching agents through `agents`.
    pub fn new(
        settings: Settings,
        store: Box<dyn Store>,
        agents: Box<dyn agents::AgentLink>,
        enrolments: Arc<enrolment::Enrolments>,
        secret: [u8; 32],
    ) -> Conductor {
        Conductor {
            secret,
            enrolments,
            backups_running: Default::default(),
            settings,
            agents,
            registry: registry::Registry::default(),
            store,
            events: events::Events::default(),
            open_drift: Default::default(),
            failover_watch: Default::default(),
            started: tokio::time::Instant::now(),
            intake: Default::default(),
            term: None,
        }
    }

    /// Acting in `term` (taken from the store when it began to act).
    #[must_use]
    pub fn in_term(mut self, term: tandem_proto::Term) -> Conductor {
        self.term = Some(term);
        self
    }
}

/// Follows reports, resumes workflows, watches for failures and serves the API until
/// `shutdown`.
async fn serve(
    conductor: Arc<Conductor>,
    transport: Transport,
    listener: TcpListener,
    leadership: leadership::Leadership,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut reports = transport.subscribe_status("#");
    // What waits in the broker, judged once a second beside the intake's own lag.
    let backlog = {
        let (c, seen) = (conductor.clone(), reports.backlog());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some(standing) = c.intake.note_backlog(seen.get(), c.registry.count()) {
                    c.announce_intake(standing);
                }
            }
        })
    };
    // Receiving (and checking the sender) apart from processing: the receiver never
    // waits for the processing, and what waits between them is bounded (`intake`).
    let receiver = {
        let c = conductor.clone();
        tokio::spawn(async move {
            while let Some(received) = reports.next_received().await {
                if c.believes(&received.envelope.body.instance, &received.sender) {
                    c.intake.offer(received.envelope.body);
                }
            }
        })
    };
    // New and moved instances are written to the store off the report path, many to a
    // transaction: after a restart every instance of a fleet is new to the registry,
    // and a commit each would hold the reports up for seconds. At most one record per
    // instance and change waits here.
    let (recorded, mut to_record) = tokio::sync::mpsc::unbounded_channel::<InstanceRecord>();
    let recorder = {
        let c = conductor.clone();
        tokio::spawn(async move {
            while let Some(first) = to_record.recv().await {
                let mut batch = vec![first];
                while batch.len() < 1000 {
                    match to_record.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let c = c.clone();
                let written =
                    tokio::task::spawn_blocking(move || c.store.upsert_instances(&batch)).await;
                if let Ok(Err(e)) = written {
                    tracing::error!(error = %e, "could not record instances");
                }
            }
        })
    };
    let follower = {
        let c = conductor.clone();
        tokio::spawn(async move {
            loop {
                let (r, standing) = c.intake.take().await;
                if let Some(standing) = standing {
                    c.announce_intake(standing);
                }
                let changed = c.registry.significant_change(&r);
                if let Some(event) = changed {
                    c.events.publish(event);
                }
                let instance = r.instance.clone();
                if c.registry.record(r) == Some(true) {
                    if let Some(r) = c.registry.shared(&instance) {
                        let _ = recorded.send(InstanceRecord::of(&r));
                    }
                }
                c.check_drift(&instance);
            }
        })
    };
    let resumed = workflow::resume_all(&conductor)?;
    if resumed > 0 {
        tracing::warn!(resumed, "resumed unfinished workflows");
    }

    let detector_stop = CancellationToken::new();
    tokio::spawn(detector::watch(conductor.clone(), detector_stop.clone()));
    tokio::spawn(placement::watch(conductor.clone(), detector_stop.clone()));

    let app = api::router(conductor.clone());
    let stop = shutdown.clone().cancelled_owned();
    let result = match conductor.settings.api_tls.clone() {
        Some(acceptor) => {
            tracing::info!(listen = %listener.local_addr()?, "tandem-conductor serving HTTPS");
            let listener = api_tls::TlsListener::new(listener, acceptor.0)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        None => {
            tracing::info!(listen = %listener.local_addr()?, "tandem-conductor serving");
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    detector_stop.cancel();
    follower.abort();
    receiver.abort();
    recorder.abort();
    backlog.abort();
    let lost = leadership.lost();
    drop(leadership);
    anyhow::ensure!(
        !lost,
        "this conductor lost the store's leadership and stopped acting; another conductor \
         acts now (started again, this one stands by)"
    );
    result.map_err(Into::into)
}
