//! Backups: taken on an agent and followed in the background (`crate::backups`),
//! listed, cancelled, deleted.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use tandem_api::{
    BackupList, BackupRunState, BackupStarted, BackupStatus, CancelRequested, Deleted, ErrorBody,
    ErrorKind, TakeBackup, TakeBackupKind,
};
use tandem_proto::{BackupId, BackupKind};

use super::{
    agent_error, bad_request, body, conflict, not_found, parse_id, unknown_instance, ApiError,
};
use crate::Conductor;

/// A backup id from a path, or a 400 saying what a backup id is.
fn parse_backup(id: &str) -> Result<BackupId, ApiError> {
    BackupId::new(id).map_err(|e| bad_request(e.to_string()))
}

#[utoipa::path(post, path = "/v1/instances/{id}/backups", tag = "backups", params(("id" = String, Path)), request_body = TakeBackup, responses((status = 202, body = BackupStarted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn take(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: Result<Json<TakeBackup>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<BackupStarted>), ApiError> {
    let instance = parse_id(&id)?;
    let req = body(
        b,
        r#"{"kind": "full|incremental", "parent": "<backup id>"}"#,
    )?;
    if c.registry.report(&instance).is_none() {
        return Err(unknown_instance(&instance));
    }
    let kind = match req.kind {
        TakeBackupKind::Full => BackupKind::Full,
        TakeBackupKind::Incremental => {
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
            BackupKind::Incremental { parent }
        }
    };
    let backup_id = crate::backups::start(&c, &instance, kind)
        .await
        .map_err(agent_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BackupStarted {
            backup_id,
            instance,
        }),
    ))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct BackupFilter {
    instance: Option<String>,
}

#[utoipa::path(get, path = "/v1/backups", tag = "backups", params(BackupFilter), responses((status = 200, body = BackupList)))]
pub async fn list(
    State(c): State<Arc<Conductor>>,
    axum::extract::Query(f): axum::extract::Query<BackupFilter>,
) -> Result<Json<BackupList>, ApiError> {
    let instance = f.instance.as_deref().map(parse_id).transpose()?;
    let backups = c.store.backups(instance.as_ref())?;
    let running = c
        .backups_running
        .lock()
        .expect("poisoned")
        .iter()
        .map(|(id, run)| (id.clone(), run.view()))
        .collect();
    Ok(Json(BackupList { backups, running }))
}

#[utoipa::path(get, path = "/v1/backups/{id}", tag = "backups", params(("id" = String, Path)), responses((status = 200, body = BackupStatus), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<BackupStatus>, ApiError> {
    let id = parse_backup(&id)?;
    let run = c
        .backups_running
        .lock()
        .expect("poisoned")
        .get(&id)
        .map(|run| match run.state {
            BackupRunState::Running => BackupStatus::Running {
                instance: run.instance.clone(),
            },
            BackupRunState::Failed => BackupStatus::Failed {
                instance: run.instance.clone(),
                error: run.error.clone(),
            },
        });
    // Running until the run ends, also once recorded: a full backup's run ends after
    // the retention it calls for, so what is listed after it is done is what stays.
    if let Some(running @ BackupStatus::Running { .. }) = run {
        return Ok(Json(running));
    }
    if let Some(b) = c
        .store
        .backups(None)?
        .into_iter()
        .find(|b| b.backup_id == id)
    {
        return Ok(Json(BackupStatus::Done {
            backup: Box::new(b),
        }));
    }
    run.map(Json)
        .ok_or_else(|| not_found(format!("no backup {id}")))
}

/// Stops a running backup: the agent ends it as cancelled and removes what it wrote.
#[utoipa::path(post, path = "/v1/backups/{id}/cancel", tag = "backups", params(("id" = String, Path)), responses((status = 202, body = CancelRequested), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CancelRequested>), ApiError> {
    let id = parse_backup(&id)?;
    crate::backups::cancel(&c, &id).await.map_err(|e| {
        if e.kind == tandem_proto::ErrorKind::BadRequest {
            conflict(e.message)
        } else {
            agent_error(e)
        }
    })?;
    tracing::warn!(backup = %id, "an operator cancels a backup");
    Ok((StatusCode::ACCEPTED, Json(CancelRequested { backup: id })))
}

#[utoipa::path(delete, path = "/v1/backups/{id}", tag = "backups", params(("id" = String, Path)), responses((status = 200, body = Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let id = parse_backup(&id)?;
    use crate::backups::DeleteError;
    crate::backups::delete(&c, &id).await.map_err(|e| match e {
        DeleteError::NotFound(m) => not_found(m),
        DeleteError::Conflict(m) => conflict(m),
        DeleteError::Other(m) => ApiError::new(ErrorKind::AgentError, m),
    })?;
    Ok(Json(Deleted {
        deleted: id.to_string(),
    }))
}
