//! One replica's options: pause (maybe at a position), resume, delay, catch up, the
//! databases it applies. Each
//! starts a `reconfigure` workflow; what would leave a semi-synchronous master with no
//! replica to acknowledge its commits is refused unless forced.

use std::sync::Arc;

use axum::extract::{Path, State};
use tandem_api::{
    DelayReplica, ErrorBody, FilterReplica, IntendedRole, Pause, PauseReplica, MAX_DELAY_S,
};
use tandem_proto::{DatabaseFilter, InstanceId, Timestamp};

use super::sets::{accepted, existing, Accepted, JsonBody};
use super::{bad_request, body, parse_id, parse_set, ApiError};
use crate::store::{ReplicaOptions, ReplicaSet};
use crate::workflow::{start_for_operator, Spec};
use crate::Conductor;

const BY: &str = "api";

/// A replication delay, in seconds, within what the engines take.
pub(super) fn valid_delay(delay_s: u64) -> Result<u64, ApiError> {
    if delay_s > MAX_DELAY_S {
        return Err(bad_request(format!(
            "a delay of {delay_s} s is more than the longest one, {MAX_DELAY_S} s (a week)"
        )));
    }
    Ok(delay_s)
}

/// A database filter with plain names (a name the master does not have yet is fine:
/// it may be created later, and its changes then reach the replica).
pub(super) fn valid_filter(
    filter: Option<DatabaseFilter>,
) -> Result<Option<DatabaseFilter>, ApiError> {
    if let Some(f) = &filter {
        f.check().map_err(bad_request)?;
    }
    Ok(filter)
}

/// The options of `instance`, a replica of `set`.
fn options_of(set: &ReplicaSet, instance: &InstanceId) -> Result<ReplicaOptions, ApiError> {
    set.members
        .iter()
        .find(|m| &m.instance == instance && m.role == IntendedRole::Replica)
        .map(|m| m.options.clone())
        .ok_or_else(|| {
            bad_request(format!(
                "{instance} is not a replica of set {} (its master is {})",
                set.id, set.master
            ))
        })
}

/// Refuses, unless `force`, to take the last replica acknowledging to a semi-sync
/// master out of acknowledging: its commits would fall back to asynchronous ones.
fn keeps_an_acknowledger(
    c: &Conductor,
    set: &ReplicaSet,
    instance: &InstanceId,
    force: bool,
) -> Result<(), ApiError> {
    if force || !c.store.failover_state(&set.id)?.semi_sync {
        return Ok(());
    }
    // Only the master's direct replicas acknowledge to it (cascaded ones to their
    // own source, which is no semi-sync master).
    let others = set
        .members
        .iter()
        .filter(|m| m.role == IntendedRole::Replica && &m.instance != instance)
        .filter(|m| m.replicates_from.as_ref() == Some(&set.master))
        .filter(|m| m.options.acknowledges())
        .count();
    if others == 0 {
        return Err(bad_request(format!(
            "{instance} is the last replica acknowledging to the semi-synchronous master \
             {}: without it every commit waits out the semi-sync timeout and the master \
             falls back to asynchronous replication (a failover could then lose \
             acknowledged writes); add another replica first, or use --force",
            set.master
        )));
    }
    Ok(())
}

async fn reconfigure(
    c: &Arc<Conductor>,
    set: ReplicaSet,
    instance: InstanceId,
    options: ReplicaOptions,
) -> Accepted {
    let spec = Spec::Reconfigure {
        set: set.id,
        instance,
        options,
    };
    Ok(accepted(start_for_operator(c, spec, BY).await?))
}

#[utoipa::path(post, path = "/v1/sets/{id}/replicas/{instance}/pause", tag = "sets", params(("id" = String, Path), ("instance" = String, Path)), request_body = PauseReplica, responses((status = 202, body = tandem_api::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(c): State<Arc<Conductor>>,
    Path((id, instance)): Path<(String, String)>,
    b: JsonBody<PauseReplica>,
) -> Accepted {
    let id = parse_set(&id)?;
    let instance = parse_id(&instance)?;
    let req = body(
        b,
        r#"{"until": {"gtid": "0-1-42"}, "force": false} (both optional)"#,
    )?;
    let set = existing(&c, &id)?;
    let mut options = options_of(&set, &instance)?;
    if options.paused.is_some() && req.until.is_none() {
        return Err(bad_request(format!("{instance} is paused already")));
    }
    keeps_an_acknowledger(&c, &set, &instance, req.force)?;
    options.paused = Some(Pause {
        until: req.until,
        since: Timestamp::now(),
    });
    reconfigure(&c, set, instance, options).await
}

#[utoipa::path(post, path = "/v1/sets/{id}/replicas/{instance}/resume", tag = "sets", params(("id" = String, Path), ("instance" = String, Path)), responses((status = 202, body = tandem_api::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume(
    State(c): State<Arc<Conductor>>,
    Path((id, instance)): Path<(String, String)>,
) -> Accepted {
    let id = parse_set(&id)?;
    let instance = parse_id(&instance)?;
    let set = existing(&c, &id)?;
    let mut options = options_of(&set, &instance)?;
    if options.paused.take().is_none() {
        return Err(bad_request(format!("{instance} is not paused")));
    }
    reconfigure(&c, set, instance, options).await
}

/// A new delay; 0 catches the replica up (`tandem replica catch-up`).
#[utoipa::path(post, path = "/v1/sets/{id}/replicas/{instance}/delay", tag = "sets", params(("id" = String, Path), ("instance" = String, Path)), request_body = DelayReplica, responses((status = 202, body = tandem_api::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delay(
    State(c): State<Arc<Conductor>>,
    Path((id, instance)): Path<(String, String)>,
    b: JsonBody<DelayReplica>,
) -> Accepted {
    let id = parse_set(&id)?;
    let instance = parse_id(&instance)?;
    let req = body(b, r#"{"delay_s": 3600}"#)?;
    let delay_s = valid_delay(req.delay_s)?;
    let set = existing(&c, &id)?;
    let mut options = options_of(&set, &instance)?;
    if options.delay_s == delay_s {
        return Err(bad_request(format!(
            "{instance} replicates with a delay of {delay_s} s already"
        )));
    }
    if delay_s > 0 {
        keeps_an_acknowledger(&c, &set, &instance, req.force)?;
    }
    options.delay_s = delay_s;
    reconfigure(&c, set, instance, options).await
}

/// A new database filter (none: every database again); re-attaches the replica.
#[utoipa::path(post, path = "/v1/sets/{id}/replicas/{instance}/filter", tag = "sets", params(("id" = String, Path), ("instance" = String, Path)), request_body = FilterReplica, responses((status = 202, body = tandem_api::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn filter(
    State(c): State<Arc<Conductor>>,
    Path((id, instance)): Path<(String, String)>,
    b: JsonBody<FilterReplica>,
) -> Accepted {
    let id = parse_set(&id)?;
    let instance = parse_id(&instance)?;
    let req = body(b, r#"{"filter": {"only": ["sales"]}} or {"filter": null}"#)?;
    let filter = valid_filter(req.filter)?;
    let set = existing(&c, &id)?;
    let mut options = options_of(&set, &instance)?;
    if options.filter == filter {
        return Err(bad_request(format!(
            "{instance} applies {} already",
            filter.map_or("every database".to_owned(), |f| f.to_string())
        )));
    }
    if filter.is_some() {
        keeps_an_acknowledger(&c, &set, &instance, false)?;
    }
    options.filter = filter;
    reconfigure(&c, set, instance, options).await
}
