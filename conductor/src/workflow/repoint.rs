//! Drift repaired: a replica that replicates from the wrong source (left behind by a
//! failover that could not reach it, re-pointed by hand), from none, or with a delay
//! other than its intended one, replicates from the master again with the intended
//! delay. Started by the detector once the set is quiet.
//!
//! 1. read the replica's position, then the master's (in that order, so a replica that
//!    holds only what the master sent is never ahead);
//! 2. anything the replica holds that the master lacks: it is quarantined, never
//!    attached (it would replicate on a split history);
//! 3. otherwise it is attached to the master (read-only first, its own replication
//!    account, the intended delay).

use tandem_proto::InstanceId;

use super::{Ctx, Outcome, StepError};

pub async fn run(ctx: &mut Ctx<'_>, instance: &InstanceId) -> Result<Outcome, StepError> {
    let set = ctx.set()?;
    let (master, epoch) = (set.master.clone(), set.epoch);
    let mine = ctx
        .latest_position("read the replica's position", instance, epoch)
        .await?;
    let masters = ctx
        .latest_position("read the master's position", &master, epoch)
        .await?;
    if let Some(errant) = mine.beyond(&[&masters]) {
        let why = format!("it holds {errant}, which the master {master} (at {masters}) lacks");
        super::quarantine::run(ctx, instance, &why).await?;
        return Ok(Outcome::RolledBack(format!(
            "{instance} was not re-pointed: {why}; quarantined until it is re-seeded"
        )));
    }
    ctx.attach_to_intent("re-point to its source", instance, epoch)
        .await?;
    Ok(Outcome::Done)
}
