//! The conductor's side of the failsafe (see `tandem_proto::failsafe`): the key each
//! replica answers its master with, when a set's assignment is out of date, and the
//! rule a failover keeps so that it never promotes while the old master may still be
//! writable on its replicas' promises.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tandem_proto::{Epoch, FailsafeState, InstanceId, ReplicaSetId, Secret, StatusReport};

use crate::store::ReplicaSet;

/// The key `instance` authenticates its failsafe datagrams with in `set`: derived from
/// the conductor's secret, so it is the same whenever it is sent again, and one
/// replica's key says nothing about another's.
pub fn key_for(secret: &[u8], set: &ReplicaSetId, instance: &InstanceId) -> Secret {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(b"tandem failsafe v1\0");
    m.update(set.as_str().as_bytes());
    m.update(b"\0");
    m.update(instance.as_str().as_bytes());
    let bytes = m.finalize().into_bytes();
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Whether the set's failsafe assignment differs from what its agents report: the
/// master must hold the list of the set's current epoch (its replicas, in any order),
/// and every replica heard must answer the master.
pub fn out_of_date<'r>(
    set: &ReplicaSet,
    master: Option<&StatusReport>,
    mut replicas: impl Iterator<Item = Option<&'r StatusReport>>,
) -> bool {
    // Asked for every set ten times a second: compared in place, nothing sorted. A set's
    // replicas are distinct, so the same count with each of them held is the same list.
    let master_ok = match master.and_then(|r| r.failsafe.as_ref()) {
        Some(FailsafeState::Master { epoch, peers, .. }) => {
            *epoch == set.epoch
                && peers.len() == set.replicas().count()
                && set.replicas().all(|r| peers.contains(r))
        }
        // A master with no replica needs no list.
        _ => set.replicas().next().is_none(),
    };
    let replicas_ok = replicas.all(|report| match report {
        None => true,
        Some(r) => matches!(
            &r.failsafe,
            Some(FailsafeState::Replica { master }) if *master == set.master
        ),
    });
    !(master_ok && replicas_ok)
}

/// The lists the old master may hold: the one it last reported, and every one sent to
/// it since (recorded before sending; `recorded` oldest first). An empty list holds
/// nothing (no failsafe) and is left out.
pub fn possible_lists(
    reported: Option<&FailsafeState>,
    recorded: Vec<(Epoch, Vec<InstanceId>)>,
) -> Vec<Vec<InstanceId>> {
    let held = match reported {
        Some(FailsafeState::Master { epoch, peers, .. }) => Some((*epoch, peers.clone())),
        _ => None,
    };
    let mut lists: Vec<Vec<InstanceId>> = held.iter().map(|(_, p)| p.clone()).collect();
    lists.extend(
        recorded
            .into_iter()
            .filter(|(e, _)| held.as_ref().is_none_or(|(h, _)| e >= h))
            .map(|(_, p)| p),
    );
    lists.retain(|l| !l.is_empty());
    lists
}

/// A master's failsafe renews its lease only with the promise of *every* replica of
/// its list, so one replica of each list it may hold that withdrew (it answered a
/// drain: no promise given since, the last one waited out) is enough to know its lease
/// has run out. `Err` names the lists nobody withdrew from.
pub fn bounded(lists: &[Vec<InstanceId>], withdrawn: &[InstanceId]) -> Result<(), String> {
    let open: Vec<String> = lists
        .iter()
        .filter(|l| !l.iter().any(|p| withdrawn.contains(p)))
        .map(|l| {
            l.iter()
                .map(InstanceId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the old master may still be writable on its replicas' failsafe promises: none of \
         [{}] answered its drain; fence it (failover.fence_command) or fail over with --force \
         once it is known to be down",
        open.join("] nor [")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    fn ids(v: &[&str]) -> Vec<InstanceId> {
        v.iter().map(|s| i(s)).collect()
    }

    #[test]
    fn keys_differ_per_replica_and_per_set_and_are_stable() {
        let set = ReplicaSetId::new("s1").unwrap();
        let a = key_for(b"secret", &set, &i("db-2"));
        assert_eq!(a, key_for(b"secret", &set, &i("db-2")));
        assert_ne!(a, key_for(b"secret", &set, &i("db-3")));
        assert_ne!(
            a,
            key_for(b"secret", &ReplicaSetId::new("s2").unwrap(), &i("db-2"))
        );
        assert_ne!(a, key_for(b"other", &set, &i("db-2")));
        assert_eq!(a.expose().len(), 64);
    }

    /// db-1 with the replicas db-2 and db-3, at epoch 5.
    fn set() -> ReplicaSet {
        crate::store::sample_set(
            5,
            &[
                ("db-1", None),
                ("db-2", Some("db-1")),
                ("db-3", Some("db-1")),
            ],
        )
    }

    fn holding(failsafe: FailsafeState) -> StatusReport {
        let mut r = crate::registry::sample_report("x");
        r.failsafe = Some(failsafe);
        r
    }

    #[test]
    fn the_assignment_is_out_of_date_unless_the_master_holds_exactly_the_replicas_at_the_epoch() {
        let set = set();
        let master = |epoch: u64, peers: &[&str]| {
            holding(FailsafeState::Master {
                epoch: Epoch::new(epoch),
                peers: ids(peers),
                held: 0,
            })
        };
        let answers = holding(FailsafeState::Replica { master: i("db-1") });
        let elsewhere = holding(FailsafeState::Replica { master: i("db-9") });
        let fine = [Some(&answers), None];
        // Any order of the same replicas, at the set's epoch.
        for peers in [&["db-2", "db-3"], &["db-3", "db-2"]] {
            let m = master(5, peers);
            assert!(
                !out_of_date(&set, Some(&m), fine.iter().copied()),
                "{peers:?}"
            );
        }
        // Another epoch, one missing, one extra, one twice in place of another.
        for (epoch, peers) in [
            (4, &["db-2", "db-3"][..]),
            (5, &["db-2"]),
            (5, &["db-2", "db-3", "db-4"]),
            (5, &["db-2", "db-2"]),
        ] {
            let m = master(epoch, peers);
            assert!(
                out_of_date(&set, Some(&m), fine.iter().copied()),
                "{epoch} {peers:?}"
            );
        }
        // No list reported, or a replica answering another master.
        assert!(out_of_date(&set, None, fine.iter().copied()));
        let m = master(5, &["db-2", "db-3"]);
        assert!(out_of_date(&set, Some(&m), [Some(&elsewhere)].into_iter()));
        // A master without replicas needs no list.
        let mut alone = set.clone();
        alone.members.truncate(1);
        assert!(!out_of_date(&alone, None, std::iter::empty()));
    }

    #[test]
    fn a_promotion_needs_one_withdrawn_replica_in_every_list_the_master_may_hold() {
        let reported = FailsafeState::Master {
            epoch: Epoch::new(5),
            peers: ids(&["db-2", "db-3"]),
            held: 0,
        };
        // Sent since: db-4 joined at epoch 7. An older list (epoch 4) no longer counts:
        // the master refuses anything older than what it holds.
        let recorded = vec![
            (Epoch::new(4), ids(&["db-2"])),
            (Epoch::new(7), ids(&["db-2", "db-3", "db-4"])),
        ];
        let lists = possible_lists(Some(&reported), recorded.clone());
        assert_eq!(lists.len(), 2);
        assert!(bounded(&lists, &ids(&["db-3"])).is_ok());
        // db-4 drained alone: the master may still hold the list without it.
        let err = bounded(&lists, &ids(&["db-4"])).unwrap_err();
        assert!(err.contains("[db-2, db-3]"), "{err}");
        // Nothing reported: every recorded list may be held.
        let lists = possible_lists(None, recorded);
        assert!(bounded(&lists, &ids(&["db-3", "db-4"])).is_err());
        assert!(bounded(&lists, &ids(&["db-2"])).is_ok());
        // A master that never had a list has no failsafe.
        assert!(bounded(&possible_lists(None, vec![]), &[]).is_ok());
        assert!(bounded(&possible_lists(None, vec![(Epoch::new(3), vec![])]), &[]).is_ok());
    }
}
