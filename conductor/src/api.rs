//! The HTTP API (JSON). Errors are `{"error": "...", "kind": "..."}` with a status code
//! that says whose fault it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tandem_proto::{
    Command, Envelope, Epoch, InstanceId, ReplicaSetId, ReplyBody, Sender, Timestamp,
};
use tandem_transport::CallError;

use crate::Conductor;

mod auth;
mod enrolment;
pub mod tls;

pub fn router(conductor: Arc<Conductor>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/instances", get(list_instances))
        .route("/v1/instances/{id}", get(get_instance))
        .route("/v1/instances/{id}/ping", post(ping_instance))
        .route(
            "/v1/instances/{id}/enrolment",
            post(enrolment::enrol).delete(enrolment::rekey),
        )
        .route("/v1/enrolments", get(enrolment::list))
        .route("/v1/instances/{id}/metadata", get(list_metadata))
        .route(
            "/v1/instances/{id}/metadata/{key}",
            get(get_metadata).put(put_metadata).delete(delete_metadata),
        )
        .route("/v1/sets", get(list_sets).post(create_set))
        .route("/v1/sets/{id}", get(get_set))
        .route("/v1/sets/{id}/replicas", post(add_replica))
        .route("/v1/sets/{id}/replicas/{instance}", delete(detach_replica))
        .route("/v1/sets/{id}/switchover", post(switchover))
        .route("/v1/sets/{id}/failover", post(failover))
        .route("/v1/sets/{id}/semi-sync", axum::routing::put(set_semi_sync))
        .route("/v1/sets/{id}/failover/{action}", post(failover_control))
        .route("/v1/instances/{id}/backups", post(take_backup))
        .route("/v1/backups", get(list_backups))
        .route("/v1/backups/{id}", get(get_backup).delete(delete_backup))
        .route("/v1/backups/{id}/cancel", post(cancel_backup))
        .route("/v1/workflows", get(list_workflows))
        .route("/v1/workflows/{id}", get(get_workflow))
        .route("/v1/workflows/{id}/cancel", post(cancel_workflow))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/requests", get(audit_requests))
        .route("/v1/events", get(events))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(axum::middleware::from_fn_with_state(
            conductor.clone(),
            auth::authorize,
        ))
        .with_state(conductor)
}

/// Every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// One line a person can act on.
    pub error: String,
    /// bad_request, not_found, unknown_instance, conflict, busy, timed_out, bad_reply,
    /// agent_error, broker_unavailable, internal.
    pub kind: String,
}

/// The OpenAPI document of this API, served at `/v1/openapi.json`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tandem conductor API",
        description = "Replica sets, workflows, instances and their replication contract. \
            Every path but /v1/health and /v1/openapi.json needs a bearer token: a reader's \
            for GET, an operator's for every change (sent as application/json). Instance and \
            replica set ids are 1 to 64 of [a-z0-9_-]; anything else is a 400."
    ),
    paths(
        health,
        list_instances,
        get_instance,
        ping_instance,
        enrolment::enrol,
        enrolment::rekey,
        enrolment::list,
        list_metadata,
        get_metadata,
        put_metadata,
        delete_metadata,
        list_sets,
        get_set,
        create_set,
        add_replica,
        detach_replica,
        switchover,
        failover,
        failover_control,
        set_semi_sync,
        take_backup,
        list_backups,
        get_backup,
        delete_backup,
        cancel_backup,
        list_workflows,
        get_workflow,
        cancel_workflow,
        audit,
        audit_requests,
        events
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(
        ErrorBody,
        PingResult,
        enrolment::EnrolmentView,
        enrolment::EnrolRequest,
        MetadataValue,
        MemberView,
        SetView,
        CreateSet,
        AddReplica,
        Switchover,
        Failover,
        FailoverView,
        SemiSyncRequest,
        crate::failover::Verdict,
        crate::store::FailoverState,
        crate::registry::InstanceView,
        crate::registry::Contract,
        crate::store::Member,
        crate::store::IntendedRole,
        crate::store::WorkflowRow,
        crate::store::ApiRequest,
        crate::store::WorkflowState
    ))
)]
pub struct ApiDoc;

/// The bearer-token scheme every path but health and this document needs.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.message, "kind": self.kind})),
        )
            .into_response()
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let (status, kind) = match &e {
            CallError::UnknownInstance(_) => (StatusCode::NOT_FOUND, "unknown_instance"),
            CallError::NotEnrolled(_) => (StatusCode::NOT_FOUND, "not_enrolled"),
            CallError::TimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, "timed_out"),
            CallError::BadReply { .. } => (StatusCode::BAD_GATEWAY, "bad_reply"),
            CallError::Transport(_) => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        let (status, kind) = match &e {
            StoreError::Busy { .. } => (StatusCode::CONFLICT, "busy"),
            StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn parse_set(id: &str) -> Result<ReplicaSetId, ApiError> {
    ReplicaSetId::new(id).map_err(|e| bad_request(format!("replica set id: {e}")))
}

/// A 404 unless some agent of `id` has reported here, or the store knows it.
fn known_instance(c: &Conductor, id: &InstanceId) -> Result<(), ApiError> {
    if c.registry.report(id).is_some() || c.store.instance(id)?.is_some() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_instance",
        format!("no agent of instance {id} has reported to this conductor (`tandem status` lists those that have)"),
    ))
}

fn parse_id(id: &str) -> Result<InstanceId, ApiError> {
    InstanceId::new(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

#[utoipa::path(get, path = "/v1/health", tag = "conductor", responses((status = 200, description = "status, broker_connected, instances", body = Object)))]
async fn health(State(c): State<Arc<Conductor>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "broker_connected": c.transport.is_connected(),
        "instances": c.registry.list().len(),
    }))
}

#[utoipa::path(get, path = "/v1/instances", tag = "instances", responses((status = 200, body = [crate::registry::InstanceView])))]
async fn list_instances(
    State(c): State<Arc<Conductor>>,
) -> Json<Vec<crate::registry::InstanceView>> {
    Json(c.registry.list())
}

#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances", params(("id" = String, Path)), responses((status = 200, body = crate::registry::InstanceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_instance(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<crate::registry::InstanceView>, ApiError> {
    let id = parse_id(&id)?;
    c.registry.get(&id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_instance",
            format!("no agent of instance {id} has reported to this conductor"),
        )
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct PingResult {
    #[schema(value_type = String)]
    instance: InstanceId,
    agent_version: String,
    protocol: String,
    round_trip_ms: f64,
}

#[utoipa::path(post, path = "/v1/instances/{id}/ping", tag = "instances", params(("id" = String, Path)), responses((status = 200, body = PingResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
async fn ping_instance(
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
    let started = Instant::now();
    let reply = c
        .transport
        .call(&envelope, c.settings.command_timeout)
        .await?;
    let elapsed: Duration = started.elapsed();
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
            StatusCode::BAD_GATEWAY,
            "bad_reply",
            format!("agent answered ping with {other:?}"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "agent_error",
            e.to_string(),
        )),
    }
}

// ---- metadata (Trove's instance metadata: set, get, delete, list) ----

#[utoipa::path(get, path = "/v1/instances/{id}/metadata", tag = "metadata", params(("id" = String, Path)), responses((status = 200, description = "key/value pairs", body = Object)))]
async fn list_metadata(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Map<String, serde_json::Value>>, ApiError> {
    let id = parse_id(&id)?;
    known_instance(&c, &id)?;
    Ok(Json(
        c.store
            .metadata(&id)?
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/instances/{id}/metadata/{key}", tag = "metadata", params(("id" = String, Path), ("key" = String, Path)), responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_metadata(
    State(c): State<Arc<Conductor>>,
    Path((id, key)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    known_instance(&c, &id)?;
    let value = c.store.metadata(&id)?.into_iter().find(|(k, _)| *k == key);
    match value {
        Some((_, v)) => Ok(Json(json!({"key": key, "value": v}))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {id} has no metadata key {key:?}"),
        )),
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct MetadataValue {
    value: String,
}

#[utoipa::path(put, path = "/v1/instances/{id}/metadata/{key}", tag = "metadata", params(("id" = String, Path), ("key" = String, Path)), request_body = MetadataValue, responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn put_metadata(
    State(c): State<Arc<Conductor>>,
    Path((id, key)): Path<(String, String)>,
    body: Result<Json<MetadataValue>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let Json(body) =
        body.map_err(|e| bad_request(format!("expected {{\"value\": \"...\"}}: {e}")))?;
    known_instance(&c, &id)?;
    if key.is_empty() || key.len() > 255 {
        return Err(bad_request("a metadata key is 1 to 255 characters"));
    }
    crate::metadata::validate(&key, &body.value).map_err(bad_request)?;
    c.store.set_metadata(&id, &key, &body.value)?;
    Ok(Json(json!({"key": key, "value": body.value})))
}

#[utoipa::path(delete, path = "/v1/instances/{id}/metadata/{key}", tag = "metadata", params(("id" = String, Path), ("key" = String, Path)), responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_metadata(
    State(c): State<Arc<Conductor>>,
    Path((id, key)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    known_instance(&c, &id)?;
    if c.store.delete_metadata(&id, &key)? {
        Ok(Json(json!({"deleted": key})))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {id} has no metadata key {key:?}"),
        ))
    }
}

// ---- replica sets ----

/// One member of a set: what the conductor wants, what the engine reports, and the
/// difference between the two.
#[derive(Serialize, utoipa::ToSchema)]
struct MemberView {
    #[schema(value_type = String)]
    instance: InstanceId,
    intended: crate::store::Member,
    observed: Option<crate::registry::Contract>,
    #[schema(value_type = Option<String>)]
    role: Option<tandem_proto::Role>,
    #[schema(value_type = Option<String>)]
    health: Option<tandem_proto::Health>,
    /// `{"gtid": "0-1-5"}` or `{"lsn": "16/B374D848"}`.
    #[schema(value_type = Option<Object>)]
    position: Option<tandem_proto::Position>,
    lag_seconds: Option<f64>,
    /// `active`, `fallen_back` (a master whose commits no longer wait for a replica),
    /// `acknowledging` (a replica); absent when semi-sync is off.
    #[schema(value_type = Option<String>)]
    semi_sync: Option<tandem_proto::SemiSync>,
    /// The agent set its engine read-only when its lease ran out.
    fenced: bool,
    /// Why this replica's history split from the master's, when it did.
    diverged: Option<String>,
    /// Accounts that can write through read-only on this engine.
    fencing_hazards: Vec<String>,
    /// Managed settings waiting for an engine restart.
    restart_needed: Vec<String>,
    /// Its part in the set's failsafe: a master's list, or the master a replica
    /// answers (see `tandem_proto::failsafe`).
    #[schema(value_type = Option<Object>)]
    failsafe: Option<tandem_proto::FailsafeState>,
    /// Empty when the engine does what the conductor wants.
    drift: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct SetView {
    #[schema(value_type = String)]
    id: ReplicaSetId,
    #[schema(value_type = u64)]
    epoch: Epoch,
    #[schema(value_type = String)]
    master: InstanceId,
    members: Vec<MemberView>,
    failover: FailoverView,
}

/// A set's failure detection and automatic failover, as they stand.
#[derive(Serialize, utoipa::ToSchema)]
struct FailoverView {
    /// Automatic failover on in the configuration and not paused for this set.
    automatic: bool,
    /// The detector's latest verdict on the master (absent until it looked).
    verdict: Option<crate::failover::Verdict>,
    #[serde(flatten)]
    state: crate::store::FailoverState,
}

fn set_view(c: &Conductor, set: crate::store::ReplicaSet) -> SetView {
    let members = set
        .members
        .iter()
        .map(|m| {
            let report = c.registry.report(&m.instance);
            let drift = crate::drift::drift(m, report.as_ref(), c.intended_delay_s(&m.instance));
            MemberView {
                instance: m.instance.clone(),
                intended: m.clone(),
                observed: report.as_ref().map(|r| crate::registry::Contract {
                    replicates_from: r.replicates_from.clone(),
                    replicates_to: r.replicates_to.clone(),
                    writable: r.writable,
                }),
                role: report.as_ref().map(|r| r.role),
                health: report.as_ref().map(|r| r.health),
                position: report.as_ref().and_then(|r| r.position.clone()),
                lag_seconds: report
                    .as_ref()
                    .and_then(|r| r.lag.as_ref().map(|l| l.seconds)),
                semi_sync: report.as_ref().and_then(|r| r.semi_sync),
                fenced: report.as_ref().is_some_and(|r| r.fenced),
                diverged: report
                    .as_ref()
                    .and_then(|r| r.replication.as_ref())
                    .and_then(|s| s.diverged.clone()),
                fencing_hazards: report
                    .as_ref()
                    .map(|r| r.fencing_hazards.clone())
                    .unwrap_or_default(),
                restart_needed: report
                    .as_ref()
                    .map(|r| r.restart_needed.clone())
                    .unwrap_or_default(),
                failsafe: report.as_ref().and_then(|r| r.failsafe.clone()),
                drift,
            }
        })
        .collect();
    let state = c.store.failover_state(&set.id).unwrap_or_default();
    let failover = FailoverView {
        automatic: c.settings.failover.automatic && !state.paused,
        verdict: c.failover_watch.verdict(&set.id),
        state,
    };
    SetView {
        id: set.id,
        epoch: set.epoch,
        master: set.master,
        members,
        failover,
    }
}

#[utoipa::path(get, path = "/v1/sets", tag = "sets", responses((status = 200, body = [SetView])))]
async fn list_sets(State(c): State<Arc<Conductor>>) -> Result<Json<Vec<SetView>>, ApiError> {
    Ok(Json(
        c.store
            .sets()?
            .into_iter()
            .map(|s| set_view(&c, s))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/sets/{id}", tag = "sets", params(("id" = String, Path)), responses((status = 200, body = SetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_set(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<SetView>, ApiError> {
    let id = parse_set(&id)?;
    let set = existing_set(&c, &id)?;
    Ok(Json(set_view(&c, set)))
}

/// The set `id`, or a 404 that names it.
fn existing_set(c: &Conductor, id: &ReplicaSetId) -> Result<crate::store::ReplicaSet, ApiError> {
    c.store.set(id)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no replica set {id}"),
        )
    })
}

fn body<T>(
    b: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| bad_request(format!("expected {shape}: {e}")))
}

/// The instance must have reported, and must not be in a set already.
fn free_instance(c: &Conductor, id: &InstanceId) -> Result<(), ApiError> {
    if c.registry.report(id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_instance",
            format!("no agent of instance {id} has reported to this conductor"),
        ));
    }
    if let Some(set) = c.store.set_of(id)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{id} is already a member of replica set {set}"),
        ));
    }
    Ok(())
}

fn accepted(row: crate::store::WorkflowRow) -> (StatusCode, Json<crate::store::WorkflowRow>) {
    (StatusCode::ACCEPTED, Json(row))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct CreateSet {
    id: String,
    master: String,
    /// Semi-synchronous replication: a commit is acknowledged only once a replica has
    /// it, so a failover loses no acknowledged write.
    #[serde(default)]
    semi_sync: bool,
}

#[utoipa::path(post, path = "/v1/sets", tag = "sets", request_body = CreateSet, responses((status = 202, description = "the workflow that creates it", body = crate::store::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_set(
    State(c): State<Arc<Conductor>>,
    b: Result<Json<CreateSet>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<crate::store::WorkflowRow>), ApiError> {
    let req = body(b, r#"{"id": "<set>", "master": "<instance>"}"#)?;
    let id = parse_set(&req.id)?;
    let master = parse_id(&req.master)?;
    free_instance(&c, &master)?;
    c.store.create_set(&id, &master)?;
    if req.semi_sync {
        c.store.set_failover_state(
            &id,
            &crate::store::FailoverState {
                semi_sync: true,
                ..Default::default()
            },
        )?;
    }
    let row = crate::workflow::start_for_operator(
        &c,
        crate::workflow::Spec::CreateSet { set: id, master },
        serde_json::Map::new(),
        "api",
    )
    .await?;
    Ok(accepted(row))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct AddReplica {
    /// One instance; or several in `instances` (seeded in parallel).
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    instances: Vec<String>,
    /// `none` (default: attach as it is; the binary log brings it up to date),
    /// `stream` (a live copy from `from`, default the master), `backup` (`backup`,
    /// default the set's newest), or `auto` (a recent backup if there is one, else
    /// stream).
    #[serde(default)]
    seed: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    backup: Option<String>,
}

#[utoipa::path(post, path = "/v1/sets/{id}/replicas", tag = "sets", params(("id" = String, Path)), request_body = AddReplica, responses((status = 202, body = crate::store::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_replica(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: Result<Json<AddReplica>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<crate::store::WorkflowRow>), ApiError> {
    let id = parse_set(&id)?;
    let req = body(
        b,
        r#"{"instance": "<instance>"} or {"instances": [...], "seed": "stream|backup|auto|none"}"#,
    )?;
    let mut names = req.instances.clone();
    names.extend(req.instance.clone());
    if names.is_empty() {
        return Err(bad_request(
            "name the new replica in `instance` (or several in `instances`)",
        ));
    }
    let set = existing_set(&c, &id)?;
    let seeded = req.seed.as_deref().is_some_and(|s| s != "none");
    let mut instances = Vec::new();
    for n in &names {
        let i = parse_id(n)?;
        if instances.contains(&i) {
            return Err(bad_request(format!("{i} is named twice")));
        }
        // A quarantined member is re-seeded in place: its data is replaced by a copy.
        let quarantined = set
            .members
            .iter()
            .any(|m| m.instance == i && m.role == crate::store::IntendedRole::Quarantined);
        if quarantined && !seeded {
            return Err(bad_request(format!(
                "{i} is quarantined (it holds transactions the master lacks): re-seed it \
                 with --seed stream or --seed backup, which replaces its data"
            )));
        }
        if !quarantined {
            free_instance(&c, &i)?;
        }
        instances.push(i);
    }
    let seed = match req.seed.as_deref().unwrap_or("none") {
        "none" => {
            let [instance] = <[InstanceId; 1]>::try_from(instances).map_err(|_| {
                bad_request("several replicas at once need a seed method (stream, backup or auto)")
            })?;
            let row = crate::workflow::start_for_operator(
                &c,
                crate::workflow::Spec::Attach { set: id, instance },
                serde_json::Map::new(),
                "api",
            )
            .await?;
            return Ok(accepted(row));
        }
        "stream" => stream_from(&set, req.from.as_deref())?,
        "backup" => crate::workflow::provision::Seed::Backup {
            backup_id: match &req.backup {
                Some(b) => recorded_backup(&c, &set, b)?,
                None => {
                    newest_backup(&c, &set)?
                        .ok_or_else(|| {
                            bad_request(format!(
                                "set {id} has no recorded backup; take one or seed by stream"
                            ))
                        })?
                        .backup_id
                }
            },
        },
        "auto" => match newest_backup(&c, &set)? {
            Some(b)
                if Timestamp::now().0.saturating_sub(b.created_at.0)
                    <= c.settings.seed_backup_max_age.as_millis() as u64 =>
            {
                crate::workflow::provision::Seed::Backup {
                    backup_id: b.backup_id,
                }
            }
            _ => stream_from(&set, req.from.as_deref())?,
        },
        other => {
            return Err(bad_request(format!(
                "seed {other:?} is not one of none, stream, backup, auto"
            )))
        }
    };
    let row = crate::workflow::start_for_operator(
        &c,
        crate::workflow::Spec::Provision {
            set: id,
            instances,
            seed,
        },
        serde_json::Map::new(),
        "api",
    )
    .await?;
    Ok(accepted(row))
}

fn stream_from(
    set: &crate::store::ReplicaSet,
    from: Option<&str>,
) -> Result<crate::workflow::provision::Seed, ApiError> {
    let from = match from {
        Some(f) => parse_id(f)?,
        None => set.master.clone(),
    };
    if from != set.master && !set.replicas().any(|r| r == &from) {
        return Err(bad_request(format!(
            "{from} is not a member of set {}; a copy comes from the master or a replica",
            set.id
        )));
    }
    Ok(crate::workflow::provision::Seed::Stream { from })
}

/// The newest recorded backup of any member of `set`.
fn newest_backup(
    c: &Conductor,
    set: &crate::store::ReplicaSet,
) -> Result<Option<tandem_proto::BackupInfo>, ApiError> {
    let members: Vec<&InstanceId> = std::iter::once(&set.master).chain(set.replicas()).collect();
    Ok(c.store
        .backups(None)?
        .into_iter()
        .find(|b| members.contains(&&b.instance)))
}

fn recorded_backup(
    c: &Conductor,
    set: &crate::store::ReplicaSet,
    backup_id: &str,
) -> Result<String, ApiError> {
    let b = c
        .store
        .backups(None)?
        .into_iter()
        .find(|b| b.backup_id == backup_id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no backup {backup_id} is recorded"),
            )
        })?;
    if b.instance != set.master && !set.replicas().any(|r| r == &b.instance) {
        return Err(bad_request(format!(
            "backup {backup_id} is of {}, which is not a member of set {}",
            b.instance, set.id
        )));
    }
    Ok(b.backup_id)
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct TakeBackup {
    /// `full` (default) or `incremental`.
    #[serde(default)]
    kind: Option<String>,
    /// For an incremental: the backup it continues (default: this instance's newest).
    #[serde(default)]
    parent: Option<String>,
}

#[utoipa::path(post, path = "/v1/instances/{id}/backups", tag = "backups", params(("id" = String, Path)), request_body = TakeBackup, responses((status = 202, description = "{backup_id, instance}", body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn take_backup(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: Result<Json<TakeBackup>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let instance = parse_id(&id)?;
    let req = body(
        b,
        r#"{"kind": "full|incremental", "parent": "<backup id>"}"#,
    )?;
    if c.registry.report(&instance).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_instance",
            format!("no agent of instance {instance} has reported to this conductor"),
        ));
    }
    let kind = match req.kind.as_deref().unwrap_or("full") {
        "full" => tandem_proto::BackupKind::Full,
        "incremental" => {
            let parent = match req.parent {
                Some(p) => {
                    let recorded = c
                        .store
                        .backups(None)?
                        .into_iter()
                        .find(|b| b.backup_id == p);
                    match recorded {
                        None => {
                            return Err(bad_request(format!(
                                "field `parent`: no backup {p:?} is recorded (`tandem backup list {instance}`)"
                            )))
                        }
                        Some(b) if b.instance != instance => {
                            return Err(bad_request(format!(
                                "field `parent`: backup {p} is of {}, not of {instance}; an \
                                 incremental continues a backup of its own server",
                                b.instance
                            )))
                        }
                        Some(_) => p,
                    }
                }
                None => {
                    c.store
                        .backups(Some(&instance))?
                        .into_iter()
                        .next()
                        .ok_or_else(|| {
                            bad_request(format!(
                                "{instance} has no backup to continue; take a full one first"
                            ))
                        })?
                        .backup_id
                }
            };
            tandem_proto::BackupKind::Incremental { parent }
        }
        other => {
            return Err(bad_request(format!(
                "kind {other:?} is not full or incremental"
            )))
        }
    };
    let backup_id = crate::backups::start(&c, &instance, kind)
        .await
        .map_err(agent_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"backup_id": backup_id, "instance": instance})),
    ))
}

fn agent_error(e: tandem_proto::CommandError) -> ApiError {
    let status = match e.kind {
        tandem_proto::ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        tandem_proto::ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, "agent_error", e.to_string())
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
struct BackupFilter {
    instance: Option<String>,
}

#[utoipa::path(get, path = "/v1/backups", tag = "backups", params(BackupFilter), responses((status = 200, description = "{backups: [BackupInfo], running: {id: {instance, state, error}}}", body = Object)))]
async fn list_backups(
    State(c): State<Arc<Conductor>>,
    axum::extract::Query(f): axum::extract::Query<BackupFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let instance = f.instance.as_deref().map(parse_id).transpose()?;
    let backups = c.store.backups(instance.as_ref())?;
    let running = c.backups_running.lock().expect("poisoned").clone();
    Ok(Json(json!({"backups": backups, "running": running})))
}

#[utoipa::path(get, path = "/v1/backups/{id}", tag = "backups", params(("id" = String, Path)), responses((status = 200, description = "{state: done|running|failed, backup?, error?}", body = Object), (status = 404, body = ErrorBody)))]
async fn get_backup(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(b) = c
        .store
        .backups(None)?
        .into_iter()
        .find(|b| b.backup_id == id)
    {
        return Ok(Json(json!({"state": "done", "backup": b})));
    }
    match c.backups_running.lock().expect("poisoned").get(&id) {
        Some(run) => Ok(Json(
            json!({"state": run.state, "instance": run.instance, "error": run.error}),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no backup {id}"),
        )),
    }
}

/// Stops a running backup: the agent ends it as cancelled and removes what it wrote.
#[utoipa::path(post, path = "/v1/backups/{id}/cancel", tag = "backups", params(("id" = String, Path)), responses((status = 202, body = Object), (status = 409, body = ErrorBody)))]
async fn cancel_backup(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    crate::backups::cancel(&c, &id).await.map_err(|e| {
        if e.kind == tandem_proto::ErrorKind::BadRequest {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.message)
        } else {
            agent_error(e)
        }
    })?;
    tracing::warn!(backup = %id, "an operator cancels a backup");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"backup": id, "cancel": "requested"})),
    ))
}

#[utoipa::path(delete, path = "/v1/backups/{id}", tag = "backups", params(("id" = String, Path)), responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_backup(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use crate::backups::DeleteError;
    crate::backups::delete(&c, &id).await.map_err(|e| match e {
        DeleteError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
        DeleteError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        DeleteError::Other(m) => ApiError::new(StatusCode::BAD_GATEWAY, "agent_error", m),
    })?;
    Ok(Json(json!({"deleted": id})))
}

#[utoipa::path(delete, path = "/v1/sets/{id}/replicas/{instance}", tag = "sets", params(("id" = String, Path), ("instance" = String, Path)), responses((status = 202, body = crate::store::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn detach_replica(
    State(c): State<Arc<Conductor>>,
    Path((id, instance)): Path<(String, String)>,
) -> Result<(StatusCode, Json<crate::store::WorkflowRow>), ApiError> {
    let id = parse_set(&id)?;
    let instance = parse_id(&instance)?;
    let set = existing_set(&c, &id)?;
    if !set.replicas().any(|r| r == &instance) {
        return Err(bad_request(format!(
            "{instance} is not a replica of set {id}"
        )));
    }
    let row = crate::workflow::start_for_operator(
        &c,
        crate::workflow::Spec::Detach { set: id, instance },
        serde_json::Map::new(),
        "api",
    )
    .await?;
    Ok(accepted(row))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct Switchover {
    candidate: String,
    /// How long the candidate may take to apply the old master's last write before the
    /// switchover is rolled back (default 10 s).
    #[serde(default)]
    catch_up_timeout_ms: Option<u64>,
}

#[utoipa::path(post, path = "/v1/sets/{id}/switchover", tag = "sets", params(("id" = String, Path)), request_body = Switchover, responses((status = 202, body = crate::store::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "another workflow is active on the set", body = ErrorBody)))]
async fn switchover(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: Result<Json<Switchover>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<crate::store::WorkflowRow>), ApiError> {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"candidate": "<instance>"}"#)?;
    let candidate = parse_id(&req.candidate)?;
    let set = existing_set(&c, &id)?;
    if !set.replicas().any(|r| r == &candidate) {
        return Err(bad_request(format!(
            "{candidate} is not a replica of set {id} (its master is {})",
            set.master
        )));
    }
    // The old master and the epoch are fixed when the request is accepted, so that a
    // resumed workflow knows where it started.
    let mut extra = serde_json::Map::new();
    extra.insert("from".into(), json!(set.master));
    extra.insert("epoch".into(), json!(set.epoch));
    if let Some(ms) = req.catch_up_timeout_ms {
        if !(100..=3_600_000).contains(&ms) {
            return Err(bad_request(
                "catch_up_timeout_ms must be between 100 and 3600000",
            ));
        }
        extra.insert("catch_up_timeout_ms".into(), json!(ms));
    }
    let row = crate::workflow::start_for_operator(
        &c,
        crate::workflow::Spec::Switchover { set: id, candidate },
        extra,
        "api",
    )
    .await?;
    Ok(accepted(row))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct Failover {
    /// The replica to promote; default: the one the candidate rule picks.
    #[serde(default)]
    candidate: Option<String>,
    /// Fail over although the master looks healthy, or promote a candidate that is
    /// behind another replica or not eligible (transactions may be lost).
    #[serde(default)]
    force: bool,
}

/// Manual failover (Trove's eject): for a master that is gone. A healthy master is
/// refused (use a switchover, which loses nothing) unless `force`.
#[utoipa::path(post, path = "/v1/sets/{id}/failover", tag = "sets", params(("id" = String, Path)), request_body = Failover, responses((status = 202, body = crate::store::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "the master is healthy, or another workflow is active on the set", body = ErrorBody)))]
async fn failover(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: Result<Json<Failover>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<crate::store::WorkflowRow>), ApiError> {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"candidate"?: "<instance>", "force"?: true}"#)?;
    let candidate = req.candidate.as_deref().map(parse_id).transpose()?;
    let set = existing_set(&c, &id)?;
    if let Some(candidate) = &candidate {
        if !set.replicas().any(|r| r == candidate) {
            return Err(bad_request(format!(
                "{candidate} is not a replica of set {id} (its master is {})",
                set.master
            )));
        }
    }
    if !req.force {
        let verdict = c.failover_watch.verdict(&id);
        if matches!(verdict, None | Some(crate::failover::Verdict::Healthy)) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "the master {} of set {id} is healthy: use a switchover (`tandem promote`), \
                     which loses nothing, or --force",
                    set.master
                ),
            ));
        }
    }
    let row = crate::workflow::start_for_operator(
        &c,
        crate::workflow::Spec::Failover {
            set: id,
            failed: set.master,
            candidate,
            force: req.force,
            automatic: false,
        },
        serde_json::Map::new(),
        "api",
    )
    .await?;
    Ok(accepted(row))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct SemiSyncRequest {
    enabled: bool,
}

/// Semi-synchronous replication on or off for a running set: recorded, then brought
/// to the engines by a workflow.
#[utoipa::path(put, path = "/v1/sets/{id}/semi-sync", tag = "sets", params(("id" = String, Path)), request_body = SemiSyncRequest, responses((status = 202, body = crate::store::WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_semi_sync(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: Result<Json<SemiSyncRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<crate::store::WorkflowRow>), ApiError> {
    let id = parse_set(&id)?;
    let req = body(b, r#"{"enabled": true|false}"#)?;
    existing_set(&c, &id)?;
    let mut state = c.store.failover_state(&id)?;
    let before = state.semi_sync;
    state.semi_sync = req.enabled;
    c.store.set_failover_state(&id, &state)?;
    let started = crate::workflow::start_for_operator(
        &c,
        crate::workflow::Spec::SemiSync {
            set: id.clone(),
            on: req.enabled,
        },
        serde_json::Map::new(),
        "api",
    )
    .await;
    match started {
        Ok(row) => Ok(accepted(row)),
        Err(e) => {
            // Busy: the wish is not recorded either.
            state.semi_sync = before;
            c.store.set_failover_state(&id, &state)?;
            Err(e.into())
        }
    }
}

/// `pause` / `resume` automatic failover of a set, or `ack` (acknowledge) an automatic
/// failover held back by the anti-flapping window, which lets it go ahead.
#[utoipa::path(post, path = "/v1/sets/{id}/failover/{action}", tag = "sets", params(("id" = String, Path), ("action" = String, Path, description = "pause, resume or ack")), responses((status = 200, body = crate::store::FailoverState), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn failover_control(
    State(c): State<Arc<Conductor>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<crate::store::FailoverState>, ApiError> {
    let id = parse_set(&id)?;
    existing_set(&c, &id)?;
    let mut state = c.store.failover_state(&id)?;
    match action.as_str() {
        "pause" => state.paused = true,
        "resume" => state.paused = false,
        "ack" => {
            if state.blocked.is_none() && state.last_automatic.is_none() {
                return Err(bad_request(format!(
                    "set {id} has no automatic failover to acknowledge"
                )));
            }
            // The window starts again from the next failover.
            state.blocked = None;
            state.last_automatic = None;
        }
        other => {
            return Err(bad_request(format!(
                "{other:?} is not a failover action: pause, resume or ack"
            )))
        }
    }
    c.store.set_failover_state(&id, &state)?;
    tracing::warn!(set = %id, action, "failover control");
    Ok(Json(state))
}

// ---- workflows ----

#[utoipa::path(get, path = "/v1/workflows", tag = "workflows", responses((status = 200, body = [crate::store::WorkflowRow])))]
async fn list_workflows(
    State(c): State<Arc<Conductor>>,
) -> Result<Json<Vec<crate::store::WorkflowRow>>, ApiError> {
    Ok(Json(c.store.workflows(100)?))
}

#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows", params(("id" = String, Path)), responses((status = 200, description = "{workflow, steps}", body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_workflow(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let row = existing_workflow(&c, &id)?;
    let mut journal = serde_json::to_value(c.store.journal(&id)?)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    redact(&mut journal);
    Ok(Json(json!({"workflow": row, "steps": journal})))
}

fn existing_workflow(c: &Conductor, id: &str) -> Result<crate::store::WorkflowRow, ApiError> {
    c.store.workflow(id)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no workflow {id}"),
        )
    })
}

/// Stops a running workflow's long steps (seeding, restores) at their next safe point:
/// each is cancelled on its agent, which leaves its server as it was; long steps not
/// started yet are not started. Short steps run to their end, and the workflow ends
/// saying it was cancelled and what was left as it was.
#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", tag = "workflows", params(("id" = String, Path)), responses((status = 202, body = crate::store::WorkflowRow), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_workflow(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<crate::store::WorkflowRow>), ApiError> {
    let row = existing_workflow(&c, &id)?;
    if !row.state.is_active() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "workflow {id} already ended ({}); there is nothing to cancel",
                row.state.as_str()
            ),
        ));
    }
    let cancellable = serde_json::from_value::<crate::workflow::Spec>(row.params.clone())
        .is_ok_and(|spec| spec.cancellable());
    if !cancellable {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "workflow {id} ({}) has no long steps to cancel: it ends on its own within \
                 its timeouts, rolling back what it says it can",
                row.kind
            ),
        ));
    }
    c.store.request_cancel(&id, "an operator")?;
    tracing::warn!(workflow = %id, kind = row.kind, "an operator cancels a workflow");
    Ok((StatusCode::ACCEPTED, Json(row)))
}

/// Replication passwords are in the journal (a resumed workflow needs them); never in
/// an API answer.
fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if k == "password" {
                    *val = serde_json::Value::String("***".into());
                } else {
                    redact(val);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

// ---- audit log and live events ----

/// Every command the conductor's workflows sent, newest first: what, to whom, under
/// which epoch, by which workflow, and the result (passwords redacted).
#[utoipa::path(get, path = "/v1/audit", tag = "workflows", responses((status = 200, description = "journal entries, newest first", body = [Object])))]
async fn audit(State(c): State<Arc<Conductor>>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut entries = serde_json::to_value(c.store.journal_recent(500)?)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    redact(&mut entries);
    Ok(Json(entries))
}

/// Every request that changed something, or tried to, newest first, with the name of
/// the token that made it.
#[utoipa::path(get, path = "/v1/audit/requests", tag = "workflows", responses((status = 200, body = [crate::store::ApiRequest])))]
async fn audit_requests(
    State(c): State<Arc<Conductor>>,
) -> Result<Json<Vec<crate::store::ApiRequest>>, ApiError> {
    Ok(Json(c.store.requests(500)?))
}

/// Server-Sent Events: one `data:` line of JSON per event.
#[utoipa::path(get, path = "/v1/events", tag = "events", responses((status = 200, description = "text/event-stream; each data line is a JSON event", content_type = "text/event-stream", body = String)))]
async fn events(
    State(c): State<Arc<Conductor>>,
) -> axum::response::Sse<
    impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    use tokio_stream::StreamExt;
    let stream = tokio_stream::wrappers::BroadcastStream::new(c.events.subscribe()).map(|item| {
        let data = match item {
            Ok(event) => serde_json::to_string(&event).unwrap_or_default(),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                json!({"event": "lagged", "missed": n}).to_string()
            }
        };
        Ok(axum::response::sse::Event::default().data(data))
    });
    axum::response::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default())
}

#[cfg(test)]
mod tests {
    /// The document names every route the router serves (and the router is the list
    /// below): a route added without its documentation fails here.
    #[test]
    fn the_openapi_document_covers_every_route() {
        let doc = <super::ApiDoc as utoipa::OpenApi>::openapi();
        let json = serde_json::to_value(&doc).unwrap();
        let paths = json["paths"].as_object().unwrap();
        let expected = [
            ("/v1/health", "get"),
            ("/v1/instances", "get"),
            ("/v1/instances/{id}", "get"),
            ("/v1/instances/{id}/ping", "post"),
            ("/v1/sets/{id}/failover", "post"),
            ("/v1/sets/{id}/failover/{action}", "post"),
            ("/v1/sets/{id}/semi-sync", "put"),
            ("/v1/instances/{id}/metadata", "get"),
            ("/v1/instances/{id}/metadata/{key}", "get"),
            ("/v1/instances/{id}/metadata/{key}", "put"),
            ("/v1/instances/{id}/metadata/{key}", "delete"),
            ("/v1/sets", "get"),
            ("/v1/sets", "post"),
            ("/v1/sets/{id}", "get"),
            ("/v1/sets/{id}/replicas", "post"),
            ("/v1/sets/{id}/replicas/{instance}", "delete"),
            ("/v1/sets/{id}/switchover", "post"),
            ("/v1/instances/{id}/backups", "post"),
            ("/v1/backups", "get"),
            ("/v1/backups/{id}", "get"),
            ("/v1/backups/{id}", "delete"),
            ("/v1/backups/{id}/cancel", "post"),
            ("/v1/workflows", "get"),
            ("/v1/workflows/{id}", "get"),
            ("/v1/workflows/{id}/cancel", "post"),
            ("/v1/audit", "get"),
            ("/v1/events", "get"),
        ];
        for (path, method) in expected {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} undocumented"
            );
        }
        let source = include_str!("api.rs");
        let router =
            &source[source.find("pub fn router").unwrap()..source.find(".fallback(").unwrap()];
        let routes = router.matches("\"/v1/").count();
        // One .route per path (methods chained), plus /v1/openapi.json itself.
        assert_eq!(
            paths.len() + 1,
            routes,
            "a route without its document, or the reverse"
        );
        assert!(json["components"]["schemas"]["SetView"].is_object());
    }
}
