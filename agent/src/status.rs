//! Status reports: built from one engine observation plus the agent's own memory,
//! published every interval and at once when something changes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_proto::{
    Envelope, Health, ReplicationState, Role, Sender, StatusReport, Timestamp, VersionRange,
};
use tandem_transport::Transport;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Observation};
use crate::Agent;

/// The parts of a report whose change is news: published at once, not at the next tick.
#[derive(PartialEq)]
struct Significant {
    role: Role,
    writable: Option<bool>,
    health: Health,
    replicates_from: Option<tandem_proto::InstanceId>,
    replicates_to: Vec<tandem_proto::InstanceId>,
    threads: Option<(bool, bool)>,
    diverged: bool,
    fencing_hazards: Vec<String>,
}

impl Significant {
    fn of(r: &StatusReport) -> Self {
        Significant {
            role: r.role,
            writable: r.writable,
            health: r.health,
            replicates_from: r.replicates_from.clone(),
            replicates_to: r.replicates_to.clone(),
            threads: r.replication.as_ref().map(|s| (s.receiving, s.applying)),
            diverged: r.replication.as_ref().is_some_and(|s| s.diverged.is_some()),
            fencing_hazards: r.fencing_hazards.clone(),
        }
    }
}

/// A master's latest observation, held for the renewals that carry it.
pub(crate) struct MasterReport {
    /// When the status loop began to make it.
    observed_at: Instant,
    /// When a report last went out (it, or an earlier one).
    sent_at: Instant,
    report: StatusReport,
}

impl<E: Engine> Agent<E> {
    pub(crate) fn highest_epoch(&self) -> tandem_proto::Epoch {
        self.state.lock().expect("poisoned").highest_epoch
    }

    fn next_sequence(&self, boot: u64) -> u64 {
        (boot << 32) | self.sequence.fetch_add(1, Ordering::SeqCst)
    }

    /// `last` again, as a new report (its own sequence, the current epoch, fence and
    /// operations): a master's renewal between two observations. An observation older
    /// than `stale` (the engine too slow to observe in time: a starved host) is said to
    /// be so, as `degraded`.
    fn resent(&self, last: &StatusReport, age: Duration, stale: Duration) -> StatusReport {
        let (boot, epoch) = {
            let s = self.state.lock().expect("poisoned");
            (s.boot_count, s.highest_epoch)
        };
        let mut report = last.clone();
        report.sequence = self.next_sequence(boot);
        report.highest_epoch = epoch;
        report.fenced = self.lease.fenced();
        report.operations = self.operations.snapshot();
        if age >= stale {
            report.health = Health::Degraded;
            report.last_error = Some(format!(
                "the engine did not answer within {} ms; engine figures are from the last report",
                age.as_millis()
            ));
        }
        report
    }

    /// A fresh report. Never fails: an engine that cannot be observed is reported down.
    pub(crate) async fn report(&self) -> StatusReport {
        let observed = self.engine.observe().await;
        let (boot, source, master, epoch, pair_side) = {
            let s = self.state.lock().expect("poisoned");
            (
                s.boot_count,
                s.source.clone(),
                s.master,
                s.highest_epoch,
                s.pair,
            )
        };
        let sequence = self.next_sequence(boot);
        let host = self
            .host
            .lock()
            .expect("poisoned")
            .sample(&self.settings.engine.data_dir);
        let mut report = StatusReport {
            instance: self.settings.instance_id.clone(),
            zone: self.settings.zone.clone(),
            host_id: self.settings.host_id.clone(),
            tags: self.settings.tags.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            protocol: VersionRange::OURS,
            engine: self.engine.kind(),
            engine_version: None,
            seed_endpoint: Some(self.seed.endpoint.clone()),
            endpoint: Some(tandem_proto::Endpoint {
                host: self.settings.engine.host.clone(),
                port: self.settings.engine.port,
            }),
            role: Role::Unknown,
            writable: None,
            replicates_from: None,
            replicates_to: vec![],
            position: None,
            lag: None,
            seconds_behind_master: None,
            replication: None,
            health: Health::EngineDown,
            last_error: None,
            host,
            highest_epoch: epoch,
            sequence,
            taken_at: Timestamp::now(),
            operations: self.operations.snapshot(),
            engine_settings: Default::default(),
            fenced: self.lease.fenced(),
            lease_ms: master.then_some(self.settings.lease.as_millis() as u64),
            semi_sync: None,
            fencing_hazards: Vec::new(),
            restart_needed: self.restart_needed.lock().expect("poisoned").clone(),
            failsafe: self.failsafe.state(),
            refused_commands: self.transport.refused_commands(),
            pair_side,
        };
        match observed {
            Err(e) => report.last_error = Some(e.to_string()),
            Ok(mut o) => {
                let hazards = std::mem::take(&mut o.fencing_hazards);
                fill(&mut report, o, source.as_ref(), master);
                report.fencing_hazards = self.fencing_hazards(hazards).await;
            }
        }
        report
    }

    /// The accounts that can write past read-only, after the engine took that power
    /// away from them where its configuration says so: what is left is reported as a
    /// fencing hazard.
    async fn fencing_hazards(&self, found: Vec<String>) -> Vec<String> {
        if found.is_empty() {
            return found;
        }
        match self.engine.remove_fencing_hazards(&found).await {
            Ok(left) => left,
            Err(e) => {
                tracing::warn!(error = %e, accounts = ?found, "could not remove the fencing hazards");
                found
            }
        }
    }

    /// Runs until `stop`: probes the engine every probe interval, writes the master's
    /// heartbeat and publishes a report every status interval, and publishes at once on
    /// a command's change or the engine's death. Ends with a `stopping` report.
    pub(crate) async fn status_loop(
        self: Arc<Self>,
        transport: &Transport,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.settings.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_report = Instant::now() - self.settings.status_interval * 2;
        let mut last: Option<Significant> = None;
        let mut engine_up: Option<bool> = None;
        let mut last_threads: Option<Option<(Option<bool>, Option<bool>)>> = None;
        let watchdog = crate::notify::watchdog_interval();
        let mut last_watchdog = Instant::now();
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = self.status_now.notified() => true,
                _ = stop.cancelled() => break,
            };
            if watchdog.is_some_and(|w| last_watchdog.elapsed() >= w) {
                crate::notify::watchdog();
                last_watchdog = Instant::now();
            }
            let pulse = self.engine.probe().await.ok();
            let up = pulse.is_some();
            let threads = pulse.map(|p| (p.receiving, p.applying));
            let liveness_changed = engine_up.is_some_and(|was| was != up)
                || (up && last_threads.is_some_and(|was| was != threads));
            if up && engine_up == Some(false) {
                // The engine restarted: its live settings (replica timeouts among them)
                // are back to its defaults if the managed include was not read.
                let pair = self.state.lock().expect("poisoned").pair;
                match self
                    .engine
                    .apply_managed_config(&self.settings.instance_id, pair)
                    .await
                {
                    Ok(o) => {
                        if !o.applied_live.is_empty() {
                            tracing::info!(settings = ?o.applied_live, "engine back: managed settings applied again");
                        }
                        *self.restart_needed.lock().expect("poisoned") = o.restart_needed;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "engine back: managed settings not applied")
                    }
                }
            }
            engine_up = Some(up);
            // A replica stands by its master (the failsafe) only while it receives.
            let receiving = threads.and_then(|t| t.0) == Some(true);
            let source = self.state.lock().expect("poisoned").source.clone();
            self.failsafe
                .observe(source.filter(|_| receiving).map(|s| s.instance));
            if up {
                last_threads = Some(threads);
            }
            let master = self.state.lock().expect("poisoned").master;
            // A master reports (and so renews its lease) every third of the lease.
            let interval = if master {
                self.settings.status_interval.min(self.settings.lease / 3)
            } else {
                self.settings.status_interval
            };
            let due = last_report.elapsed() >= interval;
            if !(due || forced || liveness_changed) {
                continue;
            }
            if due && up && master {
                // Off the loop: a semi-sync master's write can wait for seconds, and
                // the lease check above must not.
                let agent = self.clone();
                tokio::spawn(async move { agent.heartbeat().await });
            }
            let observing_since = Instant::now();
            let report = self.report().await;
            let significant = Significant::of(&report);
            if due || forced || last.as_ref() != Some(&significant) {
                if last
                    .as_ref()
                    .is_some_and(|l| l.health != significant.health)
                {
                    tracing::warn!(
                        health = ?significant.health,
                        error = report.last_error.as_deref().unwrap_or(""),
                        "engine health changed"
                    );
                }
                if master && report.health != Health::EngineDown {
                    // The keeper sends it on the lease's cadence; a change goes out now.
                    let now = Instant::now();
                    let changed = forced || last.as_ref() != Some(&significant);
                    let mut held = self.last_master_report.lock().expect("poisoned");
                    let sent_at = match held.as_ref() {
                        Some(h) if !changed => h.sent_at,
                        _ => now,
                    };
                    let send = sent_at == now;
                    *held = Some(MasterReport {
                        observed_at: observing_since,
                        sent_at,
                        report: report.clone(),
                    });
                    drop(held);
                    if send {
                        let agent = self.clone();
                        let transport = transport.clone();
                        tokio::spawn(
                            async move { agent.publish_renewing(&transport, report).await },
                        );
                    }
                } else if master {
                    // Nothing to repeat: the engine is down, as this report says.
                    *self.last_master_report.lock().expect("poisoned") = None;
                    let agent = self.clone();
                    let transport = transport.clone();
                    tokio::spawn(async move { agent.publish_renewing(&transport, report).await });
                } else {
                    // No longer a master: nothing of its old observation is ever resent.
                    *self.last_master_report.lock().expect("poisoned") = None;
                    self.publish(transport, report).await;
                }
                last = Some(significant);
                last_report = Instant::now();
            }
        }
        let mut last_words = self.report().await;
        last_words.health = Health::Stopping;
        self.publish(transport, last_words).await;
    }

    /// Sends a master's renewing reports every quarter of its lease, whatever the status
    /// loop is waiting on: each carries the status loop's latest observation (said to be
    /// stale when the engine is too slow to observe in time, as on a host whose CPU other
    /// work saturates). Three renewals go out in every lease, each with at least a
    /// quarter of it for its confirmation, so one slow confirmation on a starved host
    /// does not fence a master that reaches the broker. A hung engine still ends as
    /// "engine down" once the status loop's probe gives up on it.
    pub(crate) async fn keep_master_reporting(
        self: Arc<Self>,
        transport: Transport,
        stop: CancellationToken,
    ) {
        let every = self.settings.lease / 4;
        // The status loop observes a master every third of its lease, looked at each
        // probe interval: an observation older than that, and a little more, is stale.
        let stale =
            self.settings.lease / 3 + self.settings.probe_interval + Duration::from_millis(50);
        loop {
            // Looked at often whatever the role: a server that just became a master has
            // its second renewal due a quarter of a lease after its first.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.lease / 12) => {}
            }
            // Not a master: nothing to keep alive; the status loop reports on its own.
            if !self.state.lock().expect("poisoned").master {
                continue;
            }
            let changed_at = *self.changed_at.lock().expect("poisoned");
            let report = {
                let mut held = self.last_master_report.lock().expect("poisoned");
                match held.as_mut() {
                    // Never an observation begun before the last change: the status
                    // loop's next one, due at once, renews the lease instead.
                    Some(h) if h.sent_at.elapsed() >= every && h.observed_at > changed_at => {
                        h.sent_at = Instant::now();
                        self.resent(&h.report, h.observed_at.elapsed(), stale)
                    }
                    _ => continue,
                }
            };
            let agent = self.clone();
            let transport = transport.clone();
            tokio::spawn(async move { agent.publish_renewing(&transport, report).await });
        }
    }

    /// Fences the engine the moment the lease runs out (and again each probe interval
    /// while that fails), independently of the status loop, until `stop`.
    pub(crate) async fn watch_lease(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = Instant::now();
            let wake = async {
                match self.lease.deadline() {
                    // No lease held (not a master, or fenced already): until one is.
                    None => self.lease.started().await,
                    Some(_) if self.lease.must_fence(now) => {
                        self.fence().await;
                        // Tried again a probe later if the engine could not be fenced.
                        tokio::time::sleep(self.settings.probe_interval).await
                    }
                    // A renewal only moves the deadline later: look again then.
                    Some(deadline) => tokio::time::sleep(deadline - now).await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake => {}
            }
        }
    }

    /// The lease ran out: the engine goes read-only now. The command lock is waited
    /// for only briefly: read-only is the safe direction, and a command stuck on a
    /// lost broker must not keep a cut-off master writable.
    async fn fence(&self) {
        let guard =
            tokio::time::timeout(std::time::Duration::from_millis(100), self.exec_lock.lock())
                .await
                .ok();
        match self.engine.fence().await {
            Ok(()) => {
                self.lease.set_fenced();
                tracing::warn!(
                    lease_ms = self.settings.lease.as_millis() as u64,
                    "lease expired: the broker was not reached within the lease, so the \
                     engine is now read-only until the conductor gives this server a role"
                );
            }
            // Tried again at the next tick; an engine that is down cannot write, and
            // starts read-only.
            Err(e) => {
                tracing::warn!(error = %e, "lease expired but the engine could not be set read-only")
            }
        }
        drop(guard);
    }

    async fn heartbeat(&self) {
        if !self.state.lock().expect("poisoned").master {
            return;
        }
        // Under the command lock: a `set_read_only` or `demote` waits for an in-flight
        // heartbeat, so no heartbeat is written after the master was told to stop
        // writing (it would be an errant transaction on a demoted master).
        let Ok(_guard) = self.exec_lock.try_lock() else {
            return;
        };
        if let Err(e) = self.engine.write_heartbeat().await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }

    /// Publishes with a broker confirm and renews the lease from the moment it was sent.
    async fn publish_renewing(&self, transport: &Transport, report: StatusReport) {
        let sent = Instant::now();
        let envelope = self.envelope(report);
        // Renewed from the send time however late the confirmation (the conductor
        // counts from the arrival, never earlier): on a slow host a late confirmation
        // still renews, and one later than the lease renews nothing.
        let limit = self.settings.lease;
        match tokio::time::timeout(limit, transport.publish_status_confirmed(&envelope)).await {
            Ok(Ok(())) => {
                self.lease.renew(sent, self.settings.lease);
                let took = sent.elapsed();
                if took > limit / 2 {
                    tracing::info!(
                        ms = took.as_millis() as u64,
                        "status report confirmed late (the host or the broker is slow)"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "status report not confirmed: lease not renewed")
            }
            Err(_) => tracing::debug!("status report not confirmed in time: lease not renewed"),
        }
    }

    fn envelope(&self, report: StatusReport) -> Envelope<StatusReport> {
        Envelope::new(
            Sender::Agent {
                instance: self.settings.instance_id.clone(),
            },
            self.settings.instance_id.clone(),
            report.highest_epoch,
            report,
        )
    }

    async fn publish(&self, transport: &Transport, report: StatusReport) {
        let envelope = Envelope::new(
            Sender::Agent {
                instance: self.settings.instance_id.clone(),
            },
            self.settings.instance_id.clone(),
            report.highest_epoch,
            report,
        );
        if let Err(e) = transport.publish_status(&envelope).await {
            tracing::debug!(error = %e, "status report not published");
        }
    }
}

fn fill(
    report: &mut StatusReport,
    o: Observation,
    source: Option<&tandem_proto::SourceEndpoint>,
    master: bool,
) {
    report.engine_version = Some(o.version);
    report.writable = Some(o.writable);
    report.position = Some(o.position);
    report.lag = o.lag;
    report.seconds_behind_master = o.seconds_behind_master;
    report.replicates_to = o.replicas;
    report.health = Health::Healthy;
    report.role = match (&o.source, master || !report.replicates_to.is_empty()) {
        // The active side of a master-master pair replicates its peer too.
        (Some(_), _) if master => Role::Master,
        (Some(_), _) => Role::Replica,
        (None, true) => Role::Master,
        (None, false) => Role::Standalone,
    };
    if let Some((host, port)) = &o.source {
        // The engine knows an address; the agent knows which instance it asked for.
        match source {
            Some(s) if &s.host == host && s.port == *port => {
                report.replicates_from = Some(s.instance.clone())
            }
            _ => {
                report.health = Health::Degraded;
                report.last_error = Some(format!(
                    "the engine replicates from {host}:{port}, which no command of the \
                     conductor asked for"
                ));
            }
        }
    }
    if let Some(ReplicationState {
        receiving,
        applying,
        last_receive_error,
        last_apply_error,
        ..
    }) = &o.replication
    {
        if !receiving || !applying {
            report.health = Health::Degraded;
            report.last_error = last_apply_error
                .clone()
                .or_else(|| last_receive_error.clone())
                .or_else(|| {
                    Some(format!(
                        "replication threads: receiving={receiving}, applying={applying}"
                    ))
                });
        }
    }
    report.replication = o.replication;
    report.semi_sync = o.semi_sync;
    report.engine_settings = o.settings;
}
