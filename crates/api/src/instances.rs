//! Instances: what their agents report, their metadata and their enrolment.

use serde::{Deserialize, Serialize};
use tandem_proto::{EngineKind, InstanceId, StatusReport};

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when the conductor answers at all.
    pub status: String,
    pub broker_connected: bool,
    /// Instances whose agents have reported since the conductor started.
    pub instances: usize,
    /// How long the last status report processed had waited in the conductor (see
    /// `intake_behind` events).
    #[serde(default)]
    pub intake_lag_ms: u64,
    /// Reports waiting to be processed (at most one per instance).
    #[serde(default)]
    pub intake_waiting: usize,
    /// Reports replaced by a newer one of their instance before being processed.
    #[serde(default)]
    pub intake_replaced: u64,
    /// Reports waiting in the broker for this conductor, not yet received, as the
    /// broker said at its last asking (once a second).
    #[serde(default)]
    pub intake_backlog: u64,
}

/// One instance as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceView {
    #[schema(value_type = String)]
    pub id: InstanceId,
    pub zone: String,
    pub tags: Vec<String>,
    #[schema(value_type = String)]
    pub engine: EngineKind,
    /// The replication contract as the engine reports it.
    pub observed: Contract,
    /// Milliseconds since the last report arrived.
    pub last_seen_ms: u64,
    /// The agent's last status report (see proto's `StatusReport`).
    #[schema(value_type = Object)]
    pub status: StatusReport,
}

/// The replication contract of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contract {
    #[schema(value_type = Option<String>)]
    pub replicates_from: Option<InstanceId>,
    #[schema(value_type = Vec<String>)]
    pub replicates_to: Vec<InstanceId>,
    pub writable: Option<bool>,
}

impl Contract {
    /// The contract a status report states.
    pub fn of(report: &StatusReport) -> Contract {
        Contract {
            replicates_from: report.replicates_from.clone(),
            replicates_to: report.replicates_to.clone(),
            writable: report.writable,
        }
    }
}

/// `POST /v1/instances/{id}/ping`: a round trip to the agent through the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PingResult {
    #[schema(value_type = String)]
    pub instance: InstanceId,
    pub agent_version: String,
    pub protocol: String,
    pub round_trip_ms: f64,
}

/// The body of `PUT /v1/instances/{id}/metadata/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetadataValue {
    pub value: String,
}

/// One metadata key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetadataEntry {
    pub key: String,
    pub value: String,
}

/// The answer to a delete: what is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// One instance's enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrolmentView {
    #[schema(value_type = String)]
    pub instance: InstanceId,
    /// The pinned public key (64 hex digits); absent before enrolment and after a re-key.
    pub key: Option<String>,
    /// Rises with every re-key; the enrolment token belongs to one generation.
    pub generation: u64,
    /// Only in the answer to an enrolment without a key: the one-time token for the
    /// agent's `broker.enrolment_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// With per-agent broker users: the agent's own broker user (its password derives
    /// from the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_user: Option<String>,
}

/// Pins a key (`key`), or asks for the one-time token an agent enrols itself with (no
/// `key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The agent's public key (`tandem-agent public-key`), 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}
