//! Cascaded replicas: when a replica that others replicate from is lost, where they go
//! instead — the nearest member above it in the tree that is not lost (the master at
//! the latest). A lost master is the failover's business, not this.

use tandem_proto::InstanceId;

use crate::store::ReplicaSet;

/// A source lost with replicas under it, and the member they are to replicate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphaned {
    pub lost: InstanceId,
    pub replicas: Vec<InstanceId>,
    pub new_source: InstanceId,
}

/// The first replica of `set` that is `lost` with replicas under it that are not,
/// those replicas, and the nearest member above it that is not lost; `None` when no
/// such source is lost, or when every member above one is lost too (the master among
/// them: a failover's case). Replicas that are lost themselves stay where they are
/// (nothing can be asked of them); theirs are moved in turn.
pub fn orphaned(set: &ReplicaSet, lost: impl Fn(&InstanceId) -> bool) -> Option<Orphaned> {
    set.replicas().find_map(|source| {
        let replicas: Vec<InstanceId> = set
            .replicas_of(source)
            .filter(|r| !lost(r))
            .cloned()
            .collect();
        if replicas.is_empty() || !lost(source) {
            return None;
        }
        let new_source = set
            .ancestors(source)
            .into_iter()
            .find(|a| !lost(a) && a != source)?;
        Some(Orphaned {
            lost: source.clone(),
            replicas,
            new_source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(s: &str) -> InstanceId {
        s.parse().unwrap()
    }

    /// db-1 → db-2 → db-3 → db-4, and db-5 under db-1.
    fn chain() -> ReplicaSet {
        crate::store::sample_set(
            3,
            &[
                ("db-1", None),
                ("db-2", Some("db-1")),
                ("db-3", Some("db-2")),
                ("db-4", Some("db-3")),
                ("db-5", Some("db-1")),
            ],
        )
    }

    #[test]
    fn replicas_of_a_lost_source_go_to_the_nearest_member_above_that_is_not_lost() {
        let set = chain();
        assert_eq!(set.ancestors(&i("db-4")), [i("db-3"), i("db-2"), i("db-1")]);
        assert_eq!(orphaned(&set, |_| false), None, "nobody lost");
        // A leaf or a direct replica without replicas: nothing to move.
        assert_eq!(orphaned(&set, |x| x == &i("db-4") || x == &i("db-5")), None);
        // The intermediate db-3: db-4 goes to db-2.
        assert_eq!(
            orphaned(&set, |x| x == &i("db-3")),
            Some(Orphaned {
                lost: i("db-3"),
                replicas: vec![i("db-4")],
                new_source: i("db-2"),
            })
        );
        // db-2 and db-3 both lost: db-3 stays (lost itself); db-4 skips both.
        let both = |x: &InstanceId| x == &i("db-2") || x == &i("db-3");
        assert_eq!(
            orphaned(&set, both),
            Some(Orphaned {
                lost: i("db-3"),
                replicas: vec![i("db-4")],
                new_source: i("db-1"),
            })
        );
        // The master lost too: a failover's case, not this.
        let all = |x: &InstanceId| x != &i("db-4") && x != &i("db-5");
        assert_eq!(orphaned(&set, all), None);
    }
}
