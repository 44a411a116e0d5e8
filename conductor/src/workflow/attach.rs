//! A server joins a replica set as a read-only replica of its master. For an empty
//! server the master's binary log brings it up to date (seeding from a backup or a
//! stream comes with issue 6).

use tandem_proto::{Command, InstanceId};

use super::{Ctx, Outcome, StepError};
use crate::store::{ReplicaOptions, TopologyChange};

pub async fn run(
    ctx: &mut Ctx<'_>,
    instance: &InstanceId,
    options: &ReplicaOptions,
    source: Option<&InstanceId>,
) -> Result<Outcome, StepError> {
    let epoch = ctx.set()?.epoch;
    ctx.warn_of_missing_databases(options.filter.as_ref(), epoch)
        .await?;
    let set = ctx.apply(
        "add to the set",
        TopologyChange::AddReplica {
            instance: instance.clone(),
            options: options.clone(),
            source: source.cloned(),
        },
    )?;
    let (master, epoch) = (set.master.clone(), set.epoch);
    let attached = async {
        ctx.send("make read-only", instance, epoch, Command::SetReadOnly)
            .await?;
        ctx.attach_to_intent("replicate from its source", instance, epoch)
            .await
    }
    .await;
    match attached {
        Ok(_) => {
            ctx.semi_sync_on(&master, epoch).await?;
            Ok(Outcome::Done)
        }
        Err(e) => {
            let set = ctx.apply(
                "take it out of the set again",
                TopologyChange::RemoveReplica {
                    instance: instance.clone(),
                },
            )?;
            // Best effort: an account nobody uses is harmless, but not left on purpose.
            let _ = ctx
                .send(
                    "drop its replication user",
                    &master,
                    set.epoch,
                    Command::DropReplicationUser {
                        replica: instance.clone(),
                    },
                )
                .await;
            Ok(Outcome::RolledBack(format!(
                "{e}; {instance} was not attached"
            )))
        }
    }
}
