//! Semi-synchronous replication switched on or off for a running set. The wish was
//! recorded in the store when the request was accepted; this brings the engines in line:
//! switching on, the replicas first (a replica acknowledges only from its next attach),
//! then the master; switching off, the master first (its commits stop waiting), then
//! the replicas.

use tandem_proto::Command;

use super::{Ctx, Outcome, StepError};

pub async fn run(ctx: &mut Ctx<'_>, on: bool) -> Result<Outcome, StepError> {
    let set = ctx.set()?;
    let (master, epoch) = (set.master.clone(), set.epoch);
    if !on {
        ctx.send(
            "semi-sync off on the master",
            &master,
            epoch,
            Command::EnableAsMaster { semi_sync: None },
        )
        .await?;
    }
    for replica in set.replicas() {
        ctx.attach_to(
            if on {
                "replica acknowledges (re-attach)"
            } else {
                "replica stops acknowledging (re-attach)"
            },
            &master,
            replica,
            epoch,
            None,
        )
        .await?;
    }
    if on {
        ctx.semi_sync_on(&master, epoch).await?;
    }
    Ok(Outcome::Done)
}
