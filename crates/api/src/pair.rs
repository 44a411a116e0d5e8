//! Master-master pairs: a set's mode, and how a pair is shown.

use serde::{Deserialize, Serialize};
use tandem_proto::InstanceId;

/// How a set replicates: one master and its replicas, or two masters replicating from
/// each other with exactly one writable (the active side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SetMode {
    #[default]
    MasterSlave,
    MasterMaster,
}

crate::words!(SetMode {
    MasterSlave => "master-slave",
    MasterMaster => "master-master",
});

/// A master-master pair as `GET /v1/sets/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PairView {
    /// The server the pair was made from (GTID domain 1, odd auto-increment keys).
    #[schema(value_type = String)]
    pub first: InstanceId,
    /// The peer that joined it (GTID domain 2, even keys).
    #[schema(value_type = String)]
    pub second: InstanceId,
    /// The writable side (the set's master).
    #[schema(value_type = String)]
    pub active: InstanceId,
    #[schema(value_type = String)]
    pub passive: InstanceId,
    /// A write made on the passive side in its own write stream since it became
    /// passive (a stray write), which blocks a switch until it is resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stray_write: Option<String>,
}
