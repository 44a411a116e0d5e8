//! Pure decisions: each a function of what is known (reports, intent, settings), with a
//! typed outcome, no I/O and no clock of its own, so that every case is a unit test.
//! The detector and the workflows act on them; nothing here acts.
//!
//! * [`verdict`]: is a set's master healthy, suspected, waiting for its lease, or lost;
//! * [`candidate`]: which replica a failover promotes, and why the others are not;
//! * [`drift`]: how a member's engine differs from the intent, and whether a replica
//!   is to be re-pointed;
//! * [`cascade`]: where the replicas of a lost intermediate source go;
//! * [`placement`]: which placement rules a set breaks, whether a change may go
//!   ahead, which rules contradict, which free servers a new replica comes from.

pub mod candidate;
pub mod cascade;
pub mod drift;
pub mod placement;
pub mod verdict;
