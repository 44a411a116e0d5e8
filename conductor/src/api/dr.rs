//! Multi-zone DR sets: creation with their DR side placed from the pool, and the site
//! switch (`POST /v1/sets/{id}/dr/switch`).

use std::sync::Arc;

use axum::extract::{Path, State};
use tandem_api::{
    CreateSet, DrFailover, DrSettings, DrSwitch, ErrorBody, FailoverState, Verdict, WorkflowRow,
};
use tandem_proto::InstanceId;

use super::sets::{accepted, existing, Accepted, JsonBody};
use super::{bad_request, body, conflict, not_found, parse_set, ApiError};
use crate::decide::placement::{choose, Free};
use crate::placement::{location, resolve};
use crate::workflow::{start_for_operator, Spec};
use crate::Conductor;

const BY: &str = "api";

/// A DR set: its master in the profile's primary zone, a DR source and `dr_replicas`
/// more from the pool in its DR zone, all keeping the set's rules.
pub(super) async fn create(c: &Arc<Conductor>, req: CreateSet, profile: &str) -> Accepted {
    let zones = &c.settings.zones;
    let profile = zones.profile(profile).cloned().ok_or_else(|| {
        let names: Vec<&str> = zones.dr_profiles.iter().map(|p| p.name.as_str()).collect();
        not_found(format!(
            "no DR profile {profile:?} (configured: {})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ))
    })?;
    let master_zone = location(c, &req.master).map(|l| l.zone);
    if master_zone.as_deref() != Some(profile.primary.as_str()) {
        return Err(bad_request(format!(
            "{} is in zone {}, but profile {} keeps its master in {}",
            req.master,
            master_zone.as_deref().unwrap_or("(unknown)"),
            profile.name,
            profile.primary
        )));
    }
    if req.dr_replicas > 16 {
        return Err(bad_request("dr_replicas must be at most 16"));
    }
    let rules = crate::decide::placement::effective(resolve(c, &req.rules)?);
    if let Some(why) = crate::decide::placement::contradiction(&rules) {
        return Err(bad_request(why));
    }
    let engine = c.registry.report(&req.master).map(|r| r.engine);
    let free: Vec<Free> = c
        .store
        .pool()?
        .into_iter()
        .filter(|(i, _)| i != &req.master)
        .filter(|(i, _)| {
            c.registry
                .report(i)
                .is_some_and(|r| engine.is_none_or(|e| r.engine == e))
        })
        .map(|(instance, _)| Free {
            location: location(c, &instance),
            instance,
        })
        .collect();
    let placed = vec![(req.master.clone(), location(c, &req.master))];
    let wanted = 1 + req.dr_replicas as usize;
    let dr_zone = Some(profile.dr.as_str());
    let (chosen, make) = match choose(&rules, &placed, &free, wanted, dr_zone) {
        Ok(all) => (all, None),
        Err(why) if c.settings.provisioner.is_none() => {
            return Err(conflict(format!("set {}: its DR side: {why}", req.id)))
        }
        // The most the pool can give; the provisioner starts the rest in the DR zone.
        Err(_) => {
            let taken = (1..wanted)
                .rev()
                .find_map(|n| choose(&rules, &placed, &free, n, dr_zone).ok())
                .unwrap_or_default();
            let make = tandem_api::MakeServers {
                count: (wanted - taken.len()) as u32,
                zone: Some(profile.dr.to_string()),
            };
            (taken, Some(make))
        }
    };
    let mut chosen = chosen.into_iter();
    let (dr_source, dr_replicas): (Option<InstanceId>, Vec<InstanceId>) =
        (chosen.next(), chosen.collect());

    c.store.create_set(&req.id, &req.master)?;
    let recorded = (|| {
        let ids: Vec<_> = resolve(c, &req.rules)?.into_iter().map(|r| r.id).collect();
        c.store.add_set_rules(&req.id, &ids)?;
        c.store.set_dr_settings(
            &req.id,
            &DrSettings {
                profile: profile.name.clone(),
                primary: profile.primary.clone(),
                dr: profile.dr.clone(),
                ack_from: req.ack_from,
            },
        )?;
        if req.semi_sync {
            c.store.set_failover_state(
                &req.id,
                &FailoverState {
                    semi_sync: true,
                    ..Default::default()
                },
            )?;
        }
        Ok::<(), ApiError>(())
    })();
    if let Err(e) = recorded {
        c.store.delete_set(&req.id)?;
        return Err(e);
    }
    let spec = Spec::CreateDrSet {
        set: req.id,
        master: req.master,
        dr_source,
        dr_replicas,
        make,
    };
    Ok(accepted(start_for_operator(c, spec, BY).await?))
}

/// "Flip the switch": the writer moves to the DR source, with no loss.
#[utoipa::path(post, path = "/v1/sets/{id}/dr/switch", tag = "sets", params(("id" = String, Path)), request_body = DrSwitch, responses((status = 202, body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn switch(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: JsonBody<DrSwitch>,
) -> Accepted {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"catch_up_timeout_ms"?: 10000}"#)?;
    let set = existing(&c, &id)?;
    let Some(dr) = c.store.dr_settings(&id)? else {
        return Err(bad_request(format!(
            "set {id} is not a DR set (create one with `tandem set create … --dr PROFILE`)"
        )));
    };
    let candidate = set
        .replicas_of(&set.master)
        .find(|r| location(&c, r).is_some_and(|l| l.zone == dr.dr.as_str()))
        .cloned()
        .ok_or_else(|| {
            bad_request(format!(
                "set {id} has no DR side: no replica of its master {} is in the DR zone {}",
                set.master, dr.dr
            ))
        })?;
    if let Some(why) = set
        .member(&candidate)
        .and_then(|m| m.options.never_promoted())
    {
        return Err(bad_request(format!(
            "the DR source {candidate} is never promoted: {why}"
        )));
    }
    super::sets::valid_catch_up(req.catch_up_timeout_ms)?;
    let spec = Spec::DrSwitch {
        set: id,
        candidate,
        from: set.master,
        epoch: set.epoch,
        catch_up_timeout_ms: req.catch_up_timeout_ms,
    };
    Ok(accepted(start_for_operator(&c, spec, BY).await?))
}

/// The primary zone is lost: after the lost master's lease, the most advanced member of
/// the DR zone becomes the master and the primary zone's members are invalidated
/// (compared with it when they return: rejoined or quarantined).
#[utoipa::path(post, path = "/v1/sets/{id}/dr/failover", tag = "sets", params(("id" = String, Path)), request_body = DrFailover, responses((status = 202, body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "the primary master is healthy, or another workflow is active", body = ErrorBody)))]
pub async fn failover(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: JsonBody<DrFailover>,
) -> Accepted {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"force"?: true}"#)?;
    let set = existing(&c, &id)?;
    let Some(dr) = c.store.dr_settings(&id)? else {
        return Err(bad_request(format!(
            "set {id} is not a DR set (create one with `tandem set create … --dr PROFILE`)"
        )));
    };
    let in_dr_zone = set
        .replicas()
        .any(|r| location(&c, r).is_some_and(|l| l.zone == dr.dr.as_str()));
    if !in_dr_zone {
        return Err(bad_request(format!(
            "set {id} has no member in its DR zone {}: nothing to fail over to",
            dr.dr
        )));
    }
    if !req.force && matches!(c.failover_watch.verdict(&id), None | Some(Verdict::Healthy)) {
        return Err(conflict(format!(
            "the master {} of set {id} in zone {} is healthy: move the writer with \
             `tandem dr switch`, which loses nothing, or use --force for a zone known to be \
             gone",
            set.master, dr.primary
        )));
    }
    let spec = Spec::Failover {
        set: id,
        failed: set.master,
        candidate: None,
        force: req.force,
        automatic: false,
        reason: Some(format!("DR failover: zone {} is lost", dr.primary)),
        site: true,
    };
    Ok(accepted(start_for_operator(&c, spec, BY).await?))
}
