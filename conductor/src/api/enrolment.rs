//! Enrolment: which key speaks for which instance (see `crate::enrolment`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use tandem_transport::identity::PublicKey;

use super::{bad_request, parse_id, ApiError};
use crate::events::ApiEvent;
use crate::store::Enrolment;
use crate::Conductor;

/// One instance's enrolment.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EnrolmentView {
    pub instance: String,
    /// The pinned public key (64 hex digits); absent before enrolment and after a re-key.
    pub key: Option<String>,
    /// Rises with every re-key; the enrolment token belongs to one generation.
    pub generation: u64,
    /// Only in the answer to an enrolment without a key: the one-time token for the
    /// agent's `broker.enrolment_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<Enrolment> for EnrolmentView {
    fn from(e: Enrolment) -> Self {
        EnrolmentView {
            instance: e.instance.to_string(),
            key: e.key.map(|k| k.to_hex()),
            generation: e.generation,
            token: None,
        }
    }
}

/// Pins a key (`key`), or asks for the one-time token an agent enrols itself with (no
/// `key`).
#[derive(serde::Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The agent's public key (`tandem-agent public-key`), 64 hex digits.
    pub key: Option<String>,
}

#[utoipa::path(get, path = "/v1/enrolments", tag = "instances", responses((status = 200, body = Vec<EnrolmentView>)))]
pub async fn list(State(c): State<Arc<Conductor>>) -> Json<Vec<EnrolmentView>> {
    Json(c.enrolments.all().into_iter().map(Into::into).collect())
}

#[utoipa::path(post, path = "/v1/instances/{id}/enrolment", tag = "instances", params(("id" = String, Path)), request_body = EnrolRequest, responses((status = 200, body = EnrolmentView), (status = 400, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn enrol(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    body: Result<Json<EnrolRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<EnrolmentView>, ApiError> {
    let id = parse_id(&id)?;
    let Json(body) = body.map_err(|e| {
        bad_request(format!(
            "expected {{\"key\": \"<64 hex digits>\"}} or {{}}: {e}"
        ))
    })?;
    match body.key {
        None => {
            let (enrolment, token) = c.enrolments.token(&id)?;
            let mut view = EnrolmentView::from(enrolment);
            view.token = Some(token);
            Ok(Json(view))
        }
        Some(key) => {
            let key =
                PublicKey::from_hex(&key).map_err(|e| bad_request(format!("field `key`: {e}")))?;
            let e = c.enrolments.pin(&*c.store, &id, &key)?;
            tracing::info!(instance = %id, %key, "instance enrolled by an operator");
            c.events.publish(ApiEvent::InstanceEnrolled {
                instance: id,
                key: key.to_hex(),
                by: "operator".into(),
                at: tandem_proto::Timestamp::now(),
            });
            Ok(Json(e.into()))
        }
    }
}

#[utoipa::path(delete, path = "/v1/instances/{id}/enrolment", tag = "instances", params(("id" = String, Path)), responses((status = 200, body = EnrolmentView), (status = 400, body = super::ErrorBody)))]
pub async fn rekey(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<EnrolmentView>, ApiError> {
    let id = parse_id(&id)?;
    let e = c.enrolments.rekey(&*c.store, &id)?;
    tracing::warn!(instance = %id, generation = e.generation, "instance re-keyed: nothing naming it is believed until it enrols again");
    c.events.publish(ApiEvent::InstanceRekeyed {
        instance: id,
        generation: e.generation,
        at: tandem_proto::Timestamp::now(),
    });
    Ok(Json(e.into()))
}
