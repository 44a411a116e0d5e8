//! A replica's options change: paused (maybe at a position), resumed, delayed, caught
//! up (its delay dropped), or filtered to some databases (or to all again).
//!
//! 1. the new options are recorded (a replica with a pause or a delay is never
//!    promoted from this moment, before its engine changes);
//! 2. they are applied on its engine: a new delay or database filter by attaching it
//!    again to its source with them (from what it holds; paused when paused); a pause
//!    or a resume by stopping or starting its replication where it stands;
//! 3. when the engine refuses (a stop position it already passed, an engine down),
//!    the old options are recorded again and the engine is as it was.

use tandem_proto::{Command, InstanceId};

use super::{Ctx, Outcome, StepError};
use crate::store::{IntendedRole, ReplicaOptions, TopologyChange};

pub async fn run(
    ctx: &mut Ctx<'_>,
    instance: &InstanceId,
    options: &ReplicaOptions,
) -> Result<Outcome, StepError> {
    let set = ctx.set()?;
    let Some(member) = set
        .members
        .iter()
        .find(|m| &m.instance == instance && m.role == IntendedRole::Replica)
    else {
        return Err(StepError::Precondition(format!(
            "{instance} is not a replica of set {}",
            set.id
        )));
    };
    // Journaled: once the new options are recorded, a resumed workflow must still
    // know the old ones (what to apply, and what to put back).
    let current = member.options.clone();
    let old: ReplicaOptions =
        ctx.decide("the options before", instance, set.epoch, |_| Ok(current))?;
    let Some(source) = member.replicates_from.clone() else {
        return Err(StepError::Precondition(format!(
            "{instance} replicates from nobody in the intent"
        )));
    };
    if options.filter.is_some() && options.filter != old.filter {
        ctx.warn_of_missing_databases(options.filter.as_ref(), set.epoch)
            .await?;
    }
    let set = ctx.apply(
        "record the new options",
        TopologyChange::SetOptions {
            instance: instance.clone(),
            options: options.clone(),
        },
    )?;
    let epoch = set.epoch;
    let applied = if old.delay_s != options.delay_s || old.filter != options.filter {
        ctx.attach_to(
            &format!("replicate as `{options}`"),
            &source,
            instance,
            epoch,
            None,
        )
        .await
        .map(|_| ())
    } else {
        match &options.paused {
            Some(pause) => ctx
                .send(
                    "pause replication",
                    instance,
                    epoch,
                    Command::PauseReplication {
                        until: pause.until.clone(),
                    },
                )
                .await
                .map(|_| ()),
            None => {
                let source = ctx
                    .set()?
                    .member(instance)
                    .and_then(|m| m.replicates_from.clone());
                let semi_sync = ctx.acknowledges(instance, source.as_ref(), options)?;
                ctx.send(
                    "resume replication",
                    instance,
                    epoch,
                    Command::ResumeReplication { semi_sync },
                )
                .await
                .map(|_| ())
            }
        }
    };
    match applied {
        Ok(()) => Ok(Outcome::Done),
        Err(e) => {
            ctx.apply(
                "record the old options again",
                TopologyChange::SetOptions {
                    instance: instance.clone(),
                    options: old.clone(),
                },
            )?;
            Ok(Outcome::RolledBack(format!(
                "{e}; {instance} keeps its options ({old})"
            )))
        }
    }
}
