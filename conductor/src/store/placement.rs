//! What the store keeps for placement: the free pool and placement rules, and which
//! rules each set keeps. The decisions about them are in `crate::decide::placement`.

use tandem_api::{DrSettings, PlacementRule, RuleId};
use tandem_proto::{InstanceId, ReplicaSetId, Timestamp};

use super::Result;

pub trait PlacementStore {
    /// Puts registered servers in the free pool (again: no change). A member of a set
    /// is refused (a conflict naming its set).
    fn pool_add(&self, instances: &[InstanceId]) -> Result<()>;
    /// Takes servers out of the pool; how many were in it.
    fn pool_remove(&self, instances: &[InstanceId]) -> Result<usize>;
    /// The pool, oldest first. A server leaves it when it joins a set.
    fn pool(&self) -> Result<Vec<(InstanceId, Timestamp)>>;

    /// A conflict when the name is taken.
    fn create_rule(&self, rule: &PlacementRule) -> Result<()>;
    fn rules(&self) -> Result<Vec<PlacementRule>>;
    /// A conflict while a set keeps it; false when there was no such rule.
    fn delete_rule(&self, id: &RuleId) -> Result<bool>;
    /// The rules `set` keeps, oldest first.
    fn set_rules(&self, set: &ReplicaSetId) -> Result<Vec<PlacementRule>>;
    /// The rules every set keeps (a set keeping none is absent), in one read: the
    /// placement watch looks at every set each second.
    fn all_set_rules(&self) -> Result<std::collections::HashMap<ReplicaSetId, Vec<PlacementRule>>>;
    /// `set` keeps `rules` from now on, beside those it kept (not found: a rule or the
    /// set that does not exist).
    fn add_set_rules(&self, set: &ReplicaSetId, rules: &[RuleId]) -> Result<()>;
    /// False when the set did not keep it.
    fn remove_set_rule(&self, set: &ReplicaSetId, rule: &RuleId) -> Result<bool>;

    /// A multi-zone DR set's zones; `None` for any other set.
    fn dr_settings(&self, set: &ReplicaSetId) -> Result<Option<DrSettings>>;
    /// Makes `set` a DR set (set at creation; a DR switch changes them with its
    /// topology change).
    fn set_dr_settings(&self, set: &ReplicaSetId, settings: &DrSettings) -> Result<()>;
}
