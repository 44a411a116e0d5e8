//! Long commands (backups, restores, seeding): acknowledged on acceptance, run one at a
//! time by a runner task, reported in every status while they run, finished by an event.
//!
//! The record of the command holds `accepted` while it runs and its final result after,
//! so a re-send of the same command is answered "accepted" or with the result, never run
//! twice. A command interrupted by an agent restart ends as failed at start (saying so),
//! and what it left is cleaned up then.
//!
//! Each runs under a supervisor (see [`crate::supervisor`]): cancelled by the
//! conductor, out of time, or stuck, it is stopped at a safe point and cleaned up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_proto::{
    Command, CommandError, Envelope, Event, MessageId, OperationProgress, Reply, Sender, Timestamp,
};
use tandem_transport::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::supervisor::{supervise, Bounds};
use crate::Agent;

/// Where a long operation stands: the closed set of its phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Starting,
    Connecting,
    Copying,
    Verifying,
    Unpacking,
    Preparing,
    /// Swapping a prepared copy in: the point of no return.
    Installing,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Connecting => "connecting",
            Phase::Copying => "copying",
            Phase::Verifying => "verifying",
            Phase::Unpacking => "unpacking",
            Phase::Preparing => "preparing",
            Phase::Installing => "installing",
            Phase::Done => "done",
        }
    }

    /// Phases whose work is moving bytes: one where they stop moving is stuck.
    pub fn moves_bytes(self) -> bool {
        matches!(self, Phase::Copying | Phase::Verifying | Phase::Unpacking)
    }

    /// From here on the operation is finished rather than stopped.
    pub fn past_no_return(self) -> bool {
        matches!(self, Phase::Installing | Phase::Done)
    }
}

/// How far a running operation has got; shared between the engine and status reports.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_done: AtomicU64,
    pub bytes_total: AtomicU64,
    phase: Mutex<Phase>,
    /// (when, bytes done) at the start of the current phase, for the rate.
    phase_start: Mutex<Option<(std::time::Instant, u64)>>,
}

impl Progress {
    pub fn set_phase(&self, phase: Phase) {
        *self.phase.lock().expect("poisoned") = phase;
        *self.phase_start.lock().expect("poisoned") = Some((
            std::time::Instant::now(),
            self.bytes_done.load(Ordering::Relaxed),
        ));
    }
    pub fn phase(&self) -> Phase {
        *self.phase.lock().expect("poisoned")
    }
    pub fn bytes_done(&self) -> u64 {
        self.bytes_done.load(Ordering::Relaxed)
    }
    /// Bytes per second since the phase began (None in its first half second).
    fn rate(&self, done: u64) -> Option<u64> {
        let (since, from) = (*self.phase_start.lock().expect("poisoned"))?;
        let secs = since.elapsed().as_secs_f64();
        (secs >= 0.5).then(|| (done.saturating_sub(from) as f64 / secs) as u64)
    }
    pub fn add(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }
}

pub struct Job {
    pub operation: MessageId,
    pub command: Command,
    pub epoch: tandem_proto::Epoch,
}

pub(crate) struct Running {
    operation: MessageId,
    command: &'static str,
    started_at: Timestamp,
    progress: Arc<Progress>,
}

#[derive(Default)]
pub(crate) struct Operations {
    running: Mutex<Vec<Running>>,
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// One per submitted operation, queued or running, until it ends.
    cancels: Mutex<HashMap<MessageId, CancellationToken>>,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It will stop at its next safe point (or not start, if it was queued).
    Requested,
    /// No such operation is queued or running here (it ended, or never came).
    NotRunning,
}

impl Operations {
    pub fn snapshot(&self) -> Vec<OperationProgress> {
        self.running
            .lock()
            .expect("poisoned")
            .iter()
            .map(|r| {
                let total = r.progress.bytes_total.load(Ordering::Relaxed);
                let done = r.progress.bytes_done.load(Ordering::Relaxed);
                let rate = r.progress.rate(done);
                OperationProgress {
                    operation: r.operation,
                    command: r.command.into(),
                    phase: r.progress.phase().as_str().into(),
                    bytes_done: done,
                    bytes_total: (total > 0).then_some(total),
                    started_at: r.started_at,
                    rate_bytes_per_sec: rate,
                    eta_seconds: match rate {
                        Some(rate) if rate > 0 && total > done => Some((total - done) / rate),
                        _ => None,
                    },
                }
            })
            .collect()
    }

    /// Asks operation `id` to stop.
    pub fn cancel(&self, id: &MessageId) -> Cancelled {
        match self.cancels.lock().expect("poisoned").get(id) {
            Some(token) => {
                token.cancel();
                Cancelled::Requested
            }
            None => Cancelled::NotRunning,
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), CommandError> {
        self.cancels
            .lock()
            .expect("poisoned")
            .insert(job.operation, CancellationToken::new());
        let queue = self.queue.lock().expect("poisoned");
        let tx = queue.as_ref().ok_or_else(|| {
            CommandError::new(
                tandem_proto::ErrorKind::Internal,
                "the agent is not ready for long commands yet",
            )
        })?;
        tx.send(job).map_err(|_| {
            CommandError::new(tandem_proto::ErrorKind::Internal, "the agent is stopping")
        })
    }

    pub fn open(&self) -> mpsc::UnboundedReceiver<Job> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.queue.lock().expect("poisoned") = Some(tx);
        rx
    }
}

impl<E: Engine> Agent<E> {
    /// Runs submitted long commands one after another until the queue closes.
    pub(crate) async fn run_operations(
        self: Arc<Self>,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        transport: Transport,
    ) {
        // What the last run of the agent left half-made goes first.
        self.clean_up_unfinished().await;
        while let Some(job) = jobs.recv().await {
            let progress = Arc::new(Progress::default());
            self.operations
                .running
                .lock()
                .expect("poisoned")
                .push(Running {
                    operation: job.operation,
                    command: job.command.name(),
                    started_at: Timestamp::now(),
                    progress: progress.clone(),
                });
            self.status_now.notify_one();
            tracing::info!(command = job.command.name(), operation = %job.operation, "long command started");

            let cancel = self
                .operations
                .cancels
                .lock()
                .expect("poisoned")
                .get(&job.operation)
                .cloned()
                .unwrap_or_default();
            let bounds = Bounds {
                time_limit: job
                    .command
                    .time_limit()
                    .map_or(self.settings.max_operation, |l| {
                        l.min(self.settings.max_operation)
                    }),
                stall_limit: self.settings.stall_limit,
            };
            let outcome = supervise(
                self.run_long(&job.command, &progress),
                &progress,
                &cancel,
                bounds,
            )
            .await;
            if let Err((stop, e)) = &outcome {
                match stop {
                    Some(stop) => {
                        tracing::warn!(command = job.command.name(), operation = %job.operation, ?stop, "long command stopped")
                    }
                    None => {
                        tracing::warn!(command = job.command.name(), operation = %job.operation, error = %e, "long command failed")
                    }
                }
            }
            // Whatever a failed or stopped operation left behind goes now.
            if outcome.is_err() {
                self.clean_up_unfinished().await;
            }
            self.operations
                .cancels
                .lock()
                .expect("poisoned")
                .remove(&job.operation);
            // A long command's result is final whatever its kind: a re-send of the same
            // command is answered from this record, so "try again" would only delay the
            // news (a new command is what runs it again).
            let result: Reply = outcome
                .map_err(|(_, mut e)| {
                    e.retryable = false;
                    e
                })
                .into();
            // Heavy copies leave the allocator holding freed buffers: give them back, now
            // and once more when the blocking threads the copy used have ended (their
            // arenas' last frees come then).
            crate::host::release_memory();
            tokio::spawn(async {
                tokio::time::sleep(crate::host::SETTLE).await;
                crate::host::release_memory();
            });

            {
                let mut state = self.state.lock().expect("poisoned");
                state.finish(job.operation, result.clone());
                if let Err(e) = self.state_file.save(&state) {
                    tracing::error!(error = %format!("{e:#}"), "could not persist a long command's result");
                }
            }
            self.operations
                .running
                .lock()
                .expect("poisoned")
                .retain(|r| r.operation != job.operation);
            self.status_now.notify_one();
            let ok = matches!(result, Reply::Ok(_));
            tracing::info!(command = job.command.name(), operation = %job.operation, ok, "long command finished");

            let event = Envelope::new(
                Sender::Agent {
                    instance: self.settings.instance_id.clone(),
                },
                self.settings.instance_id.clone(),
                job.epoch,
                Event::OperationFinished {
                    operation: job.operation,
                    command: job.command.name().into(),
                    result,
                },
            );
            // If this is lost the result is still on record: a re-send of the command
            // returns it.
            if let Err(e) = transport
                .publish_event(&self.settings.zone, &event, Duration::from_secs(10))
                .await
            {
                tracing::warn!(error = %e, operation = %job.operation, "could not publish an operation's result");
            }
        }
    }

    async fn run_long(
        &self,
        command: &Command,
        progress: &Progress,
    ) -> Result<tandem_proto::ReplyBody, CommandError> {
        match command {
            Command::TakeBackup(request) => {
                let backup = self.take_backup(request, progress).await?;
                Ok(tandem_proto::ReplyBody::Backup {
                    backup: Box::new(backup),
                })
            }
            Command::Restore(request) => {
                let position = self.restore(&request.backup_id, progress).await?;
                Ok(tandem_proto::ReplyBody::Position { position })
            }
            Command::SeedFrom(source) => {
                let position = self.seed_from(source, progress).await?;
                Ok(tandem_proto::ReplyBody::Position { position })
            }
            other => Err(CommandError::new(
                tandem_proto::ErrorKind::Internal,
                format!("{} is not a long command", other.name()),
            )),
        }
    }
}
