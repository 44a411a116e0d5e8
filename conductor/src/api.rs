//! The HTTP API (JSON). Errors are `{"error": "...", "kind": "..."}` with a status code
//! that says whose fault it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use tandem_proto::{Command, Envelope, Epoch, InstanceId, ReplyBody, Sender};
use tandem_transport::CallError;

use crate::Conductor;

pub fn router(conductor: Arc<Conductor>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/instances", get(list_instances))
        .route("/v1/instances/{id}", get(get_instance))
        .route("/v1/instances/{id}/ping", post(ping_instance))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(conductor)
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
            CallError::TimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, "timed_out"),
            CallError::BadReply { .. } => (StatusCode::BAD_GATEWAY, "bad_reply"),
            CallError::Transport(_) => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

fn parse_id(id: &str) -> Result<InstanceId, ApiError> {
    InstanceId::new(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

async fn health(State(c): State<Arc<Conductor>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "broker_connected": c.transport.is_connected(),
        "instances": c.registry.list().len(),
    }))
}

async fn list_instances(
    State(c): State<Arc<Conductor>>,
) -> Json<Vec<crate::registry::InstanceView>> {
    Json(c.registry.list())
}

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

#[derive(Serialize)]
struct PingResult {
    instance: InstanceId,
    agent_version: String,
    protocol: String,
    round_trip_ms: f64,
}

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
