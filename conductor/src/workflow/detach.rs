//! A replica leaves the set and becomes an independent, writable server. Its replication
//! account is dropped on the master first, so its access ends with its membership.

use tandem_proto::{Command, InstanceId};

use super::{Ctx, Outcome, StepError};
use crate::store::TopologyChange;

pub async fn run(ctx: &mut Ctx<'_>, instance: &InstanceId) -> Result<Outcome, StepError> {
    let set = ctx.apply(
        "remove from the set",
        TopologyChange::RemoveReplica {
            instance: instance.clone(),
        },
    )?;
    ctx.send(
        "drop its replication user",
        &set.master,
        set.epoch,
        Command::DropReplicationUser {
            replica: instance.clone(),
        },
    )
    .await?;
    ctx.send(
        "detach and make writable",
        instance,
        set.epoch,
        Command::Detach,
    )
    .await?;
    Ok(Outcome::Done)
}
