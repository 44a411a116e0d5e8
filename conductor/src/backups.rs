//! Backups as the conductor sees them: asked for, followed to their end, recorded in
//! the store, listed, deleted (never a full that incrementals still depend on), and
//! trimmed to the configured number of full chains per instance.

use std::sync::Arc;
use std::time::Duration;

use tandem_proto::{
    BackupId, BackupInfo, BackupKind, BackupRequest, Command, CommandError, Epoch, InstanceId,
    MessageId, Reply, ReplyBody, Timestamp,
};

use crate::{BackupRun, Conductor};

const POLL: Duration = Duration::from_millis(500);
const BUDGET: Duration = Duration::from_secs(20);
/// How long past its time limit a backup is still waited for.
const GRACE: Duration = Duration::from_secs(60);

/// The epoch to send a non-topology command with: the highest the conductor knows for
/// the instance, so the agent's fence never refuses it as stale.
pub fn current_epoch(c: &Conductor, instance: &InstanceId) -> Epoch {
    let set_epoch = c
        .store
        .set_of(instance)
        .ok()
        .flatten()
        .and_then(|s| c.store.set(&s).ok().flatten())
        .map(|s| s.epoch)
        .unwrap_or(Epoch::ZERO);
    let reported = c
        .registry
        .report(instance)
        .map(|r| r.highest_epoch)
        .unwrap_or(Epoch::ZERO);
    set_epoch.max(reported)
}

/// Asks `instance`'s agent for a backup and follows it in the background. Returns the
/// new backup's id at once.
pub async fn start(
    c: &Arc<Conductor>,
    instance: &InstanceId,
    kind: BackupKind,
) -> Result<BackupId, CommandError> {
    // An instance id and a number: always a valid backup id.
    let backup_id = BackupId::new(format!("{instance}-{}", Timestamp::now().0))
        .map_err(|e| CommandError::bad_request(e.to_string()))?;
    let command = Command::TakeBackup(BackupRequest {
        backup_id: backup_id.clone(),
        kind,
        time_limit_s: Some(c.settings.long_command_timeout.as_secs()),
    });
    let id = MessageId::random();
    let epoch = current_epoch(c, instance);
    let first = c
        .call_until(id, instance, epoch, command.clone(), BUDGET)
        .await;
    first.into_result()?;
    c.backups_running.lock().expect("poisoned").insert(
        backup_id.clone(),
        BackupRun {
            instance: instance.clone(),
            state: tandem_api::BackupRunState::Running,
            error: None,
            operation: id,
            epoch,
        },
    );
    let c = c.clone();
    let instance = instance.clone();
    let backup = backup_id.clone();
    tokio::spawn(async move {
        // The agent stops the backup at its time limit itself; past that and a grace
        // period it is asked to, and no longer waited for.
        let give_up = std::time::Instant::now() + c.settings.long_command_timeout + GRACE;
        let result = loop {
            tokio::time::sleep(POLL).await;
            match c
                .call_until(id, &instance, epoch, command.clone(), BUDGET)
                .await
            {
                Reply::Ok(ReplyBody::Accepted { .. }) if std::time::Instant::now() >= give_up => {
                    let stop = Command::CancelOperation { operation: id };
                    let _ = c
                        .call_until(MessageId::random(), &instance, epoch, stop, BUDGET)
                        .await;
                    break Reply::Err(CommandError::new(
                        tandem_proto::ErrorKind::TimedOut,
                        format!(
                            "the backup did not finish within its time limit of {} s; the \
                             agent was asked to stop it",
                            c.settings.long_command_timeout.as_secs()
                        ),
                    ));
                }
                Reply::Ok(ReplyBody::Accepted { .. }) => continue,
                other => break other,
            }
        };
        finish(&c, &backup, result).await;
    });
    Ok(backup_id)
}

async fn finish(c: &Arc<Conductor>, backup_id: &BackupId, result: Reply) {
    let info = match result.into_result() {
        Ok(ReplyBody::Backup { backup }) => *backup,
        Ok(other) => return fail(c, backup_id, format!("the agent answered {other:?}")),
        Err(e) => return fail(c, backup_id, e.to_string()),
    };
    if let Err(e) = c.store.record_backup(&info) {
        return fail(c, backup_id, format!("could not record it: {e}"));
    }
    tracing::info!(backup = %backup_id, instance = %info.instance, bytes = info.size_bytes, "backup recorded");
    // Retention first: a backup is done (and `backup create --wait` returns) once the
    // chains it makes too old are gone, so the list read next is the one that stays.
    if info.kind == BackupKind::Full {
        retain(c, &info.instance).await;
    }
    c.backups_running
        .lock()
        .expect("poisoned")
        .remove(backup_id);
}

fn fail(c: &Conductor, backup_id: &BackupId, error: String) {
    tracing::warn!(backup = %backup_id, %error, "backup failed");
    if let Some(run) = c
        .backups_running
        .lock()
        .expect("poisoned")
        .get_mut(backup_id)
    {
        run.state = tandem_api::BackupRunState::Failed;
        run.error = Some(error);
    }
}

/// Asks the agent taking backup `backup_id` to stop it: the backup then fails as
/// cancelled, and the agent removes what it wrote.
pub async fn cancel(c: &Conductor, backup_id: &BackupId) -> Result<(), CommandError> {
    let run = c
        .backups_running
        .lock()
        .expect("poisoned")
        .get(backup_id)
        .filter(|r| r.state == tandem_api::BackupRunState::Running)
        .map(|r| (r.instance.clone(), r.operation, r.epoch));
    let Some((instance, operation, epoch)) = run else {
        return Err(CommandError::bad_request(format!(
            "backup {backup_id} is not running"
        )));
    };
    c.call_until(
        MessageId::random(),
        &instance,
        epoch,
        Command::CancelOperation { operation },
        BUDGET,
    )
    .await
    .into_result()
    .map(|_| ())
}

/// Backups that continue `backup_id` (directly or through others), newest first.
pub fn dependents(all: &[BackupInfo], backup_id: &BackupId) -> Vec<BackupId> {
    let mut out = Vec::new();
    let mut frontier = vec![backup_id.clone()];
    while let Some(parent) = frontier.pop() {
        for b in all {
            if matches!(&b.kind, BackupKind::Incremental { parent: p } if *p == parent) {
                out.push(b.backup_id.clone());
                frontier.push(b.backup_id.clone());
            }
        }
    }
    out
}

/// Deletes one backup through its instance's agent, then forgets it. Refused while
/// incrementals depend on it.
pub async fn delete(c: &Conductor, backup_id: &BackupId) -> Result<(), DeleteError> {
    let all = c
        .store
        .backups(None)
        .map_err(|e| DeleteError::Other(e.to_string()))?;
    let info = all
        .iter()
        .find(|b| &b.backup_id == backup_id)
        .ok_or_else(|| DeleteError::NotFound(format!("no backup {backup_id} is recorded")))?;
    let children = dependents(&all, backup_id);
    if !children.is_empty() {
        return Err(DeleteError::Conflict(format!(
            "backup {backup_id} has incrementals that depend on it ({}); delete them first",
            children
                .iter()
                .map(BackupId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let reply = c
        .call_until(
            MessageId::random(),
            &info.instance,
            current_epoch(c, &info.instance),
            Command::DeleteBackup {
                backup_id: backup_id.clone(),
            },
            BUDGET,
        )
        .await;
    // The agent answers done for a backup already gone from the store (a delete is
    // done when it is gone): forgetting it here is then the right repair.
    if let Err(e) = reply.into_result() {
        return Err(DeleteError::Other(format!(
            "the agent of {} could not delete it: {e}",
            info.instance
        )));
    }
    c.store
        .forget_backup(backup_id)
        .map_err(|e| DeleteError::Other(e.to_string()))?;
    Ok(())
}

#[derive(Debug)]
pub enum DeleteError {
    NotFound(String),
    Conflict(String),
    Other(String),
}

/// Keeps the newest `backup_keep` full backups of `instance` (with their incrementals)
/// and deletes older chains, incrementals first.
async fn retain(c: &Conductor, instance: &InstanceId) {
    let Ok(all) = c.store.backups(Some(instance)) else {
        return;
    };
    let old_fulls = all
        .iter()
        .filter(|b| b.kind == BackupKind::Full)
        .skip(c.settings.backup_keep);
    for full in old_fulls {
        let mut chain = dependents(&all, &full.backup_id);
        chain.reverse();
        chain.push(full.backup_id.clone());
        // Deepest incrementals first, so no delete is refused for a dependent.
        chain.sort_by_key(|id| std::cmp::Reverse(depth(&all, id)));
        for id in chain {
            match delete(c, &id).await {
                Ok(()) => tracing::info!(backup = %id, "deleted by retention"),
                Err(e) => {
                    tracing::warn!(backup = %id, error = ?e, "retention could not delete a backup");
                    break;
                }
            }
        }
    }
}

fn depth(all: &[BackupInfo], id: &BackupId) -> usize {
    let mut d = 0;
    let mut at = id.clone();
    while let Some(BackupInfo {
        kind: BackupKind::Incremental { parent },
        ..
    }) = all.iter().find(|b| b.backup_id == at)
    {
        d += 1;
        at = parent.clone();
        if d > 64 {
            break;
        }
    }
    d
}
