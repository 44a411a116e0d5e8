//! What a topology change does to a set's members, decided in memory: every store
//! applies the same rules, then writes the difference in the transaction that bumps the
//! epoch (SQLite's and PostgreSQL's SQL differ; what a change means must not).
//!
//! Checks that need other sets (an instance already in another set) are the store's:
//! its `members` table holds each instance at most once.

use tandem_proto::InstanceId;

use super::{
    IntendedRole, Member, PairRecord, ReplicaOptions, ReplicaSet, Result, StoreError,
    TopologyChange,
};

/// What a change writes beside the set's members, in the same transaction.
pub enum Beside<'a> {
    /// A server joined: it leaves the free pool.
    LeavesPool(&'a InstanceId),
    /// The set's master-master pair record.
    Pair(&'a PairRecord),
    /// The set's DR zones.
    Dr(&'a tandem_api::DrSettings),
    Nothing,
}

impl TopologyChange {
    pub fn beside(&self) -> Beside<'_> {
        match self {
            TopologyChange::AddReplica { instance, .. } => Beside::LeavesPool(instance),
            TopologyChange::PairUp { pair } | TopologyChange::PairSwitch { pair, .. } => {
                Beside::Pair(pair)
            }
            TopologyChange::SiteSwitch { dr, .. } | TopologyChange::SiteFailover { dr, .. } => {
                Beside::Dr(dr)
            }
            _ => Beside::Nothing,
        }
    }
}

impl ReplicaSet {
    /// The set after `change`, at the same epoch (the store takes the next one); its
    /// members in the stored order: masters, failed and quarantined members first, then
    /// replicas, each by instance.
    pub fn after(&self, change: &TopologyChange) -> Result<ReplicaSet> {
        let mut next = self.clone();
        let set = &self.id;
        match change {
            TopologyChange::AddReplica {
                instance,
                options,
                source,
            } => {
                let from = source.as_ref().unwrap_or(&self.master);
                self.replicating(from)?;
                if self.member(instance).is_some() {
                    return Err(StoreError::Conflict(format!(
                        "{instance} is already a member of a replica set"
                    )));
                }
                next.members.push(Member {
                    instance: instance.clone(),
                    role: IntendedRole::Replica,
                    replicates_from: Some(from.clone()),
                    writable: false,
                    options: options.clone(),
                });
            }
            TopologyChange::Reparent { instance, source } => {
                if source == instance || self.ancestors(source).contains(instance) {
                    return Err(StoreError::Conflict(format!(
                        "{instance} cannot replicate from {source}: {source} replicates from it \
                         (a cycle)"
                    )));
                }
                self.replicating(source)?;
                next.replica_mut(instance)?.replicates_from = Some(source.clone());
            }
            TopologyChange::SetOptions { instance, options } => {
                next.replica_mut(instance)?.options = options.clone();
            }
            TopologyChange::RemoveReplica { instance } => {
                next.replica_mut(instance)?;
                next.members.retain(|m| &m.instance != instance);
            }
            TopologyChange::NewMaster { new_master } => {
                if self.member(new_master).is_none() {
                    return Err(StoreError::NotFound(format!(
                        "{new_master} is not a member of set {set}"
                    )));
                }
                next.new_master(new_master)?;
            }
            TopologyChange::PairUp { pair } => {
                let master = &self.master;
                let Some(peer) = pair.peer_of(master) else {
                    return Err(StoreError::Conflict(format!(
                        "{master}, the master of set {set}, is not a side of the pair"
                    )));
                };
                if self.member(peer).and_then(|m| m.replicates_from.as_ref()) != Some(master) {
                    return Err(StoreError::Conflict(format!(
                        "{peer} is not a replica of {master}, the master of set {set}"
                    )));
                }
                next.member_mut(master).replicates_from = Some(peer.clone());
            }
            TopologyChange::PairSwitch { new_active, pair } => {
                let old = &self.master;
                if pair.side_of(new_active).is_none() || pair.peer_of(new_active) != Some(old) {
                    return Err(StoreError::Conflict(format!(
                        "{new_active} is not the other side of {old} in set {set}"
                    )));
                }
                next.new_master(new_active)?;
                // The new active side keeps replicating its peer.
                next.member_mut(new_active).replicates_from = Some(old.clone());
            }
            TopologyChange::SiteSwitch { new_master, .. } => {
                if self.member(new_master).map(|m| m.role) != Some(IntendedRole::Replica) {
                    return Err(StoreError::NotFound(format!(
                        "{new_master} is not a replica of set {set}"
                    )));
                }
                for m in next.members.iter_mut() {
                    if m.role == IntendedRole::Master {
                        m.role = IntendedRole::Replica;
                        m.replicates_from = Some(new_master.clone());
                        m.writable = false;
                    }
                }
                next.crown(new_master);
            }
            TopologyChange::SiteFailover {
                new_master, failed, ..
            } => {
                next.new_master(new_master)?;
                for f in failed {
                    next.fail(f);
                }
            }
            TopologyChange::Failover { new_master, failed } => {
                next.new_master(new_master)?;
                next.fail(failed);
            }
            TopologyChange::Rejoin { instance } | TopologyChange::Quarantine { instance } => {
                // Rejoin: a failed or quarantined member replicates again. Quarantine: a
                // returning failed master, or a replica whose re-seeding failed.
                let rejoin = matches!(change, TopologyChange::Rejoin { .. });
                let master = self.master.clone();
                let allowed = match self.member(instance).map(|m| m.role) {
                    Some(IntendedRole::Failed | IntendedRole::Quarantined) => true,
                    Some(IntendedRole::Replica) => !rejoin,
                    _ => false,
                };
                if !allowed {
                    return Err(StoreError::NotFound(format!(
                        "{instance} cannot be {} in set {set}: not a member in a role that allows it",
                        if rejoin { "rejoined" } else { "quarantined" }
                    )));
                }
                let m = next.member_mut(instance);
                m.writable = false;
                if rejoin {
                    m.role = IntendedRole::Replica;
                    m.replicates_from = Some(master);
                } else {
                    m.role = IntendedRole::Quarantined;
                    m.replicates_from = None;
                }
            }
        }
        next.members.sort_by(|a, b| {
            (a.role == IntendedRole::Replica, &a.instance)
                .cmp(&(b.role == IntendedRole::Replica, &b.instance))
        });
        Ok(next)
    }

    /// A member that replicates or is the master: the only kind a server may replicate
    /// from or be promoted from.
    fn replicating(&self, instance: &InstanceId) -> Result<()> {
        match self.member(instance).map(|m| m.role) {
            Some(IntendedRole::Master | IntendedRole::Replica) => Ok(()),
            _ => Err(StoreError::NotFound(format!(
                "{instance} is not a replicating member of set {}",
                self.id
            ))),
        }
    }

    fn replica_mut(&mut self, instance: &InstanceId) -> Result<&mut Member> {
        let set = self.id.clone();
        self.members
            .iter_mut()
            .find(|m| &m.instance == instance && m.role == IntendedRole::Replica)
            .ok_or_else(|| {
                StoreError::NotFound(format!("{instance} is not a replica of set {set}"))
            })
    }

    /// A member known to be there (checked before).
    fn member_mut(&mut self, instance: &InstanceId) -> &mut Member {
        self.members
            .iter_mut()
            .find(|m| &m.instance == instance)
            .expect("a member checked before")
    }

    /// `new_master` becomes the writable master; the old master and its direct replicas
    /// (not failed or quarantined ones) replicate from it; cascaded replicas stay under
    /// their sources.
    fn new_master(&mut self, new_master: &InstanceId) -> Result<()> {
        self.replicating(new_master)?;
        let old = self.master.clone();
        for m in self.members.iter_mut() {
            let follows = m.role == IntendedRole::Master
                || (m.role == IntendedRole::Replica
                    && m.replicates_from.as_ref().is_none_or(|from| from == &old));
            if follows {
                m.role = IntendedRole::Replica;
                m.replicates_from = Some(new_master.clone());
                m.writable = false;
            }
        }
        self.crown(new_master);
        Ok(())
    }

    /// `new_master` is the set's writable master. A master has no replica options (one
    /// promoted by force loses its pause or delay).
    fn crown(&mut self, new_master: &InstanceId) {
        let m = self.member_mut(new_master);
        m.role = IntendedRole::Master;
        m.replicates_from = None;
        m.writable = true;
        m.options = ReplicaOptions::default();
        self.master = new_master.clone();
    }

    /// A lost member awaits its return (no-op for one not in the set).
    fn fail(&mut self, instance: &InstanceId) {
        if let Some(m) = self.members.iter_mut().find(|m| &m.instance == instance) {
            m.role = IntendedRole::Failed;
            m.replicates_from = None;
            m.writable = false;
            m.options = ReplicaOptions::default();
        }
    }
}
