//! A failed master comes back.
//!
//! 1. it is told to be read-only at the current epoch: from then on its agent refuses
//!    every order from before the failover;
//! 2. its position is compared with where the new master stood when it was promoted
//!    (journaled by the failover): everything the returning server holds must be
//!    there. MariaDB GTIDs are compared per domain, including the server that wrote
//!    the last transaction, so a transaction the old master wrote after it was
//!    replaced (an errant one) shows as a position the new master does not contain;
//! 3. nothing extra: the change is recorded, it is demoted and attached to the master.
//!    Something extra: it is quarantined (kept read-only, out of replication, the
//!    errant position journaled) until an operator re-seeds it. Never silently
//!    diverged.
//!
//! Also here: giving writes back to a healthy master that is read-only outside any
//! workflow (its lease fenced it while it was cut off, and no failover was needed).

use tandem_proto::{Command, InstanceId};

use super::{Ctx, Outcome, StepError};
use crate::store::TopologyChange;

pub async fn run(ctx: &mut Ctx<'_>, instance: &InstanceId) -> Result<Outcome, StepError> {
    let set = ctx.set()?;
    let (master, epoch) = (set.master.clone(), set.epoch);

    ctx.send(
        "fence it by the epoch",
        instance,
        epoch,
        Command::SetReadOnly,
    )
    .await?;
    let returning = ctx
        .latest_position("read its position", instance, epoch)
        .await?;
    // Where the master stood when it replaced this one; the master's position now when
    // that is not known (a conductor from before this was recorded).
    let reference = match ctx.c.failed_at(&set.id, instance) {
        Some(p) => p,
        None => {
            ctx.latest_position("read the master's position", &master, epoch)
                .await?
        }
    };

    // The other side of a master-master pair comes back replicating the new active
    // side (its reverse channel restarts with the engine), so it may hold what the
    // new side wrote since, in that side's own domain: held by the master now. What
    // it wrote itself after it was replaced is in its own domain, which the new active
    // side never writes: still errant.
    let pair = ctx.c.store.pair(&set.id)?;
    let other_side = pair.as_ref().and_then(|p| p.peer_of(instance)) == Some(&master);
    let rejoin = if other_side {
        let now = ctx
            .latest_position("read the active side's position", &master, epoch)
            .await?;
        returning.beyond(&[&reference, &now]).is_none()
    } else {
        reference.contains(&returning)
    };
    let set = if rejoin {
        ctx.apply(
            "record the rejoin",
            TopologyChange::Rejoin {
                instance: instance.clone(),
            },
        )?
    } else {
        ctx.apply(
            "quarantine it",
            TopologyChange::Quarantine {
                instance: instance.clone(),
            },
        )?
    };
    // Either way no longer a master of anything: read-only, no lease, no semi-sync waits.
    ctx.send("demote it", instance, set.epoch, Command::Demote)
        .await?;
    if rejoin {
        ctx.attach_to(
            "replicate from the master",
            &master,
            instance,
            set.epoch,
            None,
        )
        .await?;
        // The other side of a master-master pair is its passive side again: the
        // active side replicates it too, and what it had written in its own stream
        // (all of it on the new active side, or it would not be rejoining) is the
        // ledger's new start.
        if let Some(pair) = pair {
            if let Some(side) = pair.side_of(instance).filter(|_| other_side) {
                ctx.attach_reverse(&master, instance, set.epoch).await?;
                ctx.apply(
                    "the pair again, the returning side passive",
                    TopologyChange::PairUp {
                        pair: crate::store::PairRecord {
                            passive_written: super::written_by(&returning, side),
                            ..pair
                        },
                    },
                )?;
            }
        }
        ctx.semi_sync_on(&master, set.epoch).await?;
        ctx.c.forget_failed_at(&set.id, instance);
        return Ok(Outcome::Done);
    }

    let finding = serde_json::json!({
        "instance": instance,
        "position": returning,
        "master_position_at_promotion": reference,
        "verdict": "holds transactions the master does not have (errant); quarantined: \
                    re-seed it from the master before it replicates again",
    });
    tracing::error!(set = %set.id, %instance, %finding, "errant transactions: quarantined");
    ctx.note("errant transactions", instance, set.epoch, finding)?;
    ctx.c.events.publish(crate::events::ApiEvent::Quarantined {
        set: set.id.clone(),
        instance: instance.clone(),
        position: returning.to_string(),
        master_position: reference.to_string(),
        at: tandem_proto::Timestamp::now(),
    });
    Ok(Outcome::Done)
}

pub async fn restore_writes(ctx: &mut Ctx<'_>) -> Result<Outcome, StepError> {
    let set = ctx.set()?;
    ctx.send(
        "give writes back to the master",
        &set.master,
        set.epoch,
        Command::SetWritable,
    )
    .await?;
    Ok(Outcome::Done)
}
