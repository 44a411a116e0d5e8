//! The provisioner contract: what the conductor asks of a cloud's provisioning command
//! when the free pool has no server a set can take, and what the command answers.
//!
//! The command gets a [`ProvisionRequest`] as JSON on its standard input, starts the
//! servers (a VM each, with the engine and a Tandem agent configured to register with
//! this conductor), and prints a [`ProvisionAnswer`] as JSON once they are booting;
//! the conductor then waits for each agent to register. A request is sent again with
//! the same `request_id` when a conductor resumes the workflow after a crash: a command
//! that already served it answers the same servers again.

use serde::{Deserialize, Serialize};
use tandem_proto::{EngineKind, InstanceId, ReplicaSetId};

use crate::{Location, PlacementPolicy, PlacementRule, PlacementScope};

/// Servers a workflow asks the provisioner for, before it seeds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MakeServers {
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// One request to the provisioner command (its standard input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProvisionRequest {
    /// The same for a request sent again after a conductor restart.
    pub request_id: String,
    /// The set the servers will join.
    #[schema(value_type = String)]
    pub set: ReplicaSetId,
    #[schema(value_type = String)]
    pub engine: EngineKind,
    pub count: u32,
    /// The zone to start them in (none: any zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The set's host rule as a Nova server group: the policy to create the servers
    /// under (`affinity`, `anti-affinity`, `soft-affinity` or `soft-anti-affinity`).
    pub server_group: ServerGroup,
    /// Where the set's servers run now: the hosts to avoid (anti-affinity) or to join
    /// (affinity).
    pub members: Vec<PlacedMember>,
    /// Every rule the set keeps, in full.
    pub rules: Vec<PlacementRule>,
}

/// A Nova-style server group: one policy over one failure domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerGroup {
    pub policy: PlacementPolicy,
    pub scope: PlacementScope,
    /// With anti-affinity: how many of the set's servers one domain may hold.
    pub max_per_domain: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacedMember {
    #[schema(value_type = String)]
    pub instance: InstanceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// What the provisioner command prints: the instance ids of the servers it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProvisionAnswer {
    #[schema(value_type = Vec<String>)]
    pub instances: Vec<InstanceId>,
}
