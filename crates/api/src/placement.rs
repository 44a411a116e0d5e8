//! Zones, hosts, the free pool and placement rules: where a set's servers may run.

use serde::{Deserialize, Serialize};
use tandem_proto::{EngineKind, HostId, InstanceId, Timestamp, ZoneId};

/// A placement rule's policy, as Nova's server groups spell them: `affinity` keeps a
/// set's servers in one failure domain, `anti-affinity` spreads them; the `soft-` forms
/// are preferences (a violation is allowed and raised) rather than requirements (a
/// change that would break one is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementPolicy {
    Affinity,
    AntiAffinity,
    SoftAffinity,
    SoftAntiAffinity,
}

crate::words!(PlacementPolicy {
    Affinity => "affinity",
    AntiAffinity => "anti-affinity",
    SoftAffinity => "soft-affinity",
    SoftAntiAffinity => "soft-anti-affinity",
});

impl PlacementPolicy {
    /// A requirement: a change that would break it is refused.
    pub fn required(self) -> bool {
        matches!(
            self,
            PlacementPolicy::Affinity | PlacementPolicy::AntiAffinity
        )
    }
    /// Spreads servers apart (rather than keeping them together).
    pub fn spreads(self) -> bool {
        matches!(
            self,
            PlacementPolicy::AntiAffinity | PlacementPolicy::SoftAntiAffinity
        )
    }
}

/// The failure domain a rule is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PlacementScope {
    /// The physical host under the zone (an agent's `host_id`).
    Host,
    Zone,
}

crate::words!(PlacementScope {
    Host => "host",
    Zone => "zone",
});

/// A rule's id: `rule-` and eight lower-case hex digits, made by the conductor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RuleId(String);

impl RuleId {
    /// A rule id from 32 random bits.
    pub fn from_bits(bits: u32) -> RuleId {
        RuleId(format!("rule-{bits:08x}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RuleId {
    type Err = String;
    fn from_str(s: &str) -> Result<RuleId, String> {
        let hex = s.strip_prefix("rule-").unwrap_or("");
        if hex.len() == 8
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            Ok(RuleId(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a rule id (rule- and eight hex digits)"
            ))
        }
    }
}

impl TryFrom<String> for RuleId {
    type Error = String;
    fn try_from(s: String) -> Result<RuleId, String> {
        s.parse()
    }
}

impl From<RuleId> for String {
    fn from(id: RuleId) -> String {
        id.0
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A placement rule, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementRule {
    #[schema(value_type = String)]
    pub id: RuleId,
    pub name: String,
    pub policy: PlacementPolicy,
    pub scope: PlacementScope,
    /// For anti-affinity: how many of a set's servers one domain may hold (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_domain: Option<u32>,
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
}

impl PlacementRule {
    /// How many servers of a set one domain may hold under this rule (anti-affinity).
    pub fn limit(&self) -> u32 {
        self.max_per_domain.unwrap_or(1).max(1)
    }
}

impl std::fmt::Display for PlacementRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} by {}", self.name, self.policy, self.scope)?;
        if self.policy.spreads() && self.limit() > 1 {
            write!(f, ", at most {} per {}", self.limit(), self.scope)?;
        }
        write!(f, ")")
    }
}

/// `POST /v1/rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateRule {
    pub name: String,
    pub policy: PlacementPolicy,
    pub scope: PlacementScope,
    /// Only with an anti-affinity policy: more than one server per domain allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_domain: Option<u32>,
}

/// `POST /v1/sets/{id}/rules`: rules named for a set (by id or name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetRules {
    pub rules: Vec<String>,
}

/// A rule that the servers of a set do not keep right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Violation {
    #[schema(value_type = String)]
    pub rule: RuleId,
    pub rule_name: String,
    /// A requirement (changes that break one are refused; one that breaks anyway, a
    /// host moved under a server, is an alarm) or a preference.
    pub required: bool,
    /// The servers it is about.
    #[schema(value_type = Vec<String>)]
    pub instances: Vec<InstanceId>,
    /// In words: `db-1 and db-2 share host hv-1`.
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.required {
            "required"
        } else {
            "preferred"
        };
        write!(
            f,
            "{kind} rule {} ({}): {}",
            self.rule_name, self.rule, self.reason
        )
    }
}

/// Where one server runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Location {
    pub zone: String,
    #[schema(value_type = Option<String>)]
    pub host_id: Option<HostId>,
}

/// One zone: configured by the cloud administrator, or only reported by agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ZoneView {
    pub zone: String,
    /// In the conductor's configuration (offered to users); an agent may report a
    /// zone that is not.
    pub configured: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Hosts that servers in it reported.
    #[schema(value_type = Vec<String>)]
    pub hosts: Vec<HostId>,
    /// Servers in it whose agents reported.
    pub instances: usize,
    /// Of those, in the free pool.
    pub pooled: usize,
}

/// A DR profile: sets created with it keep their master in `primary` and a mirror in
/// `dr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrProfile {
    pub name: String,
    #[schema(value_type = String)]
    pub primary: ZoneId,
    #[schema(value_type = String)]
    pub dr: ZoneId,
}

/// `GET /v1/zones`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ZonesView {
    pub zones: Vec<ZoneView>,
    pub dr_profiles: Vec<DrProfile>,
}

/// One server in the free pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolEntry {
    #[schema(value_type = String)]
    pub instance: InstanceId,
    /// Where it runs, as its agent last reported (absent when it has not reported
    /// since the conductor started).
    pub location: Option<Location>,
    #[schema(value_type = Option<String>)]
    pub engine: Option<EngineKind>,
    #[schema(value_type = u64)]
    pub added_at: Timestamp,
}

/// `POST /v1/pool` (add) and `POST /v1/pool/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolChange {
    #[schema(value_type = Vec<String>)]
    pub instances: Vec<InstanceId>,
}

/// Which replicas acknowledge a semi-synchronous master's commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AckFrom {
    /// Any replica that could be promoted.
    #[default]
    Any,
    /// Only the master's direct replicas outside its zone: losing the master's whole
    /// zone then loses no acknowledged write.
    OtherZone,
}

crate::words!(AckFrom {
    Any => "any",
    OtherZone => "other-zone",
});

/// A multi-zone DR set's zones, as they stand (a DR switch swaps them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrSettings {
    /// The profile it was created with.
    pub profile: String,
    /// Where the writer is (automatic failover stays inside it).
    #[schema(value_type = String)]
    pub primary: ZoneId,
    /// Where the mirror is.
    #[schema(value_type = String)]
    pub dr: ZoneId,
    #[serde(default)]
    pub ack_from: AckFrom,
}

impl DrSettings {
    /// The same set after its writer moved to the DR zone.
    pub fn switched(&self) -> DrSettings {
        DrSettings {
            profile: self.profile.clone(),
            primary: self.dr.clone(),
            dr: self.primary.clone(),
            ack_from: self.ack_from,
        }
    }
}

/// A DR set as it stands: its zones, its DR source, who acknowledges, and whether
/// losing the master's zone would lose no acknowledged write right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrView {
    #[serde(flatten)]
    pub settings: DrSettings,
    /// The master's direct replica in the DR zone that its other DR members cascade
    /// from (absent when the set has none).
    #[schema(value_type = Option<String>)]
    pub dr_source: Option<InstanceId>,
    /// Replicas whose engines report they acknowledge semi-synchronous commits.
    #[schema(value_type = Vec<String>)]
    pub acknowledging: Vec<InstanceId>,
    /// With semi-sync and `other-zone`: the master waits for a replica outside its
    /// zone for every commit now. `None` when the set does not ask for it.
    pub zone_safe: Option<bool>,
}

/// `POST /v1/sets/{id}/dr/switch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrSwitch {
    /// How long the DR source may take to catch up (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_timeout_ms: Option<u64>,
}

/// `POST /v1/sets/{id}/dr/failover`: the primary zone is lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrFailover {
    /// Even while the primary master is judged healthy (it may then be writable too:
    /// only for a zone known to be gone).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/sets/{id}/rebuild-master`: restore the master from a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RebuildMaster {
    /// The replica the new master is copied from.
    #[schema(value_type = String)]
    pub from: InstanceId,
    /// Through a full backup of it in the backup store (Swift, S3, a directory) rather
    /// than a live copy.
    #[serde(default)]
    pub via_backup: bool,
    /// Where the new master goes (default: the current master's zone); it comes from
    /// the pool, by the set's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}
