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
    /// With per-agent broker users: the agent's own broker user (its password derives
    /// from the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_user: Option<String>,
}

impl From<Enrolment> for EnrolmentView {
    fn from(e: Enrolment) -> Self {
        EnrolmentView {
            instance: e.instance.to_string(),
            key: e.key.map(|k| k.to_hex()),
            generation: e.generation,
            token: None,
            broker_user: None,
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
            view.broker_user = broker_user(&c, &id).await?;
            view.token = Some(token);
            Ok(Json(view))
        }
        Some(key) => {
            let key =
                PublicKey::from_hex(&key).map_err(|e| bad_request(format!("field `key`: {e}")))?;
            let e = c.enrolments.pin(&*c.store, &id, &key)?;
            tracing::info!(instance = %id, %key, "instance enrolled by an operator");
            let broker_user = broker_user(&c, &id).await?;
            c.events.publish(ApiEvent::InstanceEnrolled {
                instance: id.clone(),
                key: key.to_hex(),
                by: "operator".into(),
                at: tandem_proto::Timestamp::now(),
            });
            let mut view = EnrolmentView::from(e);
            if broker_user.is_some() {
                // The agent's broker password derives from the token, so it needs it
                // even when its key was pinned by hand.
                view.token = Some(c.enrolments.current_token(&id));
                view.broker_user = broker_user;
            }
            Ok(Json(view))
        }
    }
}

/// With per-agent broker users: makes (or updates, after a re-key) `id`'s broker user
/// with the password its current token gives, and declares its command queue (the
/// agent may not). Returns the user's name.
async fn broker_user(
    c: &Conductor,
    id: &tandem_proto::InstanceId,
) -> Result<Option<String>, ApiError> {
    let Some(users) = &c.settings.agent_users else {
        return Ok(None);
    };
    let password = tandem_transport::identity::broker_password(&c.enrolments.current_token(id));
    let user = users.ensure(id, &password).await.map_err(|e| {
        ApiError::new(tandem_api::ErrorKind::BrokerUnavailable, e)
            .with_status(axum::http::StatusCode::BAD_GATEWAY)
    })?;
    c.agents.ensure_agent_queue(id).await.map_err(|e| {
        ApiError::new(
            tandem_api::ErrorKind::BrokerUnavailable,
            format!("declare {id}'s command queue: {e}"),
        )
    })?;
    Ok(Some(user))
}

#[utoipa::path(delete, path = "/v1/instances/{id}/enrolment", tag = "instances", params(("id" = String, Path)), responses((status = 200, body = EnrolmentView), (status = 400, body = super::ErrorBody)))]
pub async fn rekey(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<EnrolmentView>, ApiError> {
    let id = parse_id(&id)?;
    let e = c.enrolments.rekey(&*c.store, &id)?;
    // The old token's broker password stops working too: a stolen VM loses the broker.
    broker_user(&c, &id).await?;
    tracing::warn!(instance = %id, generation = e.generation, "instance re-keyed: nothing naming it is believed until it enrols again");
    c.events.publish(ApiEvent::InstanceRekeyed {
        instance: id.clone(),
        generation: e.generation,
        at: tandem_proto::Timestamp::now(),
    });
    Ok(Json(e.into()))
}
