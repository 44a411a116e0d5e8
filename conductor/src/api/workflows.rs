//! Workflows (listed, shown with their journal, cancelled), the audit logs, and the
//! live event stream.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use tandem_api::{
    page_size, ApiEvent, ApiRequest, AuditQuery, ErrorBody, JournalEntry, WorkflowDetail,
    WorkflowQuery, WorkflowRow,
};

use super::paging::{self, Paged};
use super::{conflict, not_found, ApiError};
use crate::store::{JournalCursor, JournalFilter, WorkflowCursor, WorkflowFilter};
use crate::Conductor;

/// Workflows newest first, a page at a time (100 unless `limit` says), kept by the
/// filters.
#[utoipa::path(get, path = "/v1/workflows", tag = "workflows", params(WorkflowQuery), responses((status = 200, body = [WorkflowRow], headers(("x-next-page" = String, description = "the cursor of the next page (pass it as `after`); absent on the last"))), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(c): State<Arc<Conductor>>,
    q: Result<Query<WorkflowQuery>, QueryRejection>,
) -> Result<Paged<WorkflowRow>, ApiError> {
    let q = paging::query(q)?;
    let after = paging::cursor(q.after.as_deref())?;
    let size = page_size(q.limit, 100);
    let rows = c.store.workflows(&WorkflowFilter {
        set: q
            .set
            .as_deref()
            .map(|v| paging::set_param("set", v))
            .transpose()?,
        kind: q.kind,
        state: q.state,
        after,
        limit: size + 1,
    })?;
    Ok(paging::cut(rows, size, |w| {
        WorkflowCursor::of(w).to_string()
    }))
}

#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows", params(("id" = String, Path)), responses((status = 200, body = WorkflowDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowDetail>, ApiError> {
    let workflow = existing(&c, &id)?;
    let steps = redacted(c.store.journal(&id)?);
    Ok(Json(WorkflowDetail { workflow, steps }))
}

fn existing(c: &Conductor, id: &str) -> Result<WorkflowRow, ApiError> {
    c.store
        .workflow(id)?
        .ok_or_else(|| not_found(format!("no workflow {id}")))
}

/// Stops a running workflow's long steps (seeding, restores) at their next safe point:
/// each is cancelled on its agent, which leaves its server as it was; long steps not
/// started yet are not started. Short steps run to their end, and the workflow ends
/// saying it was cancelled and what was left as it was.
#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", tag = "workflows", params(("id" = String, Path)), responses((status = 202, body = WorkflowRow), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<WorkflowRow>), ApiError> {
    let row = existing(&c, &id)?;
    if !row.state.is_active() {
        return Err(conflict(format!(
            "workflow {id} already ended ({}); there is nothing to cancel",
            row.state
        )));
    }
    if !row.params.cancellable() {
        return Err(conflict(format!(
            "workflow {id} ({}) has no long steps to cancel: it ends on its own within \
             its timeouts, rolling back what it says it can",
            row.kind
        )));
    }
    c.store.request_cancel(&id, "an operator")?;
    tracing::warn!(workflow = %id, kind = %row.kind, "an operator cancels a workflow");
    Ok((StatusCode::ACCEPTED, Json(row)))
}

/// Replication passwords are in the journal (a resumed workflow needs them); never in
/// an API answer.
fn redacted(mut entries: Vec<JournalEntry>) -> Vec<JournalEntry> {
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
    for e in &mut entries {
        if let Some(result) = &mut e.result {
            redact(result);
        }
    }
    entries
}

/// Every command the conductor's workflows sent, newest first: what, to whom, under
/// which epoch, by which workflow, and the result (passwords redacted).
#[utoipa::path(get, path = "/v1/audit", tag = "workflows", params(AuditQuery), responses((status = 200, description = "journal entries, newest first, 500 a page unless `limit` says", body = [JournalEntry], headers(("x-next-page" = String, description = "the cursor of the next page (pass it as `after`); absent on the last"))), (status = 400, body = ErrorBody)))]
pub async fn audit(
    State(c): State<Arc<Conductor>>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Paged<JournalEntry>, ApiError> {
    let q = paging::query(q)?;
    let after = paging::cursor(q.after.as_deref())?;
    let size = page_size(q.limit, 500);
    let entries = c.store.journal_recent(&JournalFilter {
        workflow: q.workflow,
        target: q
            .instance
            .as_deref()
            .map(|v| paging::instance_param("instance", v))
            .transpose()?,
        set: q
            .set
            .as_deref()
            .map(|v| paging::set_param("set", v))
            .transpose()?,
        after,
        limit: size + 1,
    })?;
    let page = paging::cut(entries, size, |e| JournalCursor::of(e).to_string());
    Ok(Paged {
        items: redacted(page.items),
        next: page.next,
    })
}

/// Every request that changed something, or tried to, newest first, with the name of
/// the token that made it.
#[utoipa::path(get, path = "/v1/audit/requests", tag = "workflows", responses((status = 200, body = [ApiRequest])))]
pub async fn audit_requests(
    State(c): State<Arc<Conductor>>,
) -> Result<Json<Vec<ApiRequest>>, ApiError> {
    Ok(Json(c.store.requests(500)?))
}

/// Server-Sent Events: one `data:` line of JSON per event (`tandem_api::ApiEvent`).
#[utoipa::path(get, path = "/v1/events", tag = "events", responses((status = 200, description = "text/event-stream; each data line is a JSON event", content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(c): State<Arc<Conductor>>,
) -> axum::response::Sse<
    impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    use tokio_stream::StreamExt;
    let stream = tokio_stream::wrappers::BroadcastStream::new(c.events.subscribe()).map(|item| {
        let event = match item {
            Ok(event) => event,
            Err(BroadcastStreamRecvError::Lagged(missed)) => ApiEvent::Lagged { missed },
        };
        let data = serde_json::to_string(&event).unwrap_or_default();
        Ok(axum::response::sse::Event::default().data(data))
    });
    axum::response::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default())
}
