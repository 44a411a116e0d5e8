//! Replication positions and their one comparison.
//!
//! "Which replica is most advanced", "has the candidate applied everything the old
//! master wrote" and "does this returning master hold errant transactions" are all
//! questions to the partial order defined here, and nowhere else.
//!
//! * MariaDB: a [`GtidSet`] holds, per replication domain, the last GTID
//!   `domain-server-sequence` (the shape of `@@gtid_binlog_pos`, `@@gtid_slave_pos`,
//!   `@@gtid_current_pos`). Within a domain sequence numbers grow monotonically under
//!   `gtid_strict_mode`, so a higher sequence is further ahead. Two sets that hold the
//!   same sequence in a domain from *different* servers have diverged: neither contains
//!   the other.
//! * PostgreSQL: a [`WalPosition`] is an [`Lsn`] (a byte offset into the WAL) on a
//!   [`Timeline`], with the timeline's history: where each ancestor timeline ended
//!   when a promotion forked the next one (PostgreSQL's `.history` file). On one
//!   timeline LSNs are totally ordered; across timelines a position contains another
//!   only when the other's timeline is an ancestor and the other stopped at or before
//!   the fork. A server that wrote past the fork on the old timeline has diverged,
//!   however its LSN compares.
//!
//! Positions of different engines are never comparable.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("{input:?} is not a GTID (expected domain-server-sequence, e.g. 0-1-42)")]
    BadGtid { input: String },
    #[error("GTID set {input:?} names domain {domain} twice")]
    DuplicateDomain { input: String, domain: u32 },
    #[error("{input:?} is not an LSN (expected two hex numbers, e.g. 16/B374D848)")]
    BadLsn { input: String },
    #[error("{input:?} is not a timeline (expected a whole number after the @)")]
    BadTimeline { input: String },
}

/// One MariaDB global transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server_id: u32,
    pub sequence: u64,
}

impl FromStr for Gtid {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, PositionError> {
        let bad = || PositionError::BadGtid {
            input: s.to_owned(),
        };
        let mut parts = s.trim().splitn(3, '-');
        let domain = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let server_id = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let sequence = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        Ok(Gtid {
            domain,
            server_id,
            sequence,
        })
    }
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server_id, self.sequence)
    }
}

/// The last GTID of each replication domain, as MariaDB reports a position.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct GtidSet {
    by_domain: BTreeMap<u32, Gtid>,
}

impl GtidSet {
    pub fn empty() -> Self {
        Self::default()
    }
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
    pub fn get(&self, domain: u32) -> Option<Gtid> {
        self.by_domain.get(&domain).copied()
    }
    pub fn iter(&self) -> impl Iterator<Item = Gtid> + '_ {
        self.by_domain.values().copied()
    }
    /// Records `gtid` as the last of its domain, replacing what was there.
    pub fn insert(&mut self, gtid: Gtid) {
        self.by_domain.insert(gtid.domain, gtid);
    }

    /// True when every transaction this set stands for is also in `self`.
    pub fn contains(&self, other: &GtidSet) -> bool {
        matches!(
            self.partial_cmp(other),
            Some(Ordering::Greater | Ordering::Equal)
        )
    }

    /// The total number of transactions `self` is behind `target`, summed over the
    /// domains (a lag measured in transactions). `None` when the two have diverged.
    pub fn transactions_behind(&self, target: &GtidSet) -> Option<u64> {
        self.partial_cmp(target)?;
        Some(
            target
                .iter()
                .map(|t| {
                    let mine = self.get(t.domain).map_or(0, |g| g.sequence);
                    t.sequence.saturating_sub(mine)
                })
                .sum(),
        )
    }
}

impl GtidSet {
    /// The transactions of `self` that none of `sources` holds, domain by domain: the
    /// last GTID of each domain where `self` is ahead of every source (or which no
    /// source has). Empty when everything `self` holds came from one of them.
    ///
    /// Asked of a promotion candidate with the master's known position and what the
    /// master sent (the replicas' received positions) as sources, a non-empty answer
    /// is an errant transaction: written on the candidate itself.
    pub fn beyond(&self, sources: &[&GtidSet]) -> GtidSet {
        let mut errant = GtidSet::empty();
        for gtid in self.iter() {
            let held = sources.iter().any(|s| {
                s.get(gtid.domain).is_some_and(|h| {
                    h.sequence > gtid.sequence
                        || (h.sequence == gtid.sequence && h.server_id == gtid.server_id)
                })
            });
            if !held {
                errant.insert(gtid);
            }
        }
        errant
    }
}

impl PartialOrd for GtidSet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let mut self_ahead = false;
        let mut other_ahead = false;
        let domains = self.by_domain.keys().chain(other.by_domain.keys());
        for domain in domains {
            match (self.get(*domain), other.get(*domain)) {
                (Some(_), None) => self_ahead = true,
                (None, Some(_)) => other_ahead = true,
                (Some(a), Some(b)) => match a.sequence.cmp(&b.sequence) {
                    Ordering::Greater => self_ahead = true,
                    Ordering::Less => other_ahead = true,
                    // The same sequence written by two servers: two histories.
                    Ordering::Equal if a.server_id != b.server_id => return None,
                    Ordering::Equal => {}
                },
                (None, None) => unreachable!("domain came from one of the two sets"),
            }
        }
        match (self_ahead, other_ahead) {
            (false, false) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Greater),
            (false, true) => Some(Ordering::Less),
            (true, true) => None,
        }
    }
}

impl FromStr for GtidSet {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, PositionError> {
        let mut set = GtidSet::empty();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let gtid: Gtid = part.parse()?;
            if set.by_domain.insert(gtid.domain, gtid).is_some() {
                return Err(PositionError::DuplicateDomain {
                    input: s.to_owned(),
                    domain: gtid.domain,
                });
            }
        }
        Ok(set)
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            g.fmt(f)?;
        }
        Ok(())
    }
}

impl Serialize for GtidSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GtidSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A PostgreSQL write-ahead-log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, PositionError> {
        let bad = || PositionError::BadLsn {
            input: s.to_owned(),
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A PostgreSQL timeline id (1 for a cluster never promoted; each promotion starts the
/// next).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timeline(pub u32);

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where an ancestor timeline ended: the LSN at which the next one forked from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimelineSwitch {
    pub timeline: Timeline,
    pub ended_at: Lsn,
}

/// A PostgreSQL position: an LSN on a timeline, and that timeline's ancestry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WalPosition {
    pub timeline: Timeline,
    pub lsn: Lsn,
    /// Every ancestor timeline and where it ended (empty on timeline 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<TimelineSwitch>,
}

impl WalPosition {
    /// Where `timeline` ended in this position's ancestry, if it is an ancestor.
    fn ancestor_end(&self, timeline: Timeline) -> Option<Lsn> {
        self.history
            .iter()
            .find(|s| s.timeline == timeline)
            .map(|s| s.ended_at)
    }
}

impl PartialOrd for WalPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        if self.timeline == other.timeline {
            return Some(self.lsn.cmp(&other.lsn));
        }
        // `a` on a descendant timeline of `b`'s contains `b` when `b` stopped at or
        // before the fork; past it, `b` wrote what `a` never had: diverged.
        let contains = |a: &WalPosition, b: &WalPosition| {
            a.ancestor_end(b.timeline).is_some_and(|end| b.lsn <= end)
        };
        if contains(self, other) {
            Some(Ordering::Greater)
        } else if contains(other, self) {
            Some(Ordering::Less)
        } else {
            None
        }
    }
}

impl fmt::Display for WalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.lsn, self.timeline)
    }
}

/// A replication position of either engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Gtid(GtidSet),
    Wal(WalPosition),
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Position::Gtid(a), Position::Gtid(b)) => a.partial_cmp(b),
            (Position::Wal(a), Position::Wal(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

impl Position {
    /// True when `self` holds everything `other` does.
    pub fn contains(&self, other: &Position) -> bool {
        matches!(
            self.partial_cmp(other),
            Some(Ordering::Greater | Ordering::Equal)
        )
    }
}

impl Position {
    /// What `self` holds that none of `sources` does (see [`GtidSet::beyond`]); `None`
    /// when nothing. A WAL position is beyond its sources when none of them contains it
    /// (a PostgreSQL standby cannot write, so for it that means a fork); positions of
    /// another engine never count as a source.
    pub fn beyond(&self, sources: &[&Position]) -> Option<Position> {
        match self {
            Position::Gtid(g) => {
                let gtid_sources: Vec<&GtidSet> = sources
                    .iter()
                    .filter_map(|s| match s {
                        Position::Gtid(s) => Some(s),
                        Position::Wal(_) => None,
                    })
                    .collect();
                let errant = g.beyond(&gtid_sources);
                (!errant.is_empty()).then_some(Position::Gtid(errant))
            }
            Position::Wal(_) => {
                let held = sources.iter().any(|s| s.contains(self));
                (!held).then(|| self.clone())
            }
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Gtid(g) if g.is_empty() => f.write_str("gtid:(empty)"),
            Position::Gtid(g) => write!(f, "gtid:{g}"),
            Position::Wal(w) => write!(f, "wal:{w}"),
        }
    }
}

/// A position as [`Position`]'s `Display` writes it (`gtid:0-1-42`, `wal:16/B374D848@2`),
/// or a bare GTID set (`0-1-42,1-2-7`) or LSN (`16/B374D848`, timeline 1) as an
/// operator types one.
impl FromStr for Position {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let wal = |w: &str| -> Result<Position, PositionError> {
            let (lsn, timeline) = match w.split_once('@') {
                Some((lsn, tl)) => (
                    lsn,
                    tl.parse::<u32>()
                        .map_err(|_| PositionError::BadTimeline { input: tl.into() })?,
                ),
                None => (w, 1),
            };
            Ok(Position::Wal(WalPosition {
                timeline: Timeline(timeline),
                lsn: lsn.parse()?,
                history: Vec::new(),
            }))
        };
        if let Some(g) = s.strip_prefix("gtid:") {
            Ok(Position::Gtid(if g == "(empty)" {
                GtidSet::empty()
            } else {
                g.parse()?
            }))
        } else if let Some(w) = s.strip_prefix("wal:") {
            wal(w)
        } else if s.contains('/') {
            wal(s)
        } else {
            Ok(Position::Gtid(s.parse()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn a_position_reads_back_as_written_and_as_typed() {
        for text in ["gtid:0-1-42,1-2-7", "gtid:(empty)", "wal:16/B374D848@2"] {
            let p: Position = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        assert_eq!(
            "0-1-42".parse::<Position>().unwrap().to_string(),
            "gtid:0-1-42"
        );
        assert_eq!(
            "16/B374D848".parse::<Position>().unwrap().to_string(),
            "wal:16/B374D848@1"
        );
        assert!("soon".parse::<Position>().is_err());
    }

    fn gs(s: &str) -> GtidSet {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn gtid_set_order() {
        // (left, right, expected partial_cmp(left, right))
        let cases: &[(&str, &str, Option<Ordering>)] = &[
            ("", "", Some(Equal)),
            ("0-1-5", "0-1-5", Some(Equal)),
            ("0-1-6", "0-1-5", Some(Greater)),
            ("0-1-4", "0-1-5", Some(Less)),
            // A failover moved writes to server 2; its later sequence is ahead.
            ("0-2-7", "0-1-5", Some(Greater)),
            // Same sequence from two servers: an errant transaction, diverged.
            ("0-1-6", "0-2-6", None),
            ("", "0-1-1", Some(Less)),
            ("0-1-5,1-3-2", "0-1-5", Some(Greater)),
            ("0-1-5,1-3-2", "0-1-6", None),
            ("0-1-6,1-3-2", "0-1-5,1-3-2", Some(Greater)),
            ("1-3-2,0-1-6", "0-1-6,1-3-2", Some(Equal)),
        ];
        for (a, b, expect) in cases {
            assert_eq!(gs(a).partial_cmp(&gs(b)), *expect, "{a:?} vs {b:?}");
            let reversed = expect.map(Ordering::reverse);
            assert_eq!(gs(b).partial_cmp(&gs(a)), reversed, "{b:?} vs {a:?}");
        }
    }

    #[test]
    fn gtid_set_parse_and_print() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("0-1-5", Ok("0-1-5")),
            (" 1-2-3 ,0-1-5\n", Ok("0-1-5,1-2-3")),
            ("", Ok("")),
            ("0-1", Err("not a GTID")),
            ("0-1-x", Err("not a GTID")),
            ("-1-1-1", Err("not a GTID")),
            ("0-1-5,0-2-6", Err("names domain 0 twice")),
        ];
        for (input, expect) in cases {
            let got = input
                .parse::<GtidSet>()
                .map(|s| s.to_string())
                .map_err(|e| e.to_string());
            match (got, expect) {
                (Ok(s), Ok(e)) => assert_eq!(s, *e, "{input:?}"),
                (Err(msg), Err(part)) => assert!(msg.contains(part), "{input:?}: {msg}"),
                (got, expect) => panic!("{input:?}: got {got:?}, expected {expect:?}"),
            }
        }
    }

    #[test]
    fn what_a_candidate_holds_beyond_the_master_and_what_it_sent() {
        // (candidate, sources, expected errant part)
        let cases: &[(&str, &[&str], &str)] = &[
            ("0-1-10", &["0-1-10"], ""),
            ("0-1-9", &["0-1-10"], ""),
            // Received from the master after its last report: the master sent it.
            ("0-1-12", &["0-1-10", "0-1-12"], ""),
            ("0-1-12", &["0-1-10"], "0-1-12"),
            // A transaction written by an admin in a domain of its own.
            ("0-1-10,99-2-1", &["0-1-10", "0-1-10"], "99-2-1"),
            // A local write in the master's domain (same sequence, other server).
            ("0-2-11", &["0-1-11"], "0-2-11"),
            // Two domains, one of each: only the stray one is errant.
            ("0-1-5,1-2-7", &["0-1-5,1-2-6"], "1-2-7"),
            ("0-1-5,1-2-6", &["0-1-5", "1-2-6"], ""),
            ("", &[], ""),
        ];
        for (candidate, sources, expect) in cases {
            let sources: Vec<GtidSet> = sources.iter().map(|s| gs(s)).collect();
            let refs: Vec<&GtidSet> = sources.iter().collect();
            assert_eq!(gs(candidate).beyond(&refs), gs(expect), "{candidate:?}");
        }
        let l = |n| {
            Position::Wal(WalPosition {
                timeline: Timeline(1),
                lsn: Lsn(n),
                history: Vec::new(),
            })
        };
        assert_eq!(l(5).beyond(&[&l(5)]), None);
        assert_eq!(l(6).beyond(&[&l(5)]), Some(l(6)));
        let g = Position::Gtid(gs("0-1-1"));
        assert_eq!(g.beyond(&[&l(9)]), Some(g.clone()));
    }

    #[test]
    fn transactions_behind() {
        assert_eq!(gs("0-1-5").transactions_behind(&gs("0-1-9")), Some(4));
        assert_eq!(gs("0-1-9").transactions_behind(&gs("0-1-5")), Some(0));
        assert_eq!(gs("").transactions_behind(&gs("0-1-3,1-1-2")), Some(5));
        assert_eq!(gs("0-1-6").transactions_behind(&gs("0-2-6")), None);
    }

    #[test]
    fn lsn_parse_print_order() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0/0", Some(0)),
            ("16/B374D848", Some(0x16_B374_D848)),
            ("FFFFFFFF/FFFFFFFF", Some(u64::MAX)),
            ("16B374D848", None),
            ("x/1", None),
            ("1/100000000", None),
        ];
        for (input, expect) in cases {
            let got = input.parse::<Lsn>().ok().map(|l| l.0);
            assert_eq!(got, *expect, "{input:?}");
            if let Some(n) = expect {
                assert_eq!(Lsn(*n).to_string(), *input);
            }
        }
        assert!("0/10".parse::<Lsn>().unwrap() > "0/F".parse::<Lsn>().unwrap());
        assert!("1/0".parse::<Lsn>().unwrap() > "0/FFFFFFFF".parse::<Lsn>().unwrap());
    }

    #[test]
    fn positions_of_different_engines_do_not_compare() {
        let g = Position::Gtid(gs("0-1-1"));
        let l = Position::Wal(wal("1:0/1"));
        assert_eq!(g.partial_cmp(&l), None);
        assert!(!g.contains(&l));
        assert!(g.contains(&g));
    }

    /// `"3:0/700 1:0/500 2:0/600"`: timeline 3 at 0/700, whose ancestors ended at
    /// 0/500 (timeline 1) and 0/600 (timeline 2).
    fn wal(s: &str) -> WalPosition {
        let mut parts = s.split_whitespace().map(|p| {
            let (tl, lsn) = p.split_once(':').unwrap();
            (Timeline(tl.parse().unwrap()), lsn.parse::<Lsn>().unwrap())
        });
        let (timeline, lsn) = parts.next().unwrap();
        WalPosition {
            timeline,
            lsn,
            history: parts
                .map(|(timeline, ended_at)| TimelineSwitch { timeline, ended_at })
                .collect(),
        }
    }

    #[test]
    fn wal_positions_across_timelines() {
        // (left, right, expected partial_cmp(left, right))
        let cases: &[(&str, &str, Option<Ordering>)] = &[
            // One timeline: lag, totally ordered.
            ("1:0/500", "1:0/400", Some(Greater)),
            ("1:0/500", "1:0/500", Some(Equal)),
            // After a promotion at 0/500: the new timeline holds everything the old
            // one had up to the fork...
            ("2:0/600 1:0/500", "1:0/400", Some(Greater)),
            ("2:0/600 1:0/500", "1:0/500", Some(Greater)),
            // ...and nothing the old primary wrote past it: a fork, whatever the LSNs.
            ("2:0/600 1:0/500", "1:0/550", None),
            ("2:0/600 1:0/500", "1:0/700", None),
            // Two promotions.
            ("3:0/800 1:0/500 2:0/700", "2:0/650", Some(Greater)),
            ("3:0/800 1:0/500 2:0/700", "2:0/750", None),
            ("3:0/800 1:0/500 2:0/700", "1:0/500", Some(Greater)),
            // Two replicas promoted from the same timeline: sibling forks.
            ("2:0/600 1:0/500", "3:0/600 1:0/520", None),
            // A standby that has not followed the switch yet is behind, not forked.
            ("1:0/480", "2:0/600 1:0/500", Some(Less)),
        ];
        for (a, b, expect) in cases {
            let (pa, pb) = (Position::Wal(wal(a)), Position::Wal(wal(b)));
            assert_eq!(pa.partial_cmp(&pb), *expect, "{a:?} vs {b:?}");
            assert_eq!(
                pb.partial_cmp(&pa),
                expect.map(Ordering::reverse),
                "{b:?} vs {a:?}"
            );
            // A fork is what `beyond` reports: the left holds what the right lacks.
            let beyond = pa.beyond(&[&pb]).is_some();
            assert_eq!(
                beyond,
                !matches!(expect, Some(Less | Equal)),
                "{a:?} beyond {b:?}"
            );
        }
    }

    #[test]
    fn a_wal_position_travels_as_json_with_its_history() {
        let p = Position::Wal(wal("2:16/B374D848 1:16/B0000000"));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"wal": {"timeline": 2, "lsn": "16/B374D848",
                "history": [{"timeline": 1, "ended_at": "16/B0000000"}]}})
        );
        assert_eq!(serde_json::from_value::<Position>(json).unwrap(), p);
        assert_eq!(p.to_string(), "wal:16/B374D848@2");
    }
}
