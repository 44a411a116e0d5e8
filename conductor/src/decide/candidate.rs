//! The failover candidate rule, as a pure function of the drained replicas: tested
//! without engines, decided once by the failover workflow and journaled.

use tandem_proto::{InstanceId, Position};

/// How an operator wants a replica treated as a failover candidate (instance metadata
/// `promotion_rule`, as orchestrator names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PromotionRule {
    Prefer,
    Neutral,
    PreferNot,
    MustNot,
}

impl PromotionRule {
    pub fn parse(s: Option<&str>) -> Result<PromotionRule, String> {
        Ok(match s {
            None | Some("neutral") => PromotionRule::Neutral,
            Some("prefer") => PromotionRule::Prefer,
            Some("prefer_not") => PromotionRule::PreferNot,
            Some("must_not") => PromotionRule::MustNot,
            Some(other) => {
                return Err(format!(
                    "promotion_rule {other:?} is not prefer, neutral, prefer_not or must_not"
                ))
            }
        })
    }
}

/// One replica after it was asked to drain what it received (`drain_received`).
#[derive(Debug, Clone)]
pub struct Drained {
    pub instance: InstanceId,
    /// Where it stands once it applied everything it received; `Err` when it could not
    /// be drained (unreachable, engine down, applier stuck).
    pub position: Result<Position, String>,
    pub zone: String,
    /// Its lag in seconds as last reported before the failure.
    pub lag_s: Option<f64>,
    pub rule: PromotionRule,
    /// Instance metadata `failover_priority`: higher is preferred among equals.
    pub priority: i64,
    /// Why an operator's options keep it from promotion (paused, delayed), when they do.
    pub held_back: Option<String>,
    /// Its history split from the master's (a transaction written on it, or one it
    /// could not apply): never promoted, not even by force, and never a source.
    pub diverged: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub candidate: InstanceId,
    pub position: Position,
    /// Replicas left out, and why.
    pub excluded: Vec<(InstanceId, String)>,
}

/// The failover candidate: the eligible replica whose drained position contains every
/// other eligible replica's; among equals, the promotion rule, then the failed
/// master's zone, then the priority, then the name decide. An operator's `requested`
/// candidate is taken when it is eligible and not behind any drained replica, or
/// whatever its state with `force`.
pub fn choose(
    drained: &[Drained],
    master_zone: &str,
    max_lag_s: f64,
    requested: Option<&InstanceId>,
    force: bool,
) -> Result<Choice, String> {
    let mut excluded = Vec::new();
    let mut eligible: Vec<(&Drained, &Position)> = Vec::new();
    let all_positions: Vec<(&InstanceId, &Position)> = drained
        .iter()
        .filter_map(|d| d.position.as_ref().ok().map(|p| (&d.instance, p)))
        .collect();
    // Drained, a replica has applied all it received: its lag before the failure says
    // how much it had left to apply then, not what it holds now. It is left out for it
    // only when a replica that did not lag holds all it holds (else promoting another
    // would lose what only it has).
    let unlagged: Vec<&Position> = drained
        .iter()
        .filter(|d| d.diverged.is_none() && d.held_back.is_none())
        .filter(|d| d.rule != PromotionRule::MustNot)
        .filter(|d| !d.lag_s.is_some_and(|l| l > max_lag_s))
        .filter_map(|d| d.position.as_ref().ok())
        .collect();
    let covered = |p: &Position| unlagged.iter().any(|q| q.contains(p));
    for d in drained {
        let why = match &d.position {
            _ if d.diverged.is_some() => Some(format!(
                "diverged: {}",
                d.diverged.as_deref().unwrap_or_default()
            )),
            _ if d.held_back.is_some() => d.held_back.clone(),
            Err(e) => Some(format!("not drained: {e}")),
            Ok(_) if d.rule == PromotionRule::MustNot => Some("promotion_rule must_not".into()),
            Ok(p) if d.lag_s.is_some_and(|l| l > max_lag_s) && covered(p) => Some(format!(
                "lagged {:.1} s, more than max_lag_s {max_lag_s}",
                d.lag_s.unwrap_or_default()
            )),
            Ok(p) => {
                eligible.push((d, p));
                None
            }
        };
        if let Some(why) = why {
            excluded.push((d.instance.clone(), why));
        }
    }

    if let Some(wanted) = requested {
        let Some(d) = drained.iter().find(|d| &d.instance == wanted) else {
            return Err(format!("{wanted} is not a replica of this set"));
        };
        if let Some(why) = &d.diverged {
            return Err(format!(
                "{wanted} is never promoted: it diverged from the master ({why})"
            ));
        }
        let position = match &d.position {
            Ok(p) => p.clone(),
            Err(e) => return Err(format!("{wanted} cannot be promoted: {e}")),
        };
        if !force {
            if let Some((_, why)) = excluded.iter().find(|(i, _)| i == wanted) {
                return Err(format!(
                    "{wanted} is not eligible ({why}); use --force to promote it anyway"
                ));
            }
            let ahead: Vec<String> = all_positions
                .iter()
                .filter(|(i, p)| *i != wanted && !position.contains(p))
                .map(|(i, p)| format!("{i} at {p}"))
                .collect();
            if !ahead.is_empty() {
                return Err(format!(
                    "{wanted} (at {position}) is behind {}; promoting it would lose those \
                     transactions: use --force to accept that",
                    ahead.join(", ")
                ));
            }
        }
        return Ok(Choice {
            candidate: wanted.clone(),
            position,
            excluded,
        });
    }

    let top: Vec<&(&Drained, &Position)> = eligible
        .iter()
        .filter(|(_, p)| eligible.iter().all(|(_, q)| p.contains(q)))
        .collect();
    if top.is_empty() {
        if eligible.is_empty() {
            return Err(format!(
                "no replica can be promoted: {}",
                excluded
                    .iter()
                    .map(|(i, why)| format!("{i}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        return Err(format!(
            "the replicas have diverged ({}); choose a candidate with --candidate and --force",
            eligible
                .iter()
                .map(|(d, p)| format!("{} at {p}", d.instance))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let best = top
        .iter()
        .min_by_key(|(d, _)| {
            (
                d.rule,
                d.zone != master_zone,
                std::cmp::Reverse(d.priority),
                d.instance.clone(),
            )
        })
        .expect("not empty");
    Ok(Choice {
        candidate: best.0.instance.clone(),
        position: best.1.clone(),
        excluded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(s: &str) -> InstanceId {
        s.parse().unwrap()
    }

    fn drained(name: &str, gtid: Result<&str, &str>, zone: &str) -> Drained {
        Drained {
            instance: i(name),
            position: gtid
                .map(|g| Position::Gtid(g.parse().unwrap()))
                .map_err(String::from),
            zone: zone.into(),
            lag_s: Some(0.1),
            rule: PromotionRule::Neutral,
            priority: 0,
            held_back: None,
            diverged: None,
        }
    }

    #[test]
    fn the_most_advanced_eligible_replica_is_chosen_and_ties_go_to_the_masters_zone() {
        let d = vec![
            drained("db-2", Ok("0-1-10"), "b"),
            drained("db-3", Ok("0-1-12"), "b"),
            drained("db-4", Ok("0-1-12"), "a"),
            drained("db-5", Err("engine down"), "a"),
        ];
        let c = choose(&d, "a", 30.0, None, false).unwrap();
        assert_eq!(
            c.candidate,
            i("db-4"),
            "same position: the master's zone wins"
        );
        assert_eq!(c.excluded.len(), 1);

        // The most advanced is never promotable: the next best that contains the rest.
        let mut d2 = d.clone();
        d2[1].rule = PromotionRule::MustNot;
        d2[2].held_back = Some("a delayed replica (3600 s)".into());
        let c = choose(&d2, "a", 30.0, None, false).unwrap();
        assert_eq!(c.candidate, i("db-2"));
        assert!(c
            .excluded
            .iter()
            .any(|(r, why)| r == &d2[2].instance && why == "a delayed replica (3600 s)"));

        // A paused replica: its drain was refused, and it is excluded for its pause.
        let mut d5 = d.clone();
        d5[2].held_back = Some("paused by an operator".into());
        d5[2].position = Err("its applier is paused".into());
        let c = choose(&d5, "a", 30.0, None, false).unwrap();
        assert!(c
            .excluded
            .iter()
            .any(|(r, why)| r == &d5[2].instance && why == "paused by an operator"));

        // A lagging replica is never chosen.
        let mut d3 = d.clone();
        d3[2].lag_s = Some(100.0);
        assert_eq!(
            choose(&d3, "a", 30.0, None, false).unwrap().candidate,
            i("db-3")
        );

        // Unless it holds what no other does: its lag was then, its position is now.
        let mut d6 = d.clone();
        d6[2].lag_s = Some(100.0);
        d6[2].position = Ok(Position::Gtid("0-1-13".parse().unwrap()));
        assert_eq!(
            choose(&d6, "a", 30.0, None, false).unwrap().candidate,
            i("db-4")
        );

        // Prefer beats zone; priority breaks the remaining tie.
        let mut d4 = d.clone();
        d4[1].rule = PromotionRule::Prefer;
        assert_eq!(
            choose(&d4, "a", 30.0, None, false).unwrap().candidate,
            i("db-3")
        );
        let mut d5 = d.clone();
        d5[1].zone = "a".into();
        d5[1].priority = 5;
        assert_eq!(
            choose(&d5, "a", 30.0, None, false).unwrap().candidate,
            i("db-3")
        );
    }

    #[test]
    fn a_requested_candidate_that_is_behind_is_refused_unless_forced() {
        let d = vec![
            drained("db-2", Ok("0-1-10"), "a"),
            drained("db-3", Ok("0-1-12"), "a"),
        ];
        let err = choose(&d, "a", 30.0, Some(&i("db-2")), false).unwrap_err();
        assert!(err.contains("behind db-3"), "{err}");
        let c = choose(&d, "a", 30.0, Some(&i("db-2")), true).unwrap();
        assert_eq!(c.candidate, i("db-2"));
        assert_eq!(
            choose(&d, "a", 30.0, Some(&i("db-3")), false)
                .unwrap()
                .candidate,
            i("db-3")
        );
        assert!(choose(&d, "a", 30.0, Some(&i("db-9")), true).is_err());
    }

    #[test]
    fn an_errant_replica_is_never_chosen_not_even_when_most_advanced_or_forced() {
        // db-3 holds a transaction of its own (domain 99): by the partial order it is
        // ahead of everyone, which is exactly why the agent's word must exclude it.
        let mut d = vec![
            drained("db-2", Ok("0-1-12"), "a"),
            drained("db-3", Ok("0-1-12,99-3-1"), "a"),
        ];
        d[1].diverged = Some("holds 99-3-1, written on it".into());
        let c = choose(&d, "a", 30.0, None, false).unwrap();
        assert_eq!(c.candidate, i("db-2"));
        assert!(c
            .excluded
            .iter()
            .any(|(x, why)| x == &i("db-3") && why.contains("diverged: holds 99-3-1")));
        for force in [false, true] {
            let err = choose(&d, "a", 30.0, Some(&i("db-3")), force).unwrap_err();
            assert!(
                err.contains("never promoted") && err.contains("99-3-1"),
                "{err}"
            );
        }
        d[0].diverged = Some("out-of-order transaction".into());
        let err = choose(&d, "a", 30.0, None, false).unwrap_err();
        assert!(err.contains("no replica can be promoted"), "{err}");
    }

    #[test]
    fn diverged_or_ineligible_replicas_give_no_candidate() {
        let d = vec![
            drained("db-2", Ok("0-1-10,1-2-3"), "a"),
            drained("db-3", Ok("0-1-12"), "a"),
        ];
        assert!(choose(&d, "a", 30.0, None, false)
            .unwrap_err()
            .contains("diverged"));
        let d = vec![drained("db-2", Err("unreachable"), "a")];
        assert!(choose(&d, "a", 30.0, None, false)
            .unwrap_err()
            .contains("no replica can be promoted"));
    }
}
