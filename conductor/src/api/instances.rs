//! Instances as their agents report them, a ping through the broker, and Trove's
//! instance metadata (set, get, delete, list).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use tandem_api::{
    page_size, Deleted, ErrorBody, ErrorKind, Health, InstanceQuery, InstanceView, MetadataEntry,
    MetadataValue, PingResult,
};
use tandem_proto::{Command, Envelope, Epoch, InstanceId, ReplyBody, Sender};

use super::paging::{self, Paged};
use super::{bad_request, body, known_instance, not_found, parse_id, unknown_instance, ApiError};
use crate::Conductor;

#[utoipa::path(get, path = "/v1/health", tag = "conductor", responses((status = 200, body = Health)))]
pub async fn health(State(c): State<Arc<Conductor>>) -> Json<Health> {
    let intake = c.intake.state();
    Json(Health {
        status: "ok".into(),
        broker_connected: c.agents.is_connected(),
        instances: c.registry.count(),
        intake_lag_ms: intake.lag.as_millis() as u64,
        intake_waiting: intake.waiting,
        intake_replaced: intake.replaced,
        intake_backlog: intake.backlog,
    })
}

/// The instances that reported, by id, a page at a time (500 unless `limit` says),
/// kept by the filters.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(InstanceQuery), responses((status = 200, body = [InstanceView], headers(("x-next-page" = String, description = "the cursor of the next page (pass it as `after`); absent on the last"))), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(c): State<Arc<Conductor>>,
    q: Result<Query<InstanceQuery>, QueryRejection>,
) -> Result<Paged<InstanceView>, ApiError> {
    let q = paging::query(q)?;
    let after: Option<InstanceId> = paging::cursor(q.after.as_deref())?;
    let members: Option<HashSet<InstanceId>> = match q.set.as_deref() {
        Some(set) => {
            let set = super::sets::existing(&c, &paging::set_param("set", set)?)?;
            Some(set.members.into_iter().map(|m| m.instance).collect())
        }
        None => None,
    };
    let size = page_size(q.limit, 500);
    let (items, more) = c.registry.page(after.as_ref(), size, |r| {
        q.zone.as_ref().is_none_or(|z| &r.zone == z)
            && q.role.is_none_or(|role| r.role == role)
            && q.health.is_none_or(|h| r.health == h)
            && members.as_ref().is_none_or(|m| m.contains(&r.instance))
    });
    let next = more
        .then(|| items.last().map(|i| i.id.to_string()))
        .flatten();
    Ok(Paged { items, next })
}

#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances", params(("id" = String, Path)), responses((status = 200, body = InstanceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<InstanceView>, ApiError> {
    let id = parse_id(&id)?;
    c.registry
        .get(&id)
        .map(Json)
        .ok_or_else(|| unknown_instance(&id))
}

#[utoipa::path(post, path = "/v1/instances/{id}/ping", tag = "instances", params(("id" = String, Path)), responses((status = 200, body = PingResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn ping(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<PingResult>, ApiError> {
    let id = parse_id(&id)?;
    let envelope = Envelope::new(
        Sender::Conductor {
            name: c.settings.name.clone(),
        },
        id.clone(),
        Epoch::ZERO,
        Command::Ping,
    )
    .expires_in(c.settings.command_timeout);
    let envelope = Envelope {
        term: c.term,
        ..envelope
    };
    let started = Instant::now();
    let reply = c.agents.call(&envelope, c.settings.command_timeout).await?;
    let elapsed = started.elapsed();
    match reply.body.into_result() {
        Ok(ReplyBody::Pong {
            agent_version,
            protocol,
        }) => Ok(Json(PingResult {
            instance: id,
            agent_version,
            protocol: protocol.to_string(),
            round_trip_ms: elapsed.as_secs_f64() * 1000.0,
        })),
        Ok(other) => Err(ApiError::new(
            ErrorKind::BadReply,
            format!("agent answered ping with {other:?}"),
        )),
        Err(e) => Err(ApiError::new(ErrorKind::AgentError, e.to_string())),
    }
}

#[utoipa::path(get, path = "/v1/instances/{id}/metadata", tag = "metadata", params(("id" = String, Path)), responses((status = 200, description = "key/value pairs", body = BTreeMap<String, String>)))]
pub async fn list_metadata(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    let id = parse_id(&id)?;
    known_instance(&c, &id)?;
    let mut all: BTreeMap<String, String> = c.store.metadata(&id)?.into_iter().collect();
    all.extend(crate::metadata::from_engine(
        c.registry.report(&id).as_ref(),
    ));
    Ok(Json(all))
}

#[utoipa::path(get, path = "/v1/instances/{id}/metadata/{key}", tag = "metadata", params(("id" = String, Path), ("key" = String, Path)), responses((status = 200, body = MetadataEntry), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_metadata(
    State(c): State<Arc<Conductor>>,
    Path((id, key)): Path<(String, String)>,
) -> Result<Json<MetadataEntry>, ApiError> {
    let id = parse_id(&id)?;
    known_instance(&c, &id)?;
    let value = c
        .store
        .metadata(&id)?
        .into_iter()
        .chain(crate::metadata::from_engine(
            c.registry.report(&id).as_ref(),
        ))
        .find(|(k, _)| *k == key);
    match value {
        Some((key, value)) => Ok(Json(MetadataEntry { key, value })),
        None => Err(not_found(format!(
            "instance {id} has no metadata key {key:?}"
        ))),
    }
}

#[utoipa::path(put, path = "/v1/instances/{id}/metadata/{key}", tag = "metadata", params(("id" = String, Path), ("key" = String, Path)), request_body = MetadataValue, responses((status = 200, body = MetadataEntry), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_metadata(
    State(c): State<Arc<Conductor>>,
    Path((id, key)): Path<(String, String)>,
    b: Result<Json<MetadataValue>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<MetadataEntry>, ApiError> {
    let id = parse_id(&id)?;
    let MetadataValue { value } = body(b, r#"{"value": "..."}"#)?;
    known_instance(&c, &id)?;
    if key.is_empty() || key.len() > 255 {
        return Err(bad_request("a metadata key is 1 to 255 characters"));
    }
    crate::metadata::validate(&key, &value).map_err(bad_request)?;
    c.store.set_metadata(&id, &key, &value)?;
    Ok(Json(MetadataEntry { key, value }))
}

#[utoipa::path(delete, path = "/v1/instances/{id}/metadata/{key}", tag = "metadata", params(("id" = String, Path), ("key" = String, Path)), responses((status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_metadata(
    State(c): State<Arc<Conductor>>,
    Path((id, key)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    let id = parse_id(&id)?;
    known_instance(&c, &id)?;
    if crate::metadata::READ_ONLY.contains(&key.as_str()) {
        return Err(bad_request(crate::metadata::read_only(&key)));
    }
    if c.store.delete_metadata(&id, &key)? {
        Ok(Json(Deleted { deleted: key }))
    } else {
        Err(not_found(format!(
            "instance {id} has no metadata key {key:?}"
        )))
    }
}
