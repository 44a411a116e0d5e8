//! A workflow's context: every step journaled before its command leaves, replayed
//! after a restart from its record (same message id), long commands followed to their
//! result and stopped when cancelled or past their time limit, topology changes applied
//! as steps, and decisions made once.

use std::time::Duration;

use serde::Serialize;
use tandem_proto::{
    Command, CommandError, Epoch, ErrorKind, InstanceId, MessageId, Reply, ReplyBody, Timestamp,
};
use tokio::time::Instant;

use super::StepError;
use crate::failpoint::Point;
use crate::store::{JournalEntry, ReplicaSet, StoreError, TopologyChange, WorkflowRow};
use crate::Conductor;

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
    pub(super) fn new(c: &'a Conductor, wf: &'a WorkflowRow) -> Self {
        Ctx { c, wf, seq: 0 }
    }

    /// Exits at an exiting failpoint; true at a hanging one.
    fn at_failpoint(&self, seq: u32, at: Point) -> bool {
        let Some(fp) = &self.c.settings.failpoint else {
            return false;
        };
        if fp.kind != self.wf.kind || fp.seq != seq || fp.at != at {
            return false;
        }
        match fp.then {
            crate::failpoint::Then::Exit => {
                tracing::warn!(workflow = %self.wf.id, seq, ?at, "failpoint reached: exiting");
                std::process::exit(86);
            }
            crate::failpoint::Then::Hang => {
                tracing::warn!(workflow = %self.wf.id, seq, ?at, "failpoint reached: hanging");
                true
            }
        }
    }

    /// A failpoint of a step that sends: a hanging one stops this workflow here while
    /// the rest of the conductor lives on, until the test kills or freezes it.
    async fn failpoint(&self, seq: u32, at: Point) {
        if self.at_failpoint(seq, at) {
            std::future::pending::<()>().await;
        }
    }

    /// A failpoint of a store step (no await there): a hanging one blocks its thread.
    fn failpoint_sync(&self, seq: u32, at: Point) {
        if self.at_failpoint(seq, at) {
            loop {
                std::thread::park();
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
        self.failpoint_sync(seq, Point::Before);
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
        // Recorded at once, like a store step: "sent" and "after" coincide.
        self.failpoint_sync(seq, Point::Sent);
        self.failpoint_sync(seq, Point::After);
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

    /// As [`Ctx::decide`], for a decision that takes time (a command run outside
    /// Tandem, such as the provisioner): `decide` is awaited only when no result is on
    /// record. A crash before the result is journaled makes a resumed workflow ask
    /// again, so whatever `decide` runs must answer a repeated request the same way.
    pub async fn decide_after<T, F>(
        &mut self,
        step: &str,
        about: &InstanceId,
        epoch: Epoch,
        decide: F,
    ) -> Result<T, StepError>
    where
        T: Serialize + serde::de::DeserializeOwned,
        F: std::future::Future<Output = Result<T, StepError>>,
    {
        if let Some(recorded) = self.recorded()? {
            return Ok(recorded);
        }
        let value = decide.await?;
        let recorded = serde_json::to_value(&value).map_err(StoreError::from)?;
        self.note(step, about, epoch, recorded)?;
        Ok(value)
    }

    /// The number the next step will have: with the workflow's id, a name for a request
    /// made outside Tandem that stays the same when a resumed workflow makes it again.
    pub fn next_step(&self) -> u32 {
        self.seq
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
        self.failpoint(seq, Point::Before).await;
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
        self.failpoint(seq, Point::Sent).await;
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
        self.failpoint(seq, Point::After).await;
        to_result(step, target, recorded)
    }

    /// Who cancelled this workflow, if anyone did.
    pub fn cancelled_by(&self) -> Result<Option<String>, StepError> {
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
        self.failpoint_sync(seq, Point::Before);
        let set = self
            .c
            .store
            .apply_step(&self.wf.id, seq, step, &self.wf.set_id, &change)?;
        // A store step is applied and journaled at once: "sent" and "after" coincide.
        self.failpoint_sync(seq, Point::Sent);
        self.failpoint_sync(seq, Point::After);
        Ok(set)
    }

    pub fn set(&self) -> Result<ReplicaSet, StepError> {
        self.c.store.set(&self.wf.set_id)?.ok_or_else(|| {
            StepError::Precondition(format!("replica set {} does not exist", self.wf.set_id))
        })
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
