//! Restore the master from a replica: `POST /v1/sets/{id}/rebuild-master`.

use std::sync::Arc;

use axum::extract::{Path, State};
use tandem_api::{ErrorBody, IntendedRole, RebuildMaster, SeedMethod, WorkflowRow};

use super::sets::{accepted, existing, from_pool, Accepted, JsonBody};
use super::{bad_request, body, parse_set};
use crate::workflow::{start_for_operator, Spec};
use crate::Conductor;

/// A fresh server from the pool, placed by the set's rules (in the master's zone
/// unless told), is seeded from replica `from`, attached, and switched over to.
#[utoipa::path(post, path = "/v1/sets/{id}/rebuild-master", tag = "sets", params(("id" = String, Path)), request_body = RebuildMaster, responses((status = 202, body = WorkflowRow), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rebuild_master(
    State(c): State<Arc<Conductor>>,
    Path(id): Path<String>,
    b: JsonBody<RebuildMaster>,
) -> Accepted {
    let id = parse_set(&id)?;
    let req = body(
        b,
        r#"{"from": "<replica>", "via_backup"?: true, "zone"?: "<zone>"}"#,
    )?;
    let set = existing(&c, &id)?;
    let from = set
        .member(&req.from)
        .ok_or_else(|| bad_request(format!("{} is not a member of set {id}", req.from)))?;
    if from.role != IntendedRole::Replica {
        return Err(bad_request(format!(
            "{} is {} in set {id}: the master is rebuilt from one of its replicas",
            req.from,
            from.role.as_str()
        )));
    }
    if let Some(why) = from.options.never_promoted() {
        return Err(bad_request(format!(
            "{} is {why}: a copy of it would not hold every transaction",
            req.from
        )));
    }
    let zone = match req.zone {
        Some(z) => Some(z),
        None => crate::placement::location(&c, &set.master).map(|l| l.zone),
    };
    let [instance] =
        <[_; 1]>::try_from(from_pool(&c, &set, 1, zone.as_deref(), SeedMethod::Stream)?)
            .expect("one asked");
    let spec = Spec::RebuildMaster {
        set: id,
        from: req.from,
        instance,
        via_backup: req.via_backup,
    };
    Ok(accepted(start_for_operator(&c, spec, "api").await?))
}
