//! What the store keeps of a master-master pair: its two sides (the server it was made
//! from is the first) and how far the passive side's own write stream had got when it
//! became passive. Written only with the topology change that makes or switches the
//! pair, in its transaction.

use serde::{Deserialize, Serialize};
use tandem_proto::{InstanceId, PairSide, ReplicaSetId};

use super::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRecord {
    pub first: InstanceId,
    pub second: InstanceId,
    /// The last sequence of the passive side's own GTID domain when it became passive
    /// (0: it had written nothing). A passive side writes nothing of its own, so
    /// anything past this is a stray write, even once its peer has replicated it.
    pub passive_written: u64,
}

impl PairRecord {
    /// The side `instance` is, if it is one.
    pub fn side_of(&self, instance: &InstanceId) -> Option<PairSide> {
        if instance == &self.first {
            Some(PairSide::First)
        } else if instance == &self.second {
            Some(PairSide::Second)
        } else {
            None
        }
    }

    /// The other side of `instance`.
    pub fn peer_of(&self, instance: &InstanceId) -> Option<&InstanceId> {
        match self.side_of(instance)? {
            PairSide::First => Some(&self.second),
            PairSide::Second => Some(&self.first),
        }
    }
}

pub trait PairStore {
    /// A master-master pair's record; `None` for any other set.
    fn pair(&self, set: &ReplicaSetId) -> Result<Option<PairRecord>>;
}
