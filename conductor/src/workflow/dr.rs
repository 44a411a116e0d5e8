//! Multi-zone DR sets: created with their DR side in one workflow (the master enabled,
//! a DR source copied from it in the DR zone, DR replicas copied from the DR source and
//! cascading from it). Their site switch is a switchover ([`super::switchover`]) whose
//! topology change keeps every replica under its source.

use tandem_proto::InstanceId;

use tandem_api::MakeServers;

use super::provision::{self, Seed};
use super::{create_set, make_servers, Ctx, Outcome, StepError};
use crate::store::ReplicaOptions;

/// `dr_side`: the DR zone's servers taken from the pool, the DR source first; `make`:
/// how many more the provisioner starts there once the master is enabled.
pub async fn create(
    ctx: &mut Ctx<'_>,
    master: &InstanceId,
    mut dr_side: Vec<InstanceId>,
    make: Option<&MakeServers>,
) -> Result<Outcome, StepError> {
    if let Outcome::RolledBack(why) = create_set::run(ctx, master).await? {
        return Ok(Outcome::RolledBack(why));
    }
    if let Some(make) = make {
        let made = make_servers::run(ctx, make, &dr_side)
            .await
            .map_err(|e| match e {
                StepError::Precondition(why) => StepError::Precondition(format!(
                    "set {} has its master {master}, but no DR side: {why}",
                    ctx.wf.set_id
                )),
                other => other,
            })?;
        dr_side.extend(made);
    }
    let Some((dr_source, dr_replicas)) = dr_side.split_first() else {
        return Err(StepError::Precondition(format!(
            "set {} has its master {master}, but no server for its DR side",
            ctx.wf.set_id
        )));
    };
    let plain = ReplicaOptions::default();
    let from_master = Seed::Stream {
        from: master.clone(),
    };
    if let Outcome::RolledBack(why) = provision::run(
        ctx,
        std::slice::from_ref(dr_source),
        &from_master,
        &plain,
        None,
    )
    .await?
    {
        return Err(StepError::Precondition(format!(
            "set {} has its master {master}, but no DR side: {why}",
            ctx.wf.set_id
        )));
    }
    if dr_replicas.is_empty() {
        return Ok(Outcome::Done);
    }
    // Copied from the DR source, whose binary log then holds everything after the copy.
    let from_source = Seed::Stream {
        from: dr_source.clone(),
    };
    match provision::run(ctx, dr_replicas, &from_source, &plain, Some(dr_source)).await? {
        Outcome::Done => Ok(Outcome::Done),
        Outcome::RolledBack(why) => Err(StepError::Precondition(format!(
            "set {} has its master and its DR source {dr_source}, but not every DR replica: \
             {why}",
            ctx.wf.set_id
        ))),
    }
}
