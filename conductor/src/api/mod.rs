//! The HTTP API (JSON): every request and answer is a type of `tandem-api`. Errors are
//! [`tandem_api::ErrorBody`] (`{"error": "...", "kind": "..."}`) with a status code that
//! says whose fault it is.
//!
//! One module per resource: [`instances`] (reports, ping, metadata), [`enrolment`],
//! [`sets`] (replica sets and the workflows that change them), [`backups`],
//! [`workflows`] (workflows, audit, live events), [`placement`] (zones, the free pool,
//! placement rules); [`auth`] decides who may call.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tandem_api::{ErrorBody, ErrorKind};
use tandem_proto::{InstanceId, ReplicaSetId};
use tandem_transport::CallError;

use crate::Conductor;

mod auth;
mod backups;
mod dr;
mod enrolment;
mod instances;
mod metrics;
mod paging;
mod pair;
mod placement;
mod rebuild;
mod replicas;
mod sets;
mod workflows;

pub fn router(conductor: Arc<Conductor>) -> Router {
    Router::new()
        .route("/v1/health", get(instances::health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/metrics", get(metrics::metrics))
        .route("/v1/instances", get(instances::list))
        .route("/v1/instances/{id}", get(instances::get_one))
        .route("/v1/instances/{id}/ping", post(instances::ping))
        .route(
            "/v1/instances/{id}/enrolment",
            post(enrolment::enrol).delete(enrolment::rekey),
        )
        .route("/v1/enrolments", get(enrolment::list))
        .route("/v1/instances/{id}/metadata", get(instances::list_metadata))
        .route(
            "/v1/instances/{id}/metadata/{key}",
            get(instances::get_metadata)
                .put(instances::put_metadata)
                .delete(instances::delete_metadata),
        )
        .route("/v1/sets", get(sets::list).post(sets::create))
        .route("/v1/sets/{id}", get(sets::get_one))
        .route("/v1/sets/{id}/replicas", post(sets::add_replica))
        .route(
            "/v1/sets/{id}/replicas/{instance}",
            delete(sets::detach_replica),
        )
        .route(
            "/v1/sets/{id}/replicas/{instance}/pause",
            post(replicas::pause),
        )
        .route(
            "/v1/sets/{id}/replicas/{instance}/resume",
            post(replicas::resume),
        )
        .route(
            "/v1/sets/{id}/replicas/{instance}/delay",
            post(replicas::delay),
        )
        .route(
            "/v1/sets/{id}/replicas/{instance}/filter",
            post(replicas::filter),
        )
        .route("/v1/sets/{id}/switchover", post(sets::switchover))
        .route("/v1/sets/{id}/failover", post(sets::failover))
        .route(
            "/v1/sets/{id}/semi-sync",
            axum::routing::put(sets::semi_sync),
        )
        .route(
            "/v1/sets/{id}/failover/{action}",
            post(sets::failover_control),
        )
        .route("/v1/instances/{id}/backups", post(backups::take))
        .route("/v1/backups", get(backups::list))
        .route(
            "/v1/backups/{id}",
            get(backups::get_one).delete(backups::delete),
        )
        .route("/v1/backups/{id}/cancel", post(backups::cancel))
        .route("/v1/workflows", get(workflows::list))
        .route("/v1/workflows/{id}", get(workflows::get_one))
        .route("/v1/workflows/{id}/cancel", post(workflows::cancel))
        .route("/v1/audit", get(workflows::audit))
        .route("/v1/audit/requests", get(workflows::audit_requests))
        .route("/v1/events", get(workflows::events))
        .route("/v1/zones", get(placement::zones))
        .route("/v1/pool", get(placement::pool).post(placement::pool_add))
        .route("/v1/pool/{instance}", delete(placement::pool_remove))
        .route(
            "/v1/rules",
            get(placement::rules).post(placement::create_rule),
        )
        .route("/v1/rules/{rule}", delete(placement::delete_rule))
        .route("/v1/sets/{id}/rules", post(placement::add_set_rules))
        .route("/v1/sets/{id}/dr/switch", post(dr::switch))
        .route("/v1/sets/{id}/dr/failover", post(dr::failover))
        .route(
            "/v1/sets/{id}/rebuild-master",
            post(rebuild::rebuild_master),
        )
        .route(
            "/v1/sets/{id}/rules/{rule}",
            delete(placement::remove_set_rule),
        )
        .fallback(|| async { ApiError::new(ErrorKind::NotFound, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            conductor.clone(),
            auth::authorize,
        ))
        .with_state(conductor)
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
        instances::health,
        metrics::metrics,
        instances::list,
        instances::get_one,
        instances::ping,
        enrolment::enrol,
        enrolment::rekey,
        enrolment::list,
        instances::list_metadata,
        instances::get_metadata,
        instances::put_metadata,
        instances::delete_metadata,
        sets::list,
        sets::get_one,
        sets::create,
        sets::add_replica,
        sets::detach_replica,
        replicas::pause,
        replicas::resume,
        replicas::delay,
        replicas::filter,
        sets::switchover,
        sets::failover,
        sets::failover_control,
        sets::semi_sync,
        backups::take,
        backups::list,
        backups::get_one,
        backups::delete,
        backups::cancel,
        workflows::list,
        workflows::get_one,
        workflows::cancel,
        workflows::audit,
        workflows::audit_requests,
        workflows::events,
        placement::zones,
        placement::pool,
        placement::pool_add,
        placement::pool_remove,
        placement::rules,
        placement::create_rule,
        placement::delete_rule,
        placement::add_set_rules,
        placement::remove_set_rule,
        dr::switch,
        dr::failover,
        rebuild::rebuild_master
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(
        ErrorBody,
        ErrorKind,
        tandem_api::Health,
        tandem_api::PingResult,
        tandem_api::EnrolmentView,
        tandem_api::EnrolRequest,
        tandem_api::MetadataValue,
        tandem_api::MetadataEntry,
        tandem_api::Deleted,
        tandem_api::MemberView,
        tandem_api::SetView,
        tandem_api::CreateSet,
        tandem_api::AddReplica,
        tandem_api::PauseReplica,
        tandem_api::DelayReplica,
        tandem_api::FilterReplica,
        tandem_api::ReplicaOptions,
        tandem_api::Pause,
        tandem_api::SeedMethod,
        tandem_api::Switchover,
        tandem_api::Failover,
        tandem_api::FailoverAction,
        tandem_api::FailoverView,
        tandem_api::SemiSyncRequest,
        tandem_api::Verdict,
        tandem_api::FailoverState,
        tandem_api::InstanceView,
        tandem_api::Contract,
        tandem_api::Member,
        tandem_api::IntendedRole,
        tandem_api::TakeBackup,
        tandem_api::TakeBackupKind,
        tandem_api::BackupStarted,
        tandem_api::BackupList,
        tandem_api::BackupRunView,
        tandem_api::BackupRunState,
        tandem_api::BackupStatus,
        tandem_api::CancelRequested,
        tandem_api::WorkflowRow,
        tandem_api::WorkflowKind,
        tandem_api::WorkflowState,
        tandem_api::WorkflowDetail,
        tandem_api::JournalEntry,
        tandem_api::ApiRequest,
        tandem_api::ZonesView,
        tandem_api::ZoneView,
        tandem_api::DrProfile,
        tandem_api::PoolEntry,
        tandem_api::PoolChange,
        tandem_api::Location,
        tandem_api::PlacementRule,
        tandem_api::PlacementPolicy,
        tandem_api::PlacementScope,
        tandem_api::CreateRule,
        tandem_api::SetRules,
        tandem_api::Violation,
        tandem_api::AckFrom,
        tandem_api::DrSettings,
        tandem_api::DrView,
        tandem_api::DrSwitch,
        tandem_api::DrFailover,
        tandem_api::RebuildMaster
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

/// An error answer: its kind, the line for a person, and the status (the kind's own
/// unless an agent's error says whose fault it was).
pub struct ApiError {
    status: StatusCode,
    kind: ErrorKind,
    message: String,
}

impl ApiError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(kind.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind,
            message: message.into(),
        }
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
                kind: self.kind,
            }),
        )
            .into_response()
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let kind = match &e {
            CallError::UnknownInstance(_) => ErrorKind::UnknownInstance,
            CallError::NotEnrolled(_) => ErrorKind::NotEnrolled,
            CallError::TimedOut { .. } => ErrorKind::TimedOut,
            CallError::BadReply { .. } => ErrorKind::BadReply,
            CallError::Transport(_) => ErrorKind::BrokerUnavailable,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        let kind = match &e {
            StoreError::Busy { .. } => ErrorKind::Busy,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            // A deposed conductor answers as a broken one: it is about to stop.
            StoreError::Fenced { .. } | StoreError::Internal(_) => ErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// An agent's error: the request's fault (400), no answer in time (504), or the
/// agent's (502).
fn agent_error(e: tandem_proto::CommandError) -> ApiError {
    let status = match e.kind {
        tandem_proto::ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        tandem_proto::ErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(ErrorKind::AgentError, e.to_string()).with_status(status)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, message)
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::NotFound, message)
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Conflict, message)
}

fn unknown_instance(id: &InstanceId) -> ApiError {
    ApiError::new(
        ErrorKind::UnknownInstance,
        format!("no agent of instance {id} has reported to this conductor (`tandem status` lists those that have)"),
    )
}

fn parse_set(id: &str) -> Result<ReplicaSetId, ApiError> {
    ReplicaSetId::new(id).map_err(|e| bad_request(format!("replica set id: {e}")))
}

fn parse_id(id: &str) -> Result<InstanceId, ApiError> {
    InstanceId::new(id).map_err(|e| bad_request(e.to_string()))
}

/// A JSON body, or a 400 that shows the shape expected.
fn body<T>(
    b: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| bad_request(format!("expected {shape}: {e}")))
}

/// A 404 unless some agent of `id` has reported here, or the store knows it.
fn known_instance(c: &Conductor, id: &InstanceId) -> Result<(), ApiError> {
    if c.registry.report(id).is_some() || c.store.instance(id)?.is_some() {
        return Ok(());
    }
    Err(unknown_instance(id))
}

#[cfg(test)]
mod tests;
