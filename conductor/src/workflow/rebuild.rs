//! Restore the master from a replica (`tandem set rebuild-master`): a fresh server,
//! placed by the set's rules, is seeded from replica `from` (a live copy, or a full
//! backup of it written to the backup store and restored), attached, and then made
//! the master by a switchover. One workflow: a failure before the switchover leaves
//! the set as it was (the new server out of it); the switchover rolls back as any does.

use tandem_proto::{BackupId, BackupKind, BackupRequest, Command, Epoch, InstanceId, ReplyBody};

use super::provision::{self, Seed};
use super::switchover::{self, Site};
use super::{Ctx, Outcome, StepError};
use crate::store::ReplicaOptions;

pub async fn run(
    ctx: &mut Ctx<'_>,
    from: &InstanceId,
    new: &InstanceId,
    via_backup: bool,
) -> Result<Outcome, StepError> {
    let epoch = ctx.set()?.epoch;
    let seed = if via_backup {
        // Named after the workflow: a resumed workflow asks for the same backup.
        let backup_id = BackupId::new(format!("{from}-{}", ctx.wf.id))
            .map_err(|e| StepError::Precondition(e.to_string()))?;
        let taken = ctx
            .send(
                &format!("back up {from} into the backup store"),
                from,
                epoch,
                Command::TakeBackup(BackupRequest {
                    backup_id: backup_id.clone(),
                    kind: BackupKind::Full,
                    time_limit_s: Some(ctx.c.settings.long_command_timeout.as_secs()),
                }),
            )
            .await?;
        match taken {
            ReplyBody::Backup { backup } => ctx.c.store.record_backup(&backup)?,
            other => {
                return Err(StepError::Precondition(format!(
                    "{from} answered take_backup with {other:?}"
                )))
            }
        }
        Seed::Backup { backup_id }
    } else {
        Seed::Stream { from: from.clone() }
    };
    let plain = ReplicaOptions::default();
    if let Outcome::RolledBack(why) =
        provision::run(ctx, std::slice::from_ref(new), &seed, &plain, None).await?
    {
        return Ok(Outcome::RolledBack(format!(
            "the new master was not made ({why}); the set is as it was"
        )));
    }
    // The switchover starts from the set as it stands now, journaled so that a resumed
    // workflow starts it from the same master and epoch.
    let set = ctx.set()?;
    let (old, at): (InstanceId, Epoch) =
        ctx.decide("the master to replace", &set.master, set.epoch, |_| {
            Ok((set.master.clone(), set.epoch))
        })?;
    switchover::run(ctx, new, &old, at, None, Site::Same).await
}
