//! A replica whose history split from its master's (a transaction written on it, or one
//! its applier could not apply) is kept apart: recorded as quarantined with a new
//! epoch, made read-only and taken out of replication, its positions journaled and an
//! event raised. It is never a candidate or a source again until it is re-seeded in
//! place (`tandem replica add SET INSTANCE --seed stream`), which never makes it
//! writable.

use tandem_proto::{Command, InstanceId};

use super::{Ctx, StepError};
use crate::store::TopologyChange;

/// A replica whose history split from the master's: recorded as quarantined (a new
/// epoch), taken out of replication (read-only, no source), and shown to operators
/// until it is re-seeded.
pub async fn run(ctx: &mut Ctx<'_>, instance: &InstanceId, why: &str) -> Result<(), StepError> {
    let set = ctx.apply(
        "quarantine a diverged replica",
        TopologyChange::Quarantine {
            instance: instance.clone(),
        },
    )?;
    let position = ctx
        .c
        .registry
        .last_position(instance)
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    let master_position = ctx
        .c
        .registry
        .last_position(&set.master)
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into());
    let finding = serde_json::json!({
        "instance": instance,
        "position": position,
        "master": set.master,
        "master_position": master_position,
        "verdict": format!("diverged ({why}); quarantined: never promoted, never a source; \
                            re-seed it (`tandem replica add {} {instance} --seed stream`)", set.id),
    });
    tracing::error!(set = %set.id, %instance, %finding, "diverged replica quarantined");
    ctx.note("errant transactions", instance, set.epoch, finding)?;
    ctx.c.events.publish(crate::events::ApiEvent::Quarantined {
        set: set.id.clone(),
        instance: instance.clone(),
        position,
        master_position,
        at: tandem_proto::Timestamp::now(),
    });
    ctx.send(
        "quarantine: out of replication",
        instance,
        set.epoch,
        Command::Quarantine,
    )
    .await?;
    Ok(())
}
