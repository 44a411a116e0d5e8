//! Who may call the API: every request but `/v1/health` and `/v1/openapi.json` carries
//! a bearer token (`Authorization: Bearer tdm_…`, see `crate::tokens`). Without a known
//! token: 401. A reader's token on a request that changes something: 403. A change sent
//! as anything but JSON (a cross-origin form post): 415, before any handler runs. Every
//! request that changes something, or tried to, is recorded with who made it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::store::ApiRequest;
use crate::tokens::{self, Caller};
use crate::Conductor;

/// Paths anyone may read: a load balancer's health check, the API's own description.
const OPEN: &[&str] = &["/v1/health", "/v1/openapi.json"];

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(tandem_api::ErrorKind::Unauthorized, message).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// Whether a change is sent as JSON (or with no body type at all: a bodyless POST).
fn json_or_nothing(request: &Request) -> bool {
    match request.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")),
    }
}

pub async fn authorize(
    State(c): State<Arc<Conductor>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    if OPEN.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let caller = match bearer(&request).map(|t| tokens::caller(&*c.store, t)) {
        Some(Ok(Some(caller))) => Some(caller),
        Some(Err(e)) => return ApiError::from(e).into_response(),
        Some(Ok(None)) | None => None,
    };
    let response = match &caller {
        None if bearer(&request).is_none() => unauthorized(
            "this API needs a bearer token (the CLI reads it from TANDEM_TOKEN or \
             --token-file; the conductor wrote an operator token to data_dir/admin.token \
             on its first start)",
        ),
        None => {
            unauthorized("the bearer token is not known here (revoked, or another conductor's)")
        }
        Some(caller) if changes && !caller.role.may_change() => ApiError::new(
            tandem_api::ErrorKind::Forbidden,
            format!(
                "token {:?} is a {}'s: it may read, not change anything; use an operator's token",
                caller.name,
                caller.role.as_str()
            ),
        )
        .into_response(),
        Some(_) if changes && !json_or_nothing(&request) => ApiError::new(
            tandem_api::ErrorKind::UnsupportedMediaType,
            "a change is sent as application/json (form posts are refused)",
        )
        .into_response(),
        Some(caller) => {
            request.extensions_mut().insert::<Caller>(caller.clone());
            next.run(request).await
        }
    };
    if changes {
        let record = ApiRequest {
            at: tandem_proto::Timestamp::now(),
            who: caller.map_or_else(|| "(no valid token)".to_owned(), |c| c.name),
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
        };
        if let Err(e) = c.store.record_request(&record) {
            tracing::error!(error = %e, "could not record an API request in the audit log");
        }
    }
    response
}
