//! Paging and filters of the list endpoints (`/v1/instances`, `/v1/sets`,
//! `/v1/workflows`, `/v1/audit`). A page is the usual JSON array; when more follow, the
//! `x-next-page` header holds the cursor to pass as `after` for the next one (keyset
//! paging: a page never repeats or skips an item because others were added meanwhile).
//! Instances and sets come in id order, workflows and audit entries newest first.
//!
//! `limit` and `after` are repeated in each query rather than shared through
//! `#[serde(flatten)]`: flattened, a number in a query string fails to parse.

use serde::{Deserialize, Serialize};
use tandem_proto::{Health, Role};

use crate::{WorkflowKind, WorkflowState};

/// The response header with the cursor of the next page; absent on the last page.
pub const NEXT_PAGE: &str = "x-next-page";

/// The most items one page holds, whatever `limit` asks.
pub const MAX_PAGE: u32 = 1000;

/// One page of a list, and the cursor of the next when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The page size asked for, or `default`; at least 1, at most [`MAX_PAGE`].
pub fn page_size(limit: Option<u32>, default: u32) -> usize {
    limit.unwrap_or(default).clamp(1, MAX_PAGE) as usize
}

/// `GET /v1/instances`: the instances that reported, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    /// At most this many (never more than 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Start after this cursor: the `x-next-page` header of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Only those that report this zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Only the members of this replica set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// Only those whose engine reports this role (standalone, master, replica, unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<String>)]
    pub role: Option<Role>,
    /// Only those in this health (starting, healthy, degraded, engine_down, stopping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<String>)]
    pub health: Option<Health>,
}

/// `GET /v1/sets`: the replica sets, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SetQuery {
    /// At most this many (never more than 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Start after this cursor: the `x-next-page` header of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Only the set this instance is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Only sets with a member in this zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// `GET /v1/workflows`: newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WorkflowQuery {
    /// At most this many (never more than 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Start after this cursor: the `x-next-page` header of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Only this set's workflows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// Only workflows of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<String>)]
    pub kind: Option<WorkflowKind>,
    /// Only workflows in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<String>)]
    pub state: Option<WorkflowState>,
}

/// `GET /v1/audit`: the commands workflows sent, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many (never more than 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Start after this cursor: the `x-next-page` header of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Only this workflow's commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Only commands sent to this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Only commands of this set's workflows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
}
