//! A cascaded replica's source is lost (crashed, hung, cut off): the replicas under it
//! replicate from the nearest member above it that is well, so they keep up.
//!
//! 1. the new source is decided once and journaled ([`crate::decide::cascade`]);
//! 2. for each replica: its position, then the new source's (in that order): one that
//!    holds what the new source lacks is quarantined, never attached;
//! 3. otherwise the intent records the new source, and the replica attaches there from
//!    the GTIDs it holds: nothing is lost or applied twice.
//!
//! The lost source, when it is back, stays where it was in the tree, without them.

use tandem_proto::InstanceId;

use super::{Ctx, Outcome, StepError};
use crate::store::TopologyChange;

pub async fn run(ctx: &mut Ctx<'_>, lost: &InstanceId) -> Result<Outcome, StepError> {
    let set = ctx.set()?;
    let epoch = set.epoch;
    let detect_after = ctx.c.settings.failover.detect_after;
    let plan: Option<(Vec<InstanceId>, InstanceId)> =
        ctx.decide("where its replicas go", lost, epoch, |c| {
            let is_lost = |i: &InstanceId| {
                c.registry.report_with_age(i).is_none_or(|(r, age)| {
                    age >= detect_after || r.health == tandem_proto::Health::EngineDown
                })
            };
            Ok(crate::decide::cascade::orphaned(&set, is_lost)
                .filter(|o| &o.lost == lost)
                .map(|o| (o.replicas, o.new_source)))
        })?;
    let Some((replicas, new_source)) = plan else {
        return Ok(Outcome::RolledBack(format!(
            "{lost} is back, or has no replica left under it: nothing to move"
        )));
    };
    let mut left_behind = Vec::new();
    for replica in &replicas {
        let theirs = ctx
            .latest_position(&format!("read {replica}'s position"), replica, epoch)
            .await;
        let ours = ctx
            .latest_position(&format!("read {new_source}'s position"), &new_source, epoch)
            .await;
        let (theirs, ours) = match (theirs, ours) {
            (Ok(t), Ok(o)) => (t, o),
            (Err(e), _) | (_, Err(e)) => {
                left_behind.push(format!("{replica} ({e})"));
                continue;
            }
        };
        if let Some(errant) = theirs.beyond(&[&ours]) {
            let why = format!("it holds {errant}, which {new_source} (at {ours}) lacks");
            super::quarantine::run(ctx, replica, &why).await?;
            left_behind.push(format!("{replica} (quarantined: {why})"));
            continue;
        }
        let set = ctx.apply(
            &format!("{replica} replicates from {new_source}"),
            TopologyChange::Reparent {
                instance: replica.clone(),
                source: new_source.clone(),
            },
        )?;
        if let Err(e) = ctx
            .attach_to(
                &format!("attach {replica} to {new_source}"),
                &new_source,
                replica,
                set.epoch,
                None,
            )
            .await
        {
            left_behind.push(format!("{replica} ({e})"));
        }
    }
    if left_behind.is_empty() {
        Ok(Outcome::Done)
    } else {
        Err(StepError::Precondition(format!(
            "{lost} is lost; not moved to {new_source}: {}",
            left_behind.join("; ")
        )))
    }
}
