//! Positions of a master-master pair, data-driven: each side writes in a GTID domain of
//! its own (first: 1, second: 2) on top of the history both hold (domain 0), so every
//! question a switch or a failover asks is a question about multi-domain GTID sets.
//! Each row is a moment of a pair's life: the two sides' positions, how they compare,
//! and what the candidate holds that the other lacks (its errant transactions).

use std::cmp::Ordering;

use tandem_proto::{GtidSet, PairSide};

struct Case {
    what: &'static str,
    /// The side that is (or is becoming) writable.
    active: &'static str,
    /// The candidate for the switch: the passive side.
    passive: &'static str,
    /// How the passive compares with the active (`None`: two histories).
    order: Option<Ordering>,
    /// What the passive holds that the active lacks.
    errant: &'static str,
}

const CASES: &[Case] = &[
    Case {
        what: "made from a master: the peer is a copy of it",
        active: "0-11-40",
        passive: "0-11-40",
        order: Some(Ordering::Equal),
        errant: "",
    },
    Case {
        what: "the first side writes in domain 1; the passive is behind",
        active: "0-11-40,1-11-7",
        passive: "0-11-40,1-11-5",
        order: Some(Ordering::Less),
        errant: "",
    },
    Case {
        what: "caught up: the switch may go ahead",
        active: "0-11-40,1-11-7",
        passive: "0-11-40,1-11-7",
        order: Some(Ordering::Equal),
        errant: "",
    },
    Case {
        what: "a stray write on the passive side, in its own domain",
        active: "0-11-40,1-11-7",
        passive: "0-11-40,1-11-7,2-22-1",
        order: Some(Ordering::Greater),
        errant: "2-22-1",
    },
    Case {
        what: "a stray write on the passive side, behind on domain 1 as well",
        active: "0-11-40,1-11-9",
        passive: "0-11-40,1-11-7,2-22-1",
        order: None,
        errant: "2-22-1",
    },
    Case {
        what: "switched: the second side writes in domain 2, the first follows",
        active: "0-11-40,1-11-7,2-22-3",
        passive: "0-11-40,1-11-7,2-22-1",
        order: Some(Ordering::Less),
        errant: "",
    },
    Case {
        what: "switched back: the first side writes in domain 1 again",
        active: "0-11-40,1-11-8,2-22-3",
        passive: "0-11-40,1-11-7,2-22-3",
        order: Some(Ordering::Less),
        errant: "",
    },
    Case {
        what: "the old active returns after a failover holding a write nobody got",
        active: "0-11-40,1-11-7,2-22-9",
        passive: "0-11-40,1-11-8,2-22-3",
        order: None,
        errant: "1-11-8",
    },
    Case {
        what: "the same sequence written by two servers in one domain: two histories",
        active: "0-11-40,1-11-8",
        passive: "0-11-40,1-22-8",
        order: None,
        errant: "1-22-8",
    },
];

fn set(s: &str) -> GtidSet {
    s.parse().unwrap()
}

#[test]
fn every_moment_of_a_pair_compares_and_finds_errant_transactions_as_stated() {
    for c in CASES {
        let (active, passive) = (set(c.active), set(c.passive));
        assert_eq!(passive.partial_cmp(&active), c.order, "{}", c.what);
        assert_eq!(
            passive.beyond(&[&active]).to_string(),
            c.errant,
            "{}",
            c.what
        );
        // The containment a switch waits for: the passive holds all of the active.
        let caught_up = matches!(c.order, Some(Ordering::Greater | Ordering::Equal));
        assert_eq!(passive.contains(&active), caught_up, "{}", c.what);
    }
}

#[test]
fn the_two_sides_write_in_domains_of_their_own() {
    let (a, b) = (PairSide::First, PairSide::Second);
    assert_eq!((a.domain(), b.domain()), (1, 2));
    assert_eq!(a.other(), b);
    assert_eq!(b.other(), a);
    assert_ne!(a.auto_increment_offset(), b.auto_increment_offset());
    // A side's own writes are told apart from what its peer wrote by domain alone.
    let passive = set("0-11-40,1-11-7,2-22-1");
    assert_eq!(passive.get(b.domain()).map(|g| g.sequence), Some(1));
    assert_eq!(passive.get(a.domain()).map(|g| g.sequence), Some(7));
}
