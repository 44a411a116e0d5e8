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
mod ctx;
mod detach;
mod dr;
mod failover;
mod failsafe;
mod make_servers;
mod pair;
pub use pair::written_by;
pub mod provision;
mod quarantine;
mod rebuild;
mod reconfigure;
mod rejoin;
mod reparent;
mod repoint;
mod semi_sync;
mod steps;
mod switchover;

pub use ctx::{Ctx, Limits};

use std::sync::Arc;
use std::time::Duration;

use tandem_proto::{CommandError, Epoch, InstanceId, MessageId, Timestamp};
use tokio::time::Instant;

use crate::store::{StoreError, WorkflowRow, WorkflowState};
use crate::Conductor;

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
        Spec::Attach {
            instance,
            options,
            source,
            ..
        } => attach::run(&mut ctx, instance, options, source.as_ref()).await,
        Spec::Detach { instance, .. } => detach::run(&mut ctx, instance).await,
        Spec::CreatePair {
            master, peer, seed, ..
        } => pair::create(&mut ctx, master, peer, *seed).await,
        // A master-master pair's switchover is a pair switch.
        Spec::Switchover {
            candidate,
            from,
            epoch,
            catch_up_timeout_ms,
            ..
        } => match c.store.pair(&wf.set_id) {
            Ok(Some(pair)) => {
                let catch_up_ms = catch_up_timeout_ms.unwrap_or(switchover::CATCH_UP_MS);
                pair::switch(&mut ctx, &pair, candidate, from, *epoch, catch_up_ms).await
            }
            Ok(None) => {
                switchover::run(
                    &mut ctx,
                    candidate,
                    from,
                    *epoch,
                    *catch_up_timeout_ms,
                    switchover::Site::Same,
                )
                .await
            }
            Err(e) => Err(e.into()),
        },
        Spec::DrSwitch {
            candidate,
            from,
            epoch,
            catch_up_timeout_ms,
            ..
        } => match c.store.dr_settings(&wf.set_id) {
            Ok(Some(dr)) => {
                switchover::run(
                    &mut ctx,
                    candidate,
                    from,
                    *epoch,
                    *catch_up_timeout_ms,
                    switchover::Site::Switch(dr),
                )
                .await
            }
            Ok(None) => Err(StepError::Precondition(format!(
                "set {} is not a DR set",
                wf.set_id
            ))),
            Err(e) => Err(e.into()),
        },
        Spec::RebuildMaster {
            from,
            instance,
            via_backup,
            ..
        } => rebuild::run(&mut ctx, from, instance, *via_backup).await,
        Spec::CreateDrSet {
            master,
            dr_source,
            dr_replicas,
            make,
            ..
        } => {
            let taken: Vec<InstanceId> = dr_source.iter().chain(dr_replicas).cloned().collect();
            dr::create(&mut ctx, master, taken, make.as_ref()).await
        }
        Spec::Provision {
            instances,
            seed,
            options,
            source,
            make,
            ..
        } => {
            provision::run_making(
                &mut ctx,
                instances,
                make.as_ref(),
                seed,
                options,
                source.as_ref(),
            )
            .await
        }
        Spec::Reconfigure {
            instance, options, ..
        } => reconfigure::run(&mut ctx, instance, options).await,
        Spec::Reparent { lost, .. } => reparent::run(&mut ctx, lost).await,
        Spec::Failover {
            failed,
            candidate,
            force,
            automatic,
            site,
            ..
        } => {
            failover::run(
                &mut ctx,
                failed,
                candidate.as_ref(),
                *force,
                *automatic,
                *site,
            )
            .await
        }
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

/// A new workflow's record: a fresh id, running, asked for by `requested_by`.
pub(crate) fn new_row(spec: Spec, requested_by: &str) -> WorkflowRow {
    let now = Timestamp::now();
    WorkflowRow {
        id: format!("wf-{}", &MessageId::random().to_string()[..8]),
        kind: spec.kind(),
        set_id: spec.set().clone(),
        params: spec,
        state: WorkflowState::Running,
        requested_by: requested_by.into(),
        error: None,
        created_at: now,
        updated_at: now,
    }
}

/// Starts a workflow: recorded in the store (which refuses a second active one per set),
/// then run in the background.
pub fn start(
    c: &Arc<Conductor>,
    spec: Spec,
    requested_by: &str,
) -> Result<WorkflowRow, StoreError> {
    let row = new_row(spec, requested_by);
    c.store.start_workflow(&row)?;
    c.events.publish(crate::events::ApiEvent::WorkflowStarted {
        workflow: row.id.clone(),
        kind: row.kind,
        set: row.set_id.clone(),
        at: row.created_at,
    });
    tokio::spawn(run(c.clone(), row.clone()));
    Ok(row)
}

/// As [`start`], for an operator's request: when the set is busy only with upkeep
/// ([`tandem_api::WorkflowKind::is_upkeep`]), waits up to a few seconds for it to end.
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
