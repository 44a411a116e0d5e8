//! Zones, the free pool and placement rules: `GET /v1/zones`, `/v1/pool`, `/v1/rules`,
//! and the rules a set keeps (`/v1/sets/{id}/rules`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use tandem_api::{
    CreateRule, Deleted, ErrorBody, PlacementRule, PoolChange, PoolEntry, RuleId, SetRules,
    ZoneView, ZonesView,
};
use tandem_proto::{InstanceId, Timestamp};

use super::sets::{existing, JsonBody};
use super::{
    bad_request, body, conflict, not_found, parse_id, parse_set, unknown_instance, ApiError,
};
use crate::decide::placement::{admit, contradiction, effective};
use crate::placement::{location, of_set, resolve, ResolveError};
use crate::Conductor;

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Unknown(_) => not_found(e.to_string()),
            ResolveError::Store(e) => e.into(),
        }
    }
}

/// The zones configured, and those only agents reported, with their hosts.
#[utoipa::path(get, path = "/v1/zones", tag = "placement", responses((status = 200, body = ZonesView)))]
pub async fn zones(State(c): State<Arc<Conductor>>) -> Result<Json<ZonesView>, ApiError> {
    let pooled: Vec<InstanceId> = c.store.pool()?.into_iter().map(|(i, _)| i).collect();
    let reports = c.registry.list();
    let mut zones: Vec<ZoneView> = c
        .settings
        .zones
        .zones
        .iter()
        .map(|(z, description)| ZoneView {
            zone: z.to_string(),
            configured: true,
            description: description.clone(),
            hosts: Vec::new(),
            instances: 0,
            pooled: 0,
        })
        .collect();
    for r in reports {
        let i = match zones.iter().position(|z| z.zone == r.zone) {
            Some(i) => i,
            None => {
                zones.push(ZoneView {
                    zone: r.zone.clone(),
                    configured: false,
                    description: None,
                    hosts: Vec::new(),
                    instances: 0,
                    pooled: 0,
                });
                zones.len() - 1
            }
        };
        let z = &mut zones[i];
        z.instances += 1;
        if pooled.contains(&r.id) {
            z.pooled += 1;
        }
        if let Some(h) = r.status.host_id {
            if !z.hosts.contains(&h) {
                z.hosts.push(h);
            }
        }
    }
    for z in &mut zones {
        z.hosts.sort();
    }
    Ok(Json(ZonesView {
        zones,
        dr_profiles: c.settings.zones.dr_profiles.clone(),
    }))
}

#[utoipa::path(get, path = "/v1/pool", tag = "placement", responses((status = 200, body = [PoolEntry])))]
pub async fn pool(State(c): State<Arc<Conductor>>) -> Result<Json<Vec<PoolEntry>>, ApiError> {
    Ok(Json(
        c.store
            .pool()?
            .into_iter()
            .map(|(instance, added_at)| PoolEntry {
                location: location(&c, &instance),
                engine: c.registry.report(&instance).map(|r| r.engine),
                instance,
                added_at,
            })
            .collect(),
    ))
}

/// Puts servers that reported and are in no set in the free pool.
#[utoipa::path(post, path = "/v1/pool", tag = "placement", request_body = PoolChange, responses((status = 200, body = [PoolEntry]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pool_add(
    State(c): State<Arc<Conductor>>,
    b: JsonBody<PoolChange>,
) -> Result<Json<Vec<PoolEntry>>, ApiError> {
    let req = body(b, r#"{"instances": ["<instance>", ...]}"#)?;
    if req.instances.is_empty() {
        return Err(bad_request("name the servers to pool in `instances`"));
    }
    for i in &req.instances {
        if c.registry.report(i).is_none() {
            return Err(unknown_instance(i));
        }
    }
    c.store.pool_add(&req.instances)?;
    tracing::info!(instances = ?req.instances, "servers pooled");
    pool(State(c)).await
}

#[utoipa::path(delete, path = "/v1/pool/{instance}", tag = "placement", params(("instance" = String, Path)), responses((status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn pool_remove(
    State(c): State<Arc<Conductor>>,
    Path(instance): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let instance = parse_id(&instance)?;
    if c.store.pool_remove(std::slice::from_ref(&instance))? == 0 {
        return Err(not_found(format!("{instance} is not in the pool")));
    }
    Ok(Json(Deleted {
        deleted: instance.to_string(),
    }))
}

#[utoipa::path(get, path = "/v1/rules", tag = "placement", responses((status = 200, body = [PlacementRule])))]
pub async fn rules(State(c): State<Arc<Conductor>>) -> Result<Json<Vec<PlacementRule>>, ApiError> {
    Ok(Json(c.store.rules()?))
}

/// A rule name: what an operator types, never mistaken for an id.
fn valid_rule_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
        && name.parse::<RuleId>().is_err();
    if ok {
        Ok(())
    } else {
        Err(bad_request(format!(
            "rule name {name:?}: use 1 to 64 of [a-z0-9_-], not of the form rule-<8 hex digits>"
        )))
    }
}

#[utoipa::path(post, path = "/v1/rules", tag = "placement", request_body = CreateRule, responses((status = 201, body = PlacementRule), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_rule(
    State(c): State<Arc<Conductor>>,
    b: JsonBody<CreateRule>,
) -> Result<(StatusCode, Json<PlacementRule>), ApiError> {
    let req = body(
        b,
        r#"{"name": "<name>", "policy": "anti-affinity", "scope": "host"}"#,
    )?;
    valid_rule_name(&req.name)?;
    if let Some(n) = req.max_per_domain {
        if !req.policy.spreads() {
            return Err(bad_request(format!(
                "max_per_domain goes with an anti-affinity policy, not {}",
                req.policy
            )));
        }
        if !(1..=1000).contains(&n) {
            return Err(bad_request("max_per_domain must be between 1 and 1000"));
        }
    }
    let rule = PlacementRule {
        id: RuleId::from_bits(uuid::Uuid::new_v4().as_u128() as u32),
        name: req.name,
        policy: req.policy,
        scope: req.scope,
        max_per_domain: req.max_per_domain,
        created_at: Timestamp::now(),
    };
    c.store.create_rule(&rule)?;
    tracing::info!(rule = %rule, id = %rule.id, "placement rule created");
    Ok((StatusCode::CREATED, Json(rule)))
}

#[utoipa::path(delete, path = "/v1/rules/{rule}", tag = "placement", params(("rule" = String, Path, description = "id or name")), responses((status = 200, body = Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_rule(
    State(c): State<Arc<Conductor>>,
    Path(rule): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let [rule] = <[PlacementRule; 1]>::try_from(resolve(&c, &[rule])?).expect("one asked");
    if !c.store.delete_rule(&rule.id)? {
        return Err(not_found(format!("no placement rule {}", rule.id)));
    }
    Ok(Json(Deleted {
        deleted: rule.id.to_string(),
    }))
}

/// Checks that `extra` can join the rules `set` keeps: none contradicts another, and
/// the set's servers do not newly break a requirement. The set keeps them from then.
pub(super) fn keep_rules(
    c: &Conductor,
    set: &crate::store::ReplicaSet,
    extra: Vec<PlacementRule>,
) -> Result<Vec<PlacementRule>, ApiError> {
    let mut all = c.store.set_rules(&set.id)?;
    for r in extra {
        if !all.contains(&r) {
            all.push(r);
        }
    }
    if let Some(why) = contradiction(&all) {
        return Err(bad_request(why));
    }
    let placement = of_set(c, set);
    // As if the set had come into being with these rules: what it breaks of them
    // already is refused for a requirement.
    if let Err(refused) = admit(&all, &Vec::new(), &placement) {
        return Err(conflict(format!(
            "set {} cannot keep these rules as its servers stand: {refused}",
            set.id
        )));
    }
    let ids: Vec<RuleId> = all.iter().map(|r| r.id.clone()).collect();
    c.store.add_set_rules(&set.id, &ids)?;
    Ok(all)
}

/// The set keeps these rules too (by id or name).
#[utoipa::path(post, path = "/v1/sets/{id}/rules", tag = "placement", params(("id" = String, Path)), request_body = SetRules, responses((status = 200, body = [PlacementRule]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_set_rules(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: JsonBody<SetRules>,
) -> Result<Json<Vec<PlacementRule>>, ApiError> {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"rules": ["<rule id or name>", ...]}"#)?;
    let set = existing(&c, &id)?;
    let extra = resolve(&c, &req.rules)?;
    Ok(Json(keep_rules(&c, &set, extra)?))
}

/// The set no longer keeps the rule (with none left, the default applies).
#[utoipa::path(delete, path = "/v1/sets/{id}/rules/{rule}", tag = "placement", params(("id" = String, Path), ("rule" = String, Path, description = "id or name")), responses((status = 200, body = [PlacementRule]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_set_rule(
    State(c): State<Arc<Conductor>>,
    Path((id, rule)): Path<(String, String)>,
) -> Result<Json<Vec<PlacementRule>>, ApiError> {
    let id = parse_set(&id)?;
    existing(&c, &id)?;
    let [rule] = <[PlacementRule; 1]>::try_from(resolve(&c, &[rule])?).expect("one asked");
    if !c.store.remove_set_rule(&id, &rule.id)? {
        return Err(not_found(format!(
            "set {id} does not keep rule {}",
            rule.name
        )));
    }
    Ok(Json(effective(c.store.set_rules(&id)?)))
}
