//! New servers from the cloud's provisioner, for a workflow whose set needs more than
//! the free pool has: the request (engine, zone, the set's rules as a server group,
//! where its members run) goes to the provisioner command once, its answer is
//! journaled, and the workflow goes on only once every new server's agent has
//! registered where it was asked to run, with the set's engine.
//!
//! The new servers are put in the free pool as soon as they registered: the workflow
//! then takes them from there like any other, and one that fails later leaves them
//! there for the next request instead of orphaned.

use std::time::Duration;

use tandem_api::{MakeServers, PlacedMember, ProvisionAnswer, ProvisionRequest};
use tandem_proto::InstanceId;

use super::{Ctx, StepError};
use crate::Conductor;

/// How often registration is looked for.
const POLL: Duration = Duration::from_millis(200);

/// Has `make.count` servers started and registered, to join the set with `joining`
/// (taken from the pool already); their instance ids. Refused, the new servers left in
/// the pool, when they would break a rule the set requires.
pub async fn run(
    ctx: &mut Ctx<'_>,
    make: &MakeServers,
    joining: &[InstanceId],
) -> Result<Vec<InstanceId>, StepError> {
    let provisioner = ctx.c.settings.provisioner.clone().ok_or_else(|| {
        StepError::Precondition(
            "the pool has too few servers and no provisioner is configured \
             ([provisioner] command in the conductor's configuration)"
                .into(),
        )
    })?;
    let set = ctx.set()?;
    let request = request(
        ctx.c,
        &set,
        make,
        format!("{}-{}", ctx.wf.id, ctx.next_step()),
    )?;
    let step = format!(
        "have the provisioner start {} server(s){}",
        make.count,
        make.zone
            .as_deref()
            .map(|z| format!(" in zone {z}"))
            .unwrap_or_default()
    );
    let answer: ProvisionAnswer = ctx
        .decide_after(&step, &set.master, set.epoch, async {
            provisioner
                .run(&request)
                .await
                .map_err(StepError::Precondition)
        })
        .await?;
    let deadline = tokio::time::Instant::now() + provisioner.register_timeout;
    loop {
        if let Some(by) = ctx.cancelled_by()? {
            return Err(StepError::Cancelled {
                step: "wait for the new servers to register".into(),
                by,
            });
        }
        let waiting = registered(ctx.c, &request, &answer.instances)?;
        if waiting.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::Precondition(format!(
                "the provisioner started {} (request {}), but {} did not register within \
                 {:?}: check the new servers' agents (broker address, keys); once they \
                 register they can be added to the pool",
                list(&answer.instances),
                request.request_id,
                list(&waiting),
                provisioner.register_timeout
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    ctx.c.store.pool_add(&answer.instances)?;
    admit(ctx.c, &ctx.set()?, joining, &answer.instances)?;
    Ok(answer.instances)
}

/// Refused when the servers `made` (with those `joining` from the pool) would newly
/// break a rule the set requires: a provisioner that ignored the server group.
fn admit(
    c: &Conductor,
    set: &crate::store::ReplicaSet,
    joining: &[InstanceId],
    made: &[InstanceId],
) -> Result<(), StepError> {
    let rules = crate::placement::rules_of(c, &set.id)?;
    let mut before = crate::placement::of_set(c, set);
    before.extend(
        joining
            .iter()
            .map(|i| (i.clone(), crate::placement::location(c, i))),
    );
    let mut after = before.clone();
    after.extend(
        made.iter()
            .map(|i| (i.clone(), crate::placement::location(c, i))),
    );
    crate::decide::placement::admit(&rules, &before, &after)
        .map(|_| ())
        .map_err(|refused| {
            StepError::Precondition(format!(
                "the servers the provisioner started ({}) are left in the pool: {refused}",
                list(made)
            ))
        })
}

/// What the provisioner is asked for.
fn request(
    c: &Conductor,
    set: &crate::store::ReplicaSet,
    make: &MakeServers,
    request_id: String,
) -> Result<ProvisionRequest, StepError> {
    let engine = c
        .registry
        .report(&set.master)
        .map(|r| r.engine)
        .ok_or_else(|| {
            StepError::Precondition(format!(
                "the master {} has not reported, so its engine is not known",
                set.master
            ))
        })?;
    let rules = crate::placement::rules_of(c, &set.id)?;
    Ok(ProvisionRequest {
        request_id,
        set: set.id.clone(),
        engine,
        count: make.count,
        zone: make.zone.clone(),
        server_group: crate::decide::placement::server_group(&rules),
        members: crate::placement::of_set(c, set)
            .into_iter()
            .map(|(instance, location)| PlacedMember { instance, location })
            .collect(),
        rules,
    })
}

/// The servers of `made` that have not registered yet; an error when one registered as
/// something other than what was asked for (another engine, another zone, or a server
/// that is already in a set).
fn registered(
    c: &Conductor,
    request: &ProvisionRequest,
    made: &[InstanceId],
) -> Result<Vec<InstanceId>, StepError> {
    let mut waiting = Vec::new();
    for i in made {
        let Some(report) = c.registry.report(i) else {
            waiting.push(i.clone());
            continue;
        };
        let wrong = |what: String| {
            StepError::Precondition(format!(
                "the provisioner started {i} (request {}), but {what}; it is not used",
                request.request_id
            ))
        };
        if report.engine != request.engine {
            return Err(wrong(format!(
                "it runs {}, not {}",
                report.engine, request.engine
            )));
        }
        if let Some(z) = request.zone.as_deref().filter(|z| report.zone != *z) {
            return Err(wrong(format!("it runs in zone {}, not {z}", report.zone)));
        }
        if let Some(set) = c.store.set_of(i)? {
            return Err(wrong(format!("it is a member of set {set} already")));
        }
    }
    Ok(waiting)
}

fn list(instances: &[InstanceId]) -> String {
    instances
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
