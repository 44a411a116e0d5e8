//! Journaled workflows.
//!
//! A workflow is a function of its parameters and the results of its earlier steps. Each
//! step is written to the store's journal (with the message id it will use) before its
//! command is published, and its reply is written when it comes. After a conductor
//! restart the function simply runs again from the top: steps with a recorded result
//! return it without sending anything, a step that was in flight is re-sent with the
//! same message id (the agent answers a repeat from its own record), and the first step
//! never journaled runs for real. The same holds for topology changes, which are
//! journaled in the transaction that applies them. So a crash between any two steps is
//! survivable with no manual reset.

mod attach;
mod create_set;
mod detach;
mod failover;
mod failsafe;
pub mod provision;
mod quarantine;
mod rejoin;
mod repoint;
mod semi_sync;
mod switchover;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;
use tandem_proto::{
    Command, CommandError, Epoch, ErrorKind, InstanceId, MessageId, Reply, ReplyBody, Sealed,
    Secret, SourceEndpoint, Timestamp,
};

use crate::store::{
    JournalEntry, ReplicaSet, StoreError, TopologyChange, WorkflowRow, WorkflowState,
};
use crate::Conductor;

use tandem_api::WorkflowKind;
/// What a workflow was asked to do: the API's type, so that what an operator sees
/// of a workflow is exactly what it runs on.
pub use tandem_api::WorkflowSpec as Spec;

/// How a workflow ended when it did not fail outright.
pub enum Outcome {
    Done,
    /// It could not finish and put things back as they were; the reason is kept.
    RolledBack(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("step {step}: {target} answered: {error}")]
    Command {
        step: String,
        target: InstanceId,
        error: CommandError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Precondition(String),
    #[error("step {step}: not started: the workflow was cancelled by {by}")]
    Cancelled { step: String, by: String },
}

/// A named crash point, for proving that every step survives a conductor crash:
/// `TANDEM_CONDUCTOR_FAILPOINT=<workflow kind>:<step number>:<before|sent|after>`.
/// `before`: journaled, not sent. `sent`: the agent ran it, the reply is not recorded
/// (the hardest case: on resume the same message id goes out again). `after`: recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failpoint {
    pub kind: WorkflowKind,
    pub seq: u32,
    pub at: Point,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Before,
    Sent,
    After,
}

impl std::str::FromStr for Failpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            [kind, seq, when @ ("before" | "sent" | "after")] => Ok(Failpoint {
                kind: kind.parse().map_err(|e| format!("failpoint kind {e}"))?,
                seq: seq
                    .parse()
                    .map_err(|_| format!("failpoint step {seq:?} is not a number"))?,
                at: match *when {
                    "before" => Point::Before,
                    "sent" => Point::Sent,
                    _ => Point::After,
                },
            }),
            _ => Err(format!(
                "failpoint {s:?} is not <kind>:<step>:<before|sent|after>"
            )),
        }
    }
}

/// How long one step may keep retrying a retryable failure before it counts as failed.
const STEP_BUDGET: Duration = Duration::from_secs(20);
/// How often a long command's result is asked for again.
const LONG_POLL: Duration = Duration::from_millis(500);
/// How long past its time limit a long command is still waited for (the agent stops it
/// at the limit itself; this is for an agent that does not).
const LONG_GRACE: Duration = Duration::from_secs(60);

/// How long one step waits: per try, and in all (retrying retryable failures).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `None`: the conductor's `command_timeout`.
    pub timeout: Option<Duration>,
    pub budget: Duration,
}

impl Limits {
    const STEP: Limits = Limits {
        timeout: None,
        budget: STEP_BUDGET,
    };
}

pub struct Ctx<'a> {
    pub c: &'a Conductor,
    pub wf: &'a WorkflowRow,
    seq: u32,
}

impl<'a> Ctx<'a> {
    fn new(c: &'a Conductor, wf: &'a WorkflowRow) -> Self {
        Ctx { c, wf, seq: 0 }
    }

    fn failpoint(&self, seq: u32, at: Point) {
        if let Some(fp) = &self.c.settings.failpoint {
            if fp.kind == self.wf.kind && fp.seq == seq && fp.at == at {
                tracing::warn!(workflow = %self.wf.id, seq, ?at, "failpoint reached: exiting");
                std::process::exit(86);
            }
        }
    }

    /// Sends one command as step `step`, once: journaled first, replayed after a restart.
    /// A long command (acknowledged as accepted) is awaited: the same message is sent
    /// again until the agent answers with the result it has on record.
    pub async fn send(
        &mut self,
        step: &str,
        target: &InstanceId,
        epoch: Epoch,
        command: Command,
    ) -> Result<ReplyBody, StepError> {
        let seq = self.seq;
        self.seq += 1;
        self.send_at(seq, step, target, epoch, command, Limits::STEP)
            .await
    }

    /// Sends one command as a step, once, waiting at most `timeout` and never
    /// retrying: for a server that may be gone (a failed master), where waiting is
    /// what must not happen.
    pub async fn send_once(
        &mut self,
        step: &str,
        target: &InstanceId,
        epoch: Epoch,
        command: Command,
        timeout: Duration,
    ) -> Result<ReplyBody, StepError> {
        let seq = self.seq;
        self.seq += 1;
        let limits = Limits {
            timeout: Some(timeout),
            budget: Duration::ZERO,
        };
        self.send_at(seq, step, target, epoch, command, limits)
            .await
    }

    /// Writes a finding of the workflow (no command) into the journal, so the audit log
    /// shows it beside the steps; replayed, it is not written twice.
    pub fn note(
        &mut self,
        step: &str,
        about: &InstanceId,
        epoch: Epoch,
        what: serde_json::Value,
    ) -> Result<(), StepError> {
        let seq = self.seq;
        self.seq += 1;
        let store = &self.c.store;
        if store.journal_entry(&self.wf.id, seq)?.is_none() {
            store.journal_insert(&JournalEntry {
                workflow_id: self.wf.id.clone(),
                seq,
                step: step.into(),
                target: about.clone(),
                command: "note".into(),
                message_id: MessageId::random(),
                epoch,
                result: Some(what),
                sent_at: Timestamp::now(),
            })?;
        }
        Ok(())
    }

    /// Sends several commands at once (to different targets), each its own journaled
    /// step; results in the order given.
    pub async fn send_all(
        &mut self,
        steps: Vec<(String, InstanceId, Epoch, Command)>,
    ) -> Vec<Result<ReplyBody, StepError>> {
        self.send_all_limited(
            steps
                .into_iter()
                .map(|(s, t, e, c)| (s, t, e, c, Limits::STEP))
                .collect(),
        )
        .await
    }

    /// As [`Ctx::send_all`], each step with its own limits.
    pub async fn send_all_limited(
        &mut self,
        steps: Vec<(String, InstanceId, Epoch, Command, Limits)>,
    ) -> Vec<Result<ReplyBody, StepError>> {
        let first = self.seq;
        self.seq += steps.len() as u32;
        let this = &*self;
        futures_util::future::join_all(steps.into_iter().enumerate().map(
            |(i, (step, target, epoch, command, limits))| async move {
                this.send_at(first + i as u32, &step, &target, epoch, command, limits)
                    .await
            },
        ))
        .await
    }

    /// A decision of the workflow, made once: `decide` runs the first time and its
    /// result is journaled (so the audit log shows it); a resumed workflow reads it
    /// back instead of deciding again on what may have changed since.
    pub fn decide<T: Serialize + serde::de::DeserializeOwned>(
        &mut self,
        step: &str,
        about: &InstanceId,
        epoch: Epoch,
        decide: impl FnOnce(&Conductor) -> Result<T, StepError>,
    ) -> Result<T, StepError> {
        if let Some(recorded) = self.recorded()? {
            return Ok(recorded);
        }
        let value = decide(self.c)?;
        let recorded = serde_json::to_value(&value).map_err(StoreError::from)?;
        self.note(step, about, epoch, recorded)?;
        Ok(value)
    }

    /// The result journaled at the next step, if any (and the step is then passed).
    fn recorded<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, StepError> {
        let Some(JournalEntry {
            result: Some(recorded),
            ..
        }) = self.c.store.journal_entry(&self.wf.id, self.seq)?
        else {
            return Ok(None);
        };
        self.seq += 1;
        serde_json::from_value(recorded)
            .map(Some)
            .map_err(|e| StoreError::from(e).into())
    }

    async fn send_at(
        &self,
        seq: u32,
        step: &str,
        target: &InstanceId,
        epoch: Epoch,
        command: Command,
        limits: Limits,
    ) -> Result<ReplyBody, StepError> {
        let store = &self.c.store;
        let entry = match store.journal_entry(&self.wf.id, seq)? {
            Some(JournalEntry {
                result: Some(result),
                ..
            }) => return to_result(step, target, result),
            Some(in_flight) => in_flight,
            None => {
                // A long step not yet started is not started once an operator has
                // cancelled the workflow.
                if command.is_long_running() {
                    if let Some(by) = self.cancelled_by()? {
                        return Err(StepError::Cancelled {
                            step: step.into(),
                            by,
                        });
                    }
                }
                let e = JournalEntry {
                    workflow_id: self.wf.id.clone(),
                    seq,
                    step: step.into(),
                    target: target.clone(),
                    command: command.name().into(),
                    message_id: MessageId::random(),
                    epoch,
                    result: None,
                    sent_at: Timestamp::now(),
                };
                store.journal_insert(&e)?;
                e
            }
        };
        self.failpoint(seq, Point::Before);
        let long = command.is_long_running();
        let mut stopping = None;
        let reply = loop {
            let reply = self
                .c
                .call_within(
                    entry.message_id,
                    target,
                    entry.epoch,
                    command.clone(),
                    limits.budget,
                    limits.timeout.unwrap_or(self.c.settings.command_timeout),
                )
                .await;
            if !(long && matches!(reply, Reply::Ok(ReplyBody::Accepted { .. }))) {
                break reply;
            }
            match (&stopping, self.long_step_must_stop(&entry, &command)?) {
                (None, Some(why)) => {
                    self.stop_operation(&entry, &why).await;
                    stopping = Some((why, Instant::now()));
                }
                // Asked to stop and still running a grace period later: given up on.
                (Some((why, since)), _) if since.elapsed() >= LONG_GRACE => {
                    break Reply::Err(CommandError::new(
                        ErrorKind::TimedOut,
                        format!(
                            "{why}; the agent was asked to stop it and still runs it {} s \
                             later: the step is given up on",
                            LONG_GRACE.as_secs()
                        ),
                    ));
                }
                _ => {}
            }
            tokio::time::sleep(LONG_POLL).await;
        };
        self.failpoint(seq, Point::Sent);
        let recorded = serde_json::to_value(&reply).map_err(StoreError::from)?;
        store.journal_result(&self.wf.id, seq, &recorded)?;
        self.c
            .events
            .publish(crate::events::ApiEvent::WorkflowStep {
                workflow: self.wf.id.clone(),
                seq,
                step: step.into(),
                target: target.clone(),
                ok: matches!(reply, Reply::Ok(_)),
                at: Timestamp::now(),
            });
        tracing::info!(
            workflow = %self.wf.id,
            seq,
            step,
            target = %target,
            command_id = %entry.message_id,
            epoch = entry.epoch.get(),
            ok = matches!(reply, Reply::Ok(_)),
            "workflow step"
        );
        self.failpoint(seq, Point::After);
        to_result(step, target, recorded)
    }

    /// Who cancelled this workflow, if anyone did.
    fn cancelled_by(&self) -> Result<Option<String>, StepError> {
        Ok(self.c.store.cancel_requested(&self.wf.id)?)
    }

    /// Why the long command of `entry` must stop now, if it must: the workflow was
    /// cancelled, or the command ran past its time limit (and the grace after it).
    fn long_step_must_stop(
        &self,
        entry: &JournalEntry,
        command: &Command,
    ) -> Result<Option<String>, StepError> {
        if let Some(by) = self.cancelled_by()? {
            return Ok(Some(format!("cancelled by {by}")));
        }
        Ok(command.time_limit().and_then(|limit| {
            (Timestamp::now() >= entry.sent_at.plus(limit + LONG_GRACE)).then(|| {
                format!(
                    "{} did not finish within its time limit of {} s",
                    command.name(),
                    limit.as_secs()
                )
            })
        }))
    }

    /// Asks the agent to stop the long command of `entry`; its result (cancelled, or
    /// finished when it was past its point of no return) is then awaited as usual.
    async fn stop_operation(&self, entry: &JournalEntry, why: &str) {
        let reply = self
            .c
            .call_until(
                MessageId::random(),
                &entry.target,
                entry.epoch,
                Command::CancelOperation {
                    operation: entry.message_id,
                },
                Duration::from_secs(5),
            )
            .await;
        match reply {
            Reply::Ok(_) => {
                tracing::warn!(workflow = %self.wf.id, step = entry.step, target = %entry.target, why, "long step asked to stop")
            }
            Reply::Err(e) => {
                tracing::warn!(workflow = %self.wf.id, step = entry.step, target = %entry.target, why, error = %e, "long step could not be asked to stop")
            }
        }
    }

    /// Applies a topology change (bumping the epoch) as a step.
    pub fn apply(&mut self, step: &str, change: TopologyChange) -> Result<ReplicaSet, StepError> {
        let seq = self.seq;
        self.seq += 1;
        self.failpoint(seq, Point::Before);
        let set = self
            .c
            .store
            .apply_step(&self.wf.id, seq, step, &self.wf.set_id, &change)?;
        // A store step is applied and journaled at once: "sent" and "after" coincide.
        self.failpoint(seq, Point::Sent);
        self.failpoint(seq, Point::After);
        Ok(set)
    }

    pub fn set(&self) -> Result<ReplicaSet, StepError> {
        self.c.store.set(&self.wf.set_id)?.ok_or_else(|| {
            StepError::Precondition(format!("replica set {} does not exist", self.wf.set_id))
        })
    }

    /// The set's semi-synchronous replication, for the commands that give roles.
    pub fn semi_sync(&self) -> Result<Option<tandem_proto::SemiSyncSettings>, StepError> {
        let state = self.c.store.failover_state(&self.wf.set_id)?;
        Ok(state.semi_sync.then_some(tandem_proto::SemiSyncSettings {
            timeout_ms: self.c.settings.failover.semi_sync_timeout.as_millis() as u64,
        }))
    }

    /// Enables `master` as the set's master, as one step; semi-synchronous replication
    /// comes later, with [`Ctx::semi_sync_on`].
    pub async fn enable_as_master(
        &mut self,
        step: &str,
        master: &InstanceId,
        epoch: Epoch,
    ) -> Result<ReplyBody, StepError> {
        self.send(
            step,
            master,
            epoch,
            Command::EnableAsMaster { semi_sync: None },
        )
        .await
    }

    /// Switches the master's semi-synchronous replication on when the set wants it (a
    /// step), else nothing. Sent once its replicas are attached: a semi-sync master
    /// with no replica holds every commit for the whole timeout, including the one
    /// that creates the account its first replica needs.
    pub async fn semi_sync_on(
        &mut self,
        master: &InstanceId,
        epoch: Epoch,
    ) -> Result<(), StepError> {
        if let Some(semi_sync) = self.semi_sync()? {
            self.send(
                "semi-synchronous replication on the master",
                master,
                epoch,
                Command::EnableAsMaster {
                    semi_sync: Some(semi_sync),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The key `instance` pinned at enrolment, which its secrets are sealed to.
    pub fn key_of(
        &self,
        instance: &InstanceId,
    ) -> Result<tandem_transport::identity::PublicKey, StepError> {
        use tandem_transport::identity::KeyBook;
        self.c.enrolments.key_of(instance).ok_or_else(|| {
            StepError::Precondition(format!(
                "{instance} is not enrolled: there is no key to seal its secrets to \
                 (`tandem instance enroll {instance}`)"
            ))
        })
    }

    /// `secret`, sealed to `instance`'s pinned key.
    pub fn seal_to(&self, instance: &InstanceId, secret: &Secret) -> Result<Sealed, StepError> {
        self.key_of(instance)?
            .seal(secret)
            .map_err(|e| StepError::Precondition(format!("{instance}: {e}")))
    }

    /// Where replicas reach `instance`, as its agent last advertised.
    pub fn endpoint(&self, instance: &InstanceId) -> Result<SourceEndpoint, StepError> {
        let record = self.c.store.instance(instance)?;
        match record.and_then(|r| Some((r.host?, r.port?))) {
            Some((host, port)) => Ok(SourceEndpoint {
                instance: instance.clone(),
                host,
                port,
            }),
            None => Err(StepError::Precondition(format!(
                "the agent of {instance} has not reported its engine's address"
            ))),
        }
    }

    /// Reads `instance`'s latest position, as one step.
    pub async fn latest_position(
        &mut self,
        step: &str,
        instance: &InstanceId,
        epoch: Epoch,
    ) -> Result<tandem_proto::Position, StepError> {
        match self
            .send(step, instance, epoch, Command::GetLatestPosition)
            .await?
        {
            ReplyBody::Position { position } => Ok(position),
            other => Err(StepError::Precondition(format!(
                "{instance} answered get_latest_position with {other:?}"
            ))),
        }
    }

    /// Re-points `replicas` to a new master, one after the other; returns those that
    /// could not be, each with why (the workflow goes on without them).
    pub async fn repoint(
        &mut self,
        master: &InstanceId,
        replicas: &[InstanceId],
        epoch: Epoch,
    ) -> Vec<String> {
        let mut left_behind = Vec::new();
        for replica in replicas {
            if let Err(e) = self
                .attach_to("re-point a replica", master, replica, epoch, None)
                .await
            {
                left_behind.push(format!("{replica} ({e})"));
            }
        }
        left_behind
    }

    /// Gives `replica` its own replication account on `source` and attaches it there
    /// (two journaled steps, named after `what`).
    pub async fn attach_to(
        &mut self,
        what: &str,
        source: &InstanceId,
        replica: &InstanceId,
        epoch: Epoch,
        position: Option<tandem_proto::Position>,
    ) -> Result<ReplyBody, StepError> {
        let endpoint = self.endpoint(source)?;
        let credentials = self
            .replication_credentials(&format!("{what}: replication user"), source, replica, epoch)
            .await?;
        self.send(
            &format!("{what}: attach"),
            replica,
            epoch,
            Command::AttachToSource {
                source: endpoint,
                credentials,
                position,
                semi_sync: self.semi_sync()?.is_some(),
                delay_s: self.c.intended_delay_s(replica),
            },
        )
        .await
    }

    async fn replication_credentials(
        &mut self,
        step: &str,
        master: &InstanceId,
        replica: &InstanceId,
        epoch: Epoch,
    ) -> Result<tandem_proto::ReplicationCredentials, StepError> {
        match self
            .send(
                step,
                master,
                epoch,
                Command::CreateReplicationUser {
                    replica: replica.clone(),
                    // The master seals the password straight to the replica.
                    seal_to: self.key_of(replica)?.into(),
                    // Only from the address the replica reports for its engine.
                    from: match self.c.settings.replication_accounts_from {
                        crate::config::AccountsFrom::Any => None,
                        crate::config::AccountsFrom::ReplicaAddress => self
                            .c
                            .registry
                            .report(replica)
                            .and_then(|r| r.endpoint)
                            .map(|e| e.host),
                    },
                },
            )
            .await?
        {
            ReplyBody::Credentials { credentials } => Ok(credentials),
            other => Err(StepError::Precondition(format!(
                "{master} answered create_replication_user with {other:?}"
            ))),
        }
    }
}

fn to_result(
    step: &str,
    target: &InstanceId,
    recorded: serde_json::Value,
) -> Result<ReplyBody, StepError> {
    let reply: Reply = serde_json::from_value(recorded).map_err(StoreError::from)?;
    reply.into_result().map_err(|error| StepError::Command {
        step: step.into(),
        target: target.clone(),
        error,
    })
}

/// How a workflow that made `master` writable ends: done, or failed naming the members
/// that do not replicate from it yet (the new master stays; nothing is rolled back).
pub fn repointed(
    master: &InstanceId,
    epoch: Epoch,
    left_behind: Vec<String>,
) -> Result<Outcome, StepError> {
    if left_behind.is_empty() {
        return Ok(Outcome::Done);
    }
    Err(StepError::Precondition(format!(
        "{master} is the writable master at epoch {epoch}, but these members are not \
         replicating from it yet: {}",
        left_behind.join("; ")
    )))
}

/// Runs (or resumes) one workflow to its end and records how it ended.
pub async fn run(c: Arc<Conductor>, wf: WorkflowRow) {
    let spec = wf.params.clone();
    tracing::info!(workflow = %wf.id, kind = %wf.kind, set = %wf.set_id, "workflow running");
    let mut ctx = Ctx::new(&c, &wf);
    let result = match &spec {
        Spec::CreateSet { master, .. } => create_set::run(&mut ctx, master).await,
        Spec::Attach { instance, .. } => attach::run(&mut ctx, instance).await,
        Spec::Detach { instance, .. } => detach::run(&mut ctx, instance).await,
        Spec::Switchover {
            candidate,
            from,
            epoch,
            catch_up_timeout_ms,
            ..
        } => switchover::run(&mut ctx, candidate, from, *epoch, *catch_up_timeout_ms).await,
        Spec::Provision {
            instances, seed, ..
        } => provision::run(&mut ctx, instances, seed).await,
        Spec::Failover {
            failed,
            candidate,
            force,
            automatic,
            ..
        } => failover::run(&mut ctx, failed, candidate.as_ref(), *force, *automatic).await,
        Spec::Rejoin { instance, .. } => rejoin::run(&mut ctx, instance).await,
        Spec::RestoreWrites { .. } => rejoin::restore_writes(&mut ctx).await,
        Spec::SemiSync { on, .. } => semi_sync::run(&mut ctx, *on).await,
        Spec::Repoint { instance, .. } => repoint::run(&mut ctx, instance).await,
        Spec::Failsafe { .. } => failsafe::run(&mut ctx).await,
        Spec::Quarantine {
            instance, reason, ..
        } => quarantine::run(&mut ctx, instance, reason)
            .await
            .map(|()| Outcome::Done),
    };
    let (state, error) = match result {
        Ok(Outcome::Done) => (WorkflowState::Done, None),
        Ok(Outcome::RolledBack(why)) => (WorkflowState::RolledBack, Some(why)),
        Err(e) => (WorkflowState::Failed, Some(e.to_string())),
    };
    // A cancelled workflow says so first: the operator asked, and this is what came of it.
    let error = match c.store.cancel_requested(&wf.id) {
        Ok(Some(by)) if state != WorkflowState::Done => {
            Some(format!("cancelled by {by}: {}", error.unwrap_or_default()))
        }
        _ => error,
    };
    match &error {
        None => tracing::info!(workflow = %wf.id, kind = %wf.kind, "workflow done"),
        Some(e) => {
            tracing::warn!(workflow = %wf.id, kind = %wf.kind, state = state.as_str(), error = %e, "workflow did not complete")
        }
    }
    if let Err(e) = c.store.update_workflow(&wf.id, state, error.as_deref()) {
        tracing::error!(workflow = %wf.id, error = %e, "could not record a workflow's end");
    }
    c.events.publish(crate::events::ApiEvent::WorkflowEnded {
        workflow: wf.id.clone(),
        state,
        error,
        at: Timestamp::now(),
    });
}

/// Starts a workflow: recorded in the store (which refuses a second active one per set),
/// then run in the background.
pub fn start(
    c: &Arc<Conductor>,
    spec: Spec,
    requested_by: &str,
) -> Result<WorkflowRow, StoreError> {
    let now = Timestamp::now();
    let row = WorkflowRow {
        id: format!("wf-{}", &MessageId::random().to_string()[..8]),
        kind: spec.kind(),
        set_id: spec.set().clone(),
        params: spec,
        state: WorkflowState::Running,
        requested_by: requested_by.into(),
        error: None,
        created_at: now,
        updated_at: now,
    };
    c.store.start_workflow(&row)?;
    c.events.publish(crate::events::ApiEvent::WorkflowStarted {
        workflow: row.id.clone(),
        kind: row.kind,
        set: row.set_id.clone(),
        at: now,
    });
    tokio::spawn(run(c.clone(), row.clone()));
    Ok(row)
}

/// As [`start`], for an operator's request: when the set is busy only with upkeep
/// ([`WorkflowKind::is_upkeep`]), waits up to a few seconds for it to end.
pub async fn start_for_operator(
    c: &Arc<Conductor>,
    spec: Spec,
    requested_by: &str,
) -> Result<WorkflowRow, StoreError> {
    let patience = Instant::now() + Duration::from_secs(5);
    loop {
        match start(c, spec.clone(), requested_by) {
            Err(StoreError::Busy { set, active }) => {
                let upkeep = c
                    .store
                    .workflow(&active)?
                    .is_some_and(|w| w.kind.is_upkeep());
                if !upkeep || Instant::now() >= patience {
                    return Err(StoreError::Busy { set, active });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Resumes every workflow a previous conductor process left unfinished.
pub fn resume_all(c: &Arc<Conductor>) -> Result<usize, StoreError> {
    let active = c.store.active_workflows()?;
    for wf in &active {
        tracing::warn!(workflow = %wf.id, kind = %wf.kind, "resuming a workflow left unfinished");
        tokio::spawn(run(c.clone(), wf.clone()));
    }
    Ok(active.len())
}

#[cfg(test)]
mod tests;
