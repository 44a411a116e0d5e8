//! The one dispatcher over the command enum.
//!
//! Order of checks for every command: deadline, protocol version, known command; then,
//! for commands that change anything: the record of earlier results (a repeat is
//! answered from it, never re-run, whatever epoch it carries), the epoch fence,
//! execution, and the record written before the reply leaves.

use std::time::Duration;

use tandem_proto::{
    Command, CommandError, Envelope, ErrorKind, ReplicationCredentials, Reply, ReplyBody, Sealed,
    Secret, Sender, Timestamp, VersionRange,
};
use tandem_transport::sealing::SealTo;
use tandem_transport::CommandHandler;

use crate::engine::{Engine, ReplicationLogin};
use crate::Agent;

impl<E: Engine> CommandHandler for Agent<E> {
    async fn handle(&self, command: Envelope<Command>, redelivered: bool) -> Envelope<Reply> {
        let started = std::time::Instant::now();
        let reply = match redelivered
            .then(|| self.count_redelivery(&command))
            .flatten()
        {
            Some(refused) => refused,
            None => self.execute(&command).await,
        };
        let outcome = match &reply {
            Reply::Ok(_) => "ok".to_string(),
            Reply::Err(e) => format!("{:?}", e.kind),
        };
        tracing::info!(
            command = command.body.name(),
            command_id = %command.message_id,
            epoch = command.epoch.get(),
            redelivered,
            outcome,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "command handled"
        );
        let me = Sender::Agent {
            instance: self.settings.instance_id.clone(),
        };
        command.answer(me, self.highest_epoch(), reply)
    }
}

impl<E: Engine> Agent<E> {
    /// Counts a redelivery of `command` in the durable state before it runs again; past
    /// the delivery limit, the refusal to answer instead (recorded, so every re-send
    /// gets it). A command that stops the agent each time it runs (a poison message)
    /// then ends instead of looping: quorum queues bound this themselves
    /// (`x-delivery-limit`), classic queues do not, so the agent does it for both.
    fn count_redelivery(&self, command: &Envelope<Command>) -> Option<Reply> {
        let mut state = self.state.lock().expect("poisoned");
        if state.result_of(&command.message_id).is_some() {
            return None; // answered from the record: nothing runs
        }
        let deliveries = state.redelivered(command.message_id);
        let limit = self.settings.delivery_limit;
        let refused = (deliveries > limit).then(|| {
            tracing::error!(
                command = command.body.name(),
                command_id = %command.message_id,
                deliveries,
                "refusing a command delivered more often than the delivery limit without \
                 an answer: the agent stopped each time it ran it"
            );
            let mut e = CommandError::new(
                ErrorKind::Internal,
                format!(
                    "command {} was delivered {deliveries} times and never answered: the \
                     agent stopped each time it ran it (its log says why); it is not run \
                     again (delivery limit {limit})",
                    command.body.name()
                ),
            );
            e.retryable = false;
            let reply = Reply::Err(e);
            state.record(command.message_id, reply.clone());
            reply
        });
        if let Err(e) = self.state_file.save(&state) {
            return Some(internal(e.context("count a redelivered command")));
        }
        refused
    }

    async fn execute(&self, command: &Envelope<Command>) -> Reply {
        if command.is_expired(Timestamp::now()) {
            return Reply::Err(CommandError::new(
                ErrorKind::TimedOut,
                format!(
                    "command {} arrived after its deadline and was not run",
                    command.body.name()
                ),
            ));
        }
        // Nothing may sit in the queue, or wait here, beyond a bound: a command with no
        // deadline, or one too far out, is refused (the conductor always sets one).
        let Some(deadline) = command.expires_at else {
            return Reply::Err(CommandError::bad_request(format!(
                "command {} carries no deadline; every command must (`expires_at`)",
                command.body.name()
            )));
        };
        if deadline.remaining() > self.settings.max_deadline {
            return Reply::Err(CommandError::bad_request(format!(
                "command {} has a deadline {} s away; this agent takes none further than \
                 `max_deadline_s` ({} s)",
                command.body.name(),
                deadline.remaining().as_secs(),
                self.settings.max_deadline.as_secs()
            )));
        }
        if !VersionRange::OURS.contains(command.protocol_version) {
            return Reply::Err(CommandError::unsupported(format!(
                "this agent speaks protocol {}, the command was sent as {}",
                VersionRange::OURS,
                command.protocol_version
            )));
        }
        if command.target != self.settings.instance_id {
            return Reply::Err(CommandError::bad_request(format!(
                "command for {} reached the agent of {}",
                command.target, self.settings.instance_id
            )));
        }
        match &command.body {
            Command::Unknown => Reply::Err(CommandError::unsupported(format!(
                "tandem-agent {} does not know this command; upgrade the agent",
                env!("CARGO_PKG_VERSION")
            ))),
            // Questions: answered whatever the epoch, never recorded.
            Command::Ping => Reply::Ok(ReplyBody::Pong {
                agent_version: env!("CARGO_PKG_VERSION").into(),
                protocol: VersionRange::OURS,
            }),
            Command::GetStatus => Reply::Ok(ReplyBody::Status {
                report: Box::new(self.report().await),
            }),
            // Stopping a long operation only ever leaves the server as it was: it needs no
            // turn at the engine (the operation may hold it) and no epoch (a backup runs
            // across topology changes); it is answered at once, the operation's own
            // result tells how it ended.
            Command::CancelOperation { operation } => match self.operations.cancel(operation) {
                crate::operations::Cancelled::Requested => {
                    tracing::warn!(%operation, "the conductor cancels a long command");
                    Reply::Ok(ReplyBody::Done)
                }
                crate::operations::Cancelled::NotRunning => {
                    Reply::Err(CommandError::bad_request(format!(
                        "operation {operation} is not running on {} (it ended, or never \
                         came); a re-send of it is answered with its result",
                        self.settings.instance_id
                    )))
                }
            },
            Command::GetLatestPosition => self
                .engine
                .latest_position()
                .await
                .map(|position| ReplyBody::Position { position })
                .map_err(CommandError::from)
                .into(),
            Command::WaitForPosition {
                position,
                timeout_ms,
            } => {
                let Some(_turn) = self.waiting_turn() else {
                    return Reply::Err(self.busy(command));
                };
                let timeout = self.bounded_wait(*timeout_ms, command);
                self.engine
                    .wait_for_position(position, timeout)
                    .await
                    .map(|()| ReplyBody::Done)
                    .map_err(CommandError::from)
                    .into()
            }
            _ => self.execute_change(command).await,
        }
    }

    /// Commands that change the engine or the agent: fenced, serialized, recorded.
    async fn execute_change(&self, command: &Envelope<Command>) -> Reply {
        let Some(_turn) = self.waiting_turn() else {
            return Reply::Err(self.busy(command));
        };
        let remaining = command
            .expires_at
            .map(|d| d.remaining())
            .unwrap_or_default();
        let Ok(_one_at_a_time) = tokio::time::timeout(remaining, self.exec_lock.lock()).await
        else {
            return Reply::Err(CommandError::new(
                ErrorKind::TimedOut,
                format!(
                    "command {} reached its deadline waiting for the commands before it",
                    command.body.name()
                ),
            ));
        };
        {
            let mut state = self.state.lock().expect("poisoned");
            // A repeat is answered from the record whatever the epoch: nothing runs, and
            // a long command followed by re-sends (a backup) outlives epoch changes.
            if let Some(recorded) = state.result_of(&command.message_id) {
                return recorded.clone();
            }
            if command.epoch < state.highest_epoch {
                return Reply::Err(CommandError::new(
                    ErrorKind::Fenced,
                    format!(
                        "command {} carries epoch {} but this agent has seen epoch {}; it \
                         comes from before a topology change and was not run",
                        command.body.name(),
                        command.epoch,
                        state.highest_epoch
                    ),
                ));
            }
            if let (Some(term), Some(seen)) = (command.term, state.highest_term) {
                if term < seen {
                    return Reply::Err(CommandError::new(
                        ErrorKind::Fenced,
                        format!(
                            "command {} comes from conductor term {term} but this agent has \
                             seen term {seen}: its conductor was replaced, and it was not run",
                            command.body.name()
                        ),
                    ));
                }
            }
            let newer_term = command.term > state.highest_term;
            if command.epoch > state.highest_epoch || newer_term {
                state.highest_epoch = state.highest_epoch.max(command.epoch);
                state.highest_term = state.highest_term.max(command.term);
                if let Err(e) = self.state_file.save(&state) {
                    return internal(e.context("persist the new epoch and term"));
                }
            }
        }

        // For crash tests: as a command that crashes the agent would, past the record
        // and the fence, where it starts to run.
        if self.settings.crash_on_command.as_deref() == Some(command.body.name()) {
            tracing::error!(command = command.body.name(), "crash_on_command: aborting");
            std::process::abort();
        }

        // A replica that promised its master to stay (the failsafe) keeps its word
        // before anything that could end in its promotion.
        if command.body.withdraws_promise() {
            let wait = self
                .failsafe
                .withdraw(std::time::Instant::now(), command.epoch);
            if !wait.is_zero() {
                tracing::info!(
                    command = command.body.name(),
                    wait_ms = wait.as_millis() as u64,
                    "waiting out the failsafe promise given to the master"
                );
                tokio::time::sleep(wait).await;
            }
        }

        if command.body.is_long_running() {
            // What can be judged now is judged now, not in an event a minute later. (A
            // backup id is checked where it is decoded: `BackupId` holds only a plain
            // file name.)
            if let Command::SeedFrom(source) = &command.body {
                if source.instance == self.settings.instance_id {
                    return Reply::Err(CommandError::bad_request(format!(
                        "{} cannot be seeded from itself",
                        source.instance
                    )));
                }
                if let Err(e) = self.open(&source.token, "the seed token") {
                    return Reply::Err(e);
                }
            }
            let operation = command.message_id;
            let accepted = Reply::Ok(ReplyBody::Accepted { operation });
            {
                let mut state = self.state.lock().expect("poisoned");
                state.record(operation, accepted.clone());
                if let Err(e) = self.state_file.save(&state) {
                    return internal(e.context("record an accepted long command"));
                }
            }
            if let Err(e) = self.operations.submit(crate::operations::Job {
                operation,
                command: command.body.clone(),
                epoch: command.epoch,
            }) {
                return Reply::Err(e);
            }
            return accepted;
        }

        let wait_limit = self.bounded_wait(u64::MAX, command);
        let reply: Reply = self.run_change(&command.body, wait_limit).await.into();
        if matches!(reply, Reply::Ok(_)) && command.body.grants_role() {
            let master = self.state.lock().expect("poisoned").master;
            self.lease.granted(master, self.settings.lease);
            self.failsafe.role_changed(master);
        }

        // Retryable failures are not recorded: a re-send must try again.
        let keep = match &reply {
            Reply::Ok(_) => true,
            Reply::Err(e) => !e.retryable,
        };
        if keep {
            let mut state = self.state.lock().expect("poisoned");
            state.record(command.message_id, reply.clone());
            if let Err(e) = self.state_file.save(&state) {
                tracing::error!(error = %format!("{e:#}"), "could not persist a command result");
            }
        }
        *self.changed_at.lock().expect("poisoned") = std::time::Instant::now();
        self.status_now.notify_one();
        reply
    }

    /// `wait_limit`: the longest any wait inside may take (`max_wait`, the deadline).
    async fn run_change(
        &self,
        command: &Command,
        wait_limit: Duration,
    ) -> Result<ReplyBody, CommandError> {
        let me = &self.settings.instance_id;
        match command {
            Command::SetReadOnly => {
                self.engine.set_writable(false).await?;
            }
            Command::SetWritable => {
                self.engine.set_writable(true).await?;
            }
            Command::StopWrites => {
                self.engine.set_writable(false).await?;
                let position = self.engine.latest_position().await?;
                return Ok(ReplyBody::Position { position });
            }
            Command::TakeOverWrites {
                position,
                timeout_ms,
            } => {
                // A plain replica made writable while it replicates would take writes
                // its source never sees: only a side of a pair replicates both ways.
                if self.state.lock().expect("poisoned").pair.is_none() {
                    return Err(CommandError::bad_request(format!(
                        "take_over_writes is for a side of a master-master pair, and {me} \
                         is none (configure_pair first); it stays as it is"
                    )));
                }
                let wait = Duration::from_millis(*timeout_ms).min(wait_limit);
                self.engine.wait_for_position(position, wait).await?;
                // Nothing more comes from the peer (it stopped writing at `position`), so
                // what this server holds now is what it becomes writable with.
                let reached = self.engine.latest_position().await?;
                if let Some(errant) = reached.beyond(&[position]) {
                    return Err(CommandError::new(
                        ErrorKind::Diverged,
                        format!(
                            "errant: {me} (at {reached}) holds {errant}, which its peer (at \
                             {position}) never had; it stays read-only and never takes the \
                             writes"
                        ),
                    ));
                }
                self.engine.set_writable(true).await?;
                return Ok(ReplyBody::Position { position: reached });
            }
            Command::EnableAsMaster { semi_sync } => {
                if let Some(s) = semi_sync {
                    let lease = self.settings.lease;
                    if Duration::from_millis(s.timeout_ms) < lease * 2 {
                        return Err(CommandError::bad_request(format!(
                            "a semi-sync timeout of {} ms is too short for this agent's lease \
                             of {} ms: a master cut off from its replicas would acknowledge \
                             writes (falling back to asynchronous) before it fences itself; \
                             make the timeout at least twice the lease",
                            s.timeout_ms,
                            lease.as_millis()
                        )));
                    }
                }
                self.engine.prepare_master().await?;
                self.engine
                    .set_semi_sync(
                        semi_sync.map(|s| Duration::from_millis(s.timeout_ms)),
                        false,
                    )
                    .await?;
                self.update_state(|s| s.master = true)?;
            }
            Command::Demote => {
                self.update_state(|s| s.master = false)?;
                self.engine.set_writable(false).await?;
                self.engine.set_semi_sync(None, false).await?;
            }
            Command::CreateReplicationUser {
                replica,
                from,
                seal_to,
            } => {
                if replica == me {
                    return Err(CommandError::bad_request(format!(
                        "{me} cannot be its own replica"
                    )));
                }
                // The password is sealed straight to the replica: nobody on the way (the
                // broker, the conductor, its journal) can read it.
                let seal_to = SealTo::new(&(*seal_to).into()).map_err(|e| {
                    CommandError::bad_request(format!("field `seal_to` ({replica}'s key): {e}"))
                })?;
                let login = self
                    .engine
                    .ensure_replication_user(replica, from.as_deref())
                    .await?;
                return Ok(ReplyBody::Credentials {
                    credentials: ReplicationCredentials {
                        user: login.user,
                        password: seal_to.seal(&login.password),
                    },
                });
            }
            Command::DropReplicationUser { replica } => {
                self.engine.drop_replication_user(replica).await?;
            }
            Command::AttachToSource {
                source,
                credentials,
                position,
                semi_sync,
                delay_s,
                paused,
                filter,
                peer,
            } => {
                if *peer && !self.state.lock().expect("poisoned").master {
                    return Err(CommandError::bad_request(
                        "only the master attaches as the writable side of a pair",
                    ));
                }
                let login = ReplicationLogin {
                    user: credentials.user.clone(),
                    password: self.open(&credentials.password, "the replication password")?,
                };
                if !*peer {
                    self.engine.set_semi_sync(None, *semi_sync).await?;
                }
                self.engine
                    .attach(
                        me,
                        source,
                        &login,
                        position.as_ref(),
                        &crate::engine::Applying {
                            delay: Duration::from_secs(*delay_s),
                            paused: paused.clone(),
                            filter: filter.clone(),
                            peer: *peer,
                        },
                    )
                    .await?;
                self.update_state(|s| {
                    s.source = Some(source.clone());
                    // The active side of a pair stays the master.
                    s.master &= *peer;
                })?;
            }
            Command::Quarantine => {
                self.update_state(|s| s.master = false)?;
                self.engine.set_writable(false).await?;
                self.engine.set_semi_sync(None, false).await?;
                match self.engine.detach(me).await {
                    // Not a replica (any more): nothing to stop.
                    Ok(()) | Err(crate::engine::EngineError::BadRequest(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                self.update_state(|s| s.source = None)?;
            }
            Command::Detach => {
                self.engine.detach(me).await?;
                self.update_state(|s| s.source = None)?;
                self.engine.set_writable(true).await?;
            }
            Command::PauseReplication { until } => {
                let position = self.engine.pause_replication(until.as_ref()).await?;
                return Ok(ReplyBody::Position { position });
            }
            Command::ConfigurePair { side } => {
                // Applied to the engine first, then recorded: a restart re-applies what
                // the record says, so the record never claims what the engine refused.
                self.engine.apply_managed_config(me, *side).await?;
                self.update_state(|s| s.pair = *side)?;
            }
            Command::ListDatabases => {
                let names = self.engine.databases().await?;
                return Ok(ReplyBody::Databases { names });
            }
            Command::ResumeReplication { semi_sync } => {
                self.engine.resume_replication(*semi_sync).await?;
            }
            Command::DrainReceived { timeout_ms } => {
                let position = self
                    .engine
                    .drain(Duration::from_millis(*timeout_ms).min(wait_limit))
                    .await?;
                return Ok(ReplyBody::Position { position });
            }
            Command::DeleteBackup { backup_id } => self.delete_backup(backup_id).await?,
            Command::OfferSeed { token, ttl_ms } => {
                let token = self.open(token, "the seed token")?;
                self.seed
                    .offer(token.expose(), Duration::from_millis(*ttl_ms))?
            }
            Command::Failsafe(assignment) => {
                let mut resolved = Vec::new();
                if let tandem_proto::FailsafeAssignment::Master { peers } = assignment {
                    for p in peers {
                        resolved.push(match &p.endpoint {
                            Some(e) => tokio::net::lookup_host((e.host.as_str(), e.port))
                                .await
                                .ok()
                                .and_then(|mut a| a.next()),
                            None => None,
                        });
                    }
                }
                let open = |sealed: &Sealed| self.key.open(sealed).map_err(|e| e.to_string());
                self.failsafe
                    .assign(assignment, self.highest_epoch(), resolved, &open)
                    .map_err(CommandError::bad_request)?;
            }
            Command::StopEngine => self.engine.stop().await?,
            Command::StartEngine => self.engine.start().await?,
            Command::TakeBackup(_) | Command::Restore(_) | Command::SeedFrom(_) => {
                unreachable!("long commands go to the operation runner")
            }
            Command::Ping
            | Command::GetStatus
            | Command::GetLatestPosition
            | Command::WaitForPosition { .. }
            | Command::CancelOperation { .. }
            | Command::Unknown => unreachable!("answered before the change path"),
        }
        Ok(ReplyBody::Done)
    }

    /// A secret sealed to this agent, opened; `what` names it in the error.
    pub(crate) fn open(&self, sealed: &Sealed, what: &str) -> Result<Secret, CommandError> {
        self.key
            .open(sealed)
            .map_err(|e| CommandError::bad_request(format!("{what}: {e}")))
    }

    pub(crate) fn update_state(
        &self,
        change: impl FnOnce(&mut crate::state::State),
    ) -> Result<(), CommandError> {
        let mut state = self.state.lock().expect("poisoned");
        change(&mut state);
        self.state_file.save(&state).map_err(|e| {
            CommandError::new(
                ErrorKind::Internal,
                format!("the change was made but could not be recorded: {e:#}"),
            )
        })
    }
}

fn internal(e: anyhow::Error) -> Reply {
    Reply::Err(CommandError::new(ErrorKind::Internal, format!("{e:#}")))
}

impl<E: Engine> Agent<E> {
    /// A place among the commands that may wait (`max_waiting`), held while it runs;
    /// `None` when all are taken.
    fn waiting_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.waiting.try_acquire().ok()
    }

    fn busy(&self, command: &Envelope<Command>) -> CommandError {
        CommandError::new(
            ErrorKind::TimedOut,
            format!(
                "busy: {} commands are already waiting here (`max_waiting`); {} was not run, \
                 send it again",
                self.settings.max_waiting,
                command.body.name()
            ),
        )
    }

    /// What a command asks to wait, bounded by `max_wait` and its deadline.
    fn bounded_wait(&self, timeout_ms: u64, command: &Envelope<Command>) -> Duration {
        let mut timeout = Duration::from_millis(timeout_ms).min(self.settings.max_wait);
        if let Some(deadline) = command.expires_at {
            timeout = timeout.min(deadline.remaining());
        }
        timeout
    }
}
