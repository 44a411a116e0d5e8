//! Fresh replicas, seeded and attached: several at once, each from a live copy streamed
//! by a source's agent or from a stored backup, then attached at exactly the position
//! the copy is consistent at. A seeding that fails leaves that instance as it was (the
//! agent only swaps the data directory once a complete copy is prepared) and out of
//! the set; the others go on.

use sha2::{Digest, Sha256};
use tandem_proto::{Command, InstanceId, Position, ReplyBody, RestoreRequest, Secret, SeedSource};

use super::{Ctx, Outcome, StepError};
use crate::store::{IntendedRole, ReplicaOptions, TopologyChange};

pub use tandem_api::Seed;

/// How long a seed token stays valid on the source.
const TOKEN_TTL_MS: u64 = 3_600_000;

/// As [`run`], with `make` servers started by the provisioner first and seeded with
/// `instances`.
pub async fn run_making(
    ctx: &mut Ctx<'_>,
    instances: &[InstanceId],
    make: Option<&tandem_api::MakeServers>,
    seed: &Seed,
    options: &ReplicaOptions,
    source: Option<&InstanceId>,
) -> Result<Outcome, StepError> {
    let Some(make) = make else {
        return run(ctx, instances, seed, options, source).await;
    };
    let made = super::make_servers::run(ctx, make, instances).await?;
    let all: Vec<InstanceId> = instances.iter().chain(&made).cloned().collect();
    run(ctx, &all, seed, options, source).await
}

pub async fn run(
    ctx: &mut Ctx<'_>,
    instances: &[InstanceId],
    seed: &Seed,
    options: &ReplicaOptions,
    source: Option<&InstanceId>,
) -> Result<Outcome, StepError> {
    // No step touches the new instances before their copy is complete: the agent
    // installs it read-only, so a failed seeding leaves them exactly as they were.
    let epoch = ctx.set()?.epoch;
    ctx.warn_of_missing_databases(options.filter.as_ref(), epoch)
        .await?;
    let seeded = match seed {
        Seed::Stream { from } => {
            let endpoint = ctx
                .c
                .registry
                .report(from)
                .and_then(|r| r.seed_endpoint)
                .ok_or_else(|| {
                    StepError::Precondition(format!(
                        "the agent of {from} has not advertised a seeding endpoint"
                    ))
                })?;
            let mut steps = Vec::new();
            for i in instances {
                let token = token(ctx, i);
                ctx.send(
                    &format!("offer a copy of {from} to {i}"),
                    from,
                    epoch,
                    Command::OfferSeed {
                        token: ctx.seal_to(from, &token)?,
                        ttl_ms: TOKEN_TTL_MS,
                    },
                )
                .await?;
                steps.push((
                    format!("seed {i} from {from}"),
                    i.clone(),
                    epoch,
                    Command::SeedFrom(SeedSource {
                        instance: from.clone(),
                        host: endpoint.host.clone(),
                        port: endpoint.port,
                        token: ctx.seal_to(i, &token)?,
                        time_limit_s: Some(ctx.c.settings.long_command_timeout.as_secs()),
                    }),
                ));
            }
            ctx.send_all(steps).await
        }
        Seed::Backup { backup_id } => {
            let steps = instances
                .iter()
                .map(|i| {
                    (
                        format!("restore backup {backup_id} on {i}"),
                        i.clone(),
                        epoch,
                        Command::Restore(RestoreRequest {
                            backup_id: backup_id.clone(),
                            time_limit_s: Some(ctx.c.settings.long_command_timeout.as_secs()),
                        }),
                    )
                })
                .collect();
            ctx.send_all(steps).await
        }
    };

    let mut failures = Vec::new();
    let mut attached = Vec::new();
    for (instance, result) in instances.iter().zip(seeded) {
        let position = match result {
            Ok(ReplyBody::Position { position }) => position,
            Ok(other) => {
                failures.push(format!("{instance}: the seeding answered {other:?}"));
                continue;
            }
            Err(e) => {
                failures.push(format!("{instance}: {e}"));
                continue;
            }
        };
        match join(ctx, instance, position, options, source).await {
            Ok(()) => attached.push(instance.to_string()),
            Err(e) => failures.push(format!("{instance}: {e}")),
        }
    }
    if !attached.is_empty() {
        let set = ctx.set()?;
        ctx.semi_sync_on(&set.master, set.epoch).await?;
    }
    if failures.is_empty() {
        Ok(Outcome::Done)
    } else {
        Ok(Outcome::RolledBack(format!(
            "not attached, left as they were: {}{}",
            failures.join("; "),
            if attached.is_empty() {
                String::new()
            } else {
                format!(" (attached: {})", attached.join(", "))
            }
        )))
    }
}

/// Adds a seeded instance to the set and attaches it at the copy's position; takes it
/// out again if the attach fails.
async fn join(
    ctx: &mut Ctx<'_>,
    instance: &InstanceId,
    position: Position,
    options: &ReplicaOptions,
    source: Option<&InstanceId>,
) -> Result<(), StepError> {
    let quarantined = ctx
        .set()?
        .members
        .iter()
        .any(|m| &m.instance == instance && m.role == IntendedRole::Quarantined);
    let set = ctx.apply(
        &format!("add {instance} to the set"),
        if quarantined {
            TopologyChange::Rejoin {
                instance: instance.clone(),
            }
        } else {
            TopologyChange::AddReplica {
                instance: instance.clone(),
                options: options.clone(),
                source: source.cloned(),
            }
        },
    )?;
    let set = if quarantined && options != &ReplicaOptions::default() {
        ctx.apply(
            &format!("the options of {instance}"),
            TopologyChange::SetOptions {
                instance: instance.clone(),
                options: options.clone(),
            },
        )?
    } else {
        set
    };
    let from = set
        .member(instance)
        .and_then(|m| m.replicates_from.clone())
        .unwrap_or_else(|| set.master.clone());
    let attached = ctx
        .attach_to(
            &format!("attach {instance} at {position}"),
            &from,
            instance,
            set.epoch,
            Some(position),
        )
        .await;
    if let Err(e) = attached {
        ctx.apply(
            &format!("take {instance} out of the set again"),
            if quarantined {
                TopologyChange::Quarantine {
                    instance: instance.clone(),
                }
            } else {
                TopologyChange::RemoveReplica {
                    instance: instance.clone(),
                }
            },
        )?;
        return Err(e);
    }
    Ok(())
}

/// The seed token for one instance in this workflow: derived from the conductor's
/// secret, so a resumed workflow offers and presents the same token, and nobody who
/// can read the workflow's parameters or journal can derive it. It travels sealed to
/// the source and to the target.
fn token(ctx: &Ctx<'_>, instance: &InstanceId) -> Secret {
    seed_token(ctx.c.secret, &ctx.wf.id, instance)
}

/// The seed token workflow `workflow` gives `instance`, from the conductor's `secret`.
pub fn seed_token(secret: [u8; 32], workflow: &str, instance: &InstanceId) -> Secret {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(workflow.as_bytes());
    h.update([0]);
    h.update(instance.as_str().as_bytes());
    Secret::new(format!("{:x}", h.finalize()))
}
