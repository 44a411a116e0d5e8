//! Placement rules, decided: which rules a set's servers break, whether a change may
//! go ahead, which rules can never hold together, and which free servers a new
//! replica may be taken from. Pure: locations and rules in, answers out.
//!
//! A rule is about all of a set's live servers (the master and its replicas; a failed
//! or quarantined member is not running anything for the set). `affinity` wants them
//! in one domain, `anti-affinity` at most `max_per_domain` (default 1) in each. A
//! requirement that a change would newly break refuses the change; a preference is
//! allowed and reported. A server whose host is unknown (its agent has no `host_id`)
//! cannot be judged: a requirement by host counts that as broken (nothing can be
//! promised), a preference ignores it.

use std::collections::BTreeMap;

use tandem_api::{Location, PlacementPolicy, PlacementRule, PlacementScope, RuleId, Violation};
use tandem_proto::{InstanceId, Timestamp};

/// Where each of a set's live servers runs (`None`: never reported where).
pub type Placement = Vec<(InstanceId, Option<Location>)>;

/// The rule a set keeps when it names none: soft anti-affinity by host, as
/// CloudNativePG does by default.
pub fn default_rule() -> PlacementRule {
    PlacementRule {
        id: RuleId::from_bits(0),
        name: "default".into(),
        policy: PlacementPolicy::SoftAntiAffinity,
        scope: PlacementScope::Host,
        max_per_domain: None,
        created_at: Timestamp(0),
    }
}

/// The rules that apply to a set: its own, or the default when it names none.
pub fn effective(rules: Vec<PlacementRule>) -> Vec<PlacementRule> {
    if rules.is_empty() {
        vec![default_rule()]
    } else {
        rules
    }
}

fn domain(location: &Location, scope: PlacementScope) -> Option<String> {
    match scope {
        PlacementScope::Zone => Some(location.zone.clone()),
        PlacementScope::Host => location.host_id.as_ref().map(|h| h.to_string()),
    }
}

/// What the servers of `placement` break of `rules`, one violation per broken
/// domain (anti-affinity) or per rule (affinity).
pub fn violations(rules: &[PlacementRule], placement: &Placement) -> Vec<Violation> {
    let mut out = Vec::new();
    for rule in rules {
        let required = rule.policy.required();
        let violation = |instances: Vec<InstanceId>, reason: String| Violation {
            rule: rule.id.clone(),
            rule_name: rule.name.clone(),
            required,
            instances,
            reason,
        };
        let mut by_domain: BTreeMap<String, Vec<InstanceId>> = BTreeMap::new();
        let mut unknown: Vec<InstanceId> = Vec::new();
        for (i, l) in placement {
            match l.as_ref().and_then(|l| domain(l, rule.scope)) {
                Some(d) => by_domain.entry(d).or_default().push(i.clone()),
                None => unknown.push(i.clone()),
            }
        }
        if required && !unknown.is_empty() {
            let names: Vec<String> = unknown.iter().map(|i| i.to_string()).collect();
            out.push(violation(
                unknown,
                format!(
                    "the {} of {} is unknown (set `host_id` in the agent's configuration)",
                    rule.scope,
                    names.join(", ")
                ),
            ));
        }
        if rule.policy.spreads() {
            let limit = rule.limit() as usize;
            for (d, servers) in by_domain {
                if servers.len() > limit {
                    let names: Vec<String> = servers.iter().map(|i| i.to_string()).collect();
                    out.push(violation(
                        servers,
                        format!(
                            "{} share {} {d} (at most {limit} may)",
                            names.join(", "),
                            rule.scope
                        ),
                    ));
                }
            }
        } else if by_domain.len() > 1 {
            let spread: Vec<String> = by_domain
                .iter()
                .map(|(d, s)| {
                    let names: Vec<String> = s.iter().map(|i| i.to_string()).collect();
                    format!("{} on {d}", names.join(", "))
                })
                .collect();
            let servers = by_domain.into_values().flatten().collect();
            out.push(violation(
                servers,
                format!("not on one {}: {}", rule.scope, spread.join("; ")),
            ));
        }
    }
    out
}

/// Why a change is refused: the requirements it would newly break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub Vec<Violation>);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let each: Vec<String> = self.0.iter().map(|v| v.to_string()).collect();
        write!(f, "placement: {}", each.join("; "))
    }
}

/// Whether a set may go from `before` to `after`: refused when `after` breaks a
/// requirement in a way `before` did not (a server added to a crowded domain is a new
/// break, one added elsewhere is not); otherwise the preferences `after` newly breaks,
/// to be raised.
pub fn admit(
    rules: &[PlacementRule],
    before: &Placement,
    after: &Placement,
) -> Result<Vec<Violation>, Refused> {
    let held = violations(rules, before);
    let new: Vec<Violation> = violations(rules, after)
        .into_iter()
        .filter(|v| !held.contains(v))
        .collect();
    let (required, preferred): (Vec<_>, Vec<_>) = new.into_iter().partition(|v| v.required);
    if required.is_empty() {
        Ok(preferred)
    } else {
        Err(Refused(required))
    }
}

/// Why `rules` can never all hold for a set of two or more servers, if they cannot:
/// one keeps servers together in a domain that another spreads them across (affinity
/// by host with anti-affinity by host or zone, affinity by zone with anti-affinity by
/// zone), with one server per domain.
pub fn contradiction(rules: &[PlacementRule]) -> Option<String> {
    for together in rules.iter().filter(|r| !r.policy.spreads()) {
        for apart in rules.iter().filter(|r| r.policy.spreads()) {
            // Servers on one host are in one zone; servers in one zone may be on
            // several hosts. So "together by zone" and "apart by host" can both hold.
            let clash =
                !(together.scope == PlacementScope::Zone && apart.scope == PlacementScope::Host);
            if clash && apart.limit() == 1 {
                return Some(format!(
                    "rule {together} keeps a set's servers on one {}, and rule {apart} allows \
                     one server per {}: no set of two servers can keep both",
                    together.scope, apart.scope
                ));
            }
        }
    }
    None
}

/// A free server that may be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Free {
    pub instance: InstanceId,
    pub location: Option<Location>,
}

/// Takes `count` servers from `pool` for a set placed as `placement`, in `zone` when
/// given: each must keep the set's requirements; those that keep its preferences too
/// come first, then the pool's order. Refused with the reason when not enough can.
pub fn choose(
    rules: &[PlacementRule],
    placement: &Placement,
    pool: &[Free],
    count: usize,
    zone: Option<&str>,
) -> Result<Vec<InstanceId>, String> {
    let mut chosen: Vec<InstanceId> = Vec::new();
    let mut now = placement.clone();
    let mut refusals: Vec<String> = Vec::new();
    let in_zone: Vec<&Free> = pool
        .iter()
        .filter(|f| zone.is_none_or(|z| f.location.as_ref().is_some_and(|l| l.zone == z)))
        .collect();
    while chosen.len() < count {
        let mut best: Option<(&Free, usize)> = None;
        for f in in_zone.iter().filter(|f| !chosen.contains(&f.instance)) {
            let mut after = now.clone();
            after.push((f.instance.clone(), f.location.clone()));
            match admit(rules, &now, &after) {
                Ok(soft) => {
                    if best.is_none_or(|(_, n)| soft.len() < n) {
                        best = Some((f, soft.len()));
                    }
                }
                Err(why) => refusals.push(format!("{}: {why}", f.instance)),
            }
        }
        let Some((f, _)) = best else {
            let wanted = match zone {
                Some(z) => format!("in zone {z}"),
                None => "anywhere".into(),
            };
            let mut why = format!(
                "the pool has {} of the {count} server(s) wanted {wanted} that the set's \
                 rules allow (in the pool {wanted}: {})",
                chosen.len(),
                in_zone.len()
            );
            refusals.dedup();
            if !refusals.is_empty() {
                why.push_str(&format!("; refused: {}", refusals.join("; ")));
            }
            return Err(why);
        };
        now.push((f.instance.clone(), f.location.clone()));
        chosen.push(f.instance.clone());
    }
    Ok(chosen)
}

/// The set's rules as the one Nova server group a provisioner creates servers in: the
/// rule by host (a requirement before a preference), else the first rule.
pub fn server_group(rules: &[PlacementRule]) -> tandem_api::ServerGroup {
    let by_host = |required: bool| {
        rules
            .iter()
            .find(|r| r.scope == PlacementScope::Host && r.policy.required() == required)
    };
    let rule = by_host(true)
        .or_else(|| by_host(false))
        .or(rules.first())
        .cloned()
        .unwrap_or_else(default_rule);
    tandem_api::ServerGroup {
        policy: rule.policy,
        scope: rule.scope,
        max_per_domain: rule.limit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::HostId;

    fn rule(name: &str, policy: PlacementPolicy, scope: PlacementScope) -> PlacementRule {
        PlacementRule {
            id: RuleId::from_bits(name.len() as u32),
            name: name.into(),
            policy,
            scope,
            max_per_domain: None,
            created_at: Timestamp(1),
        }
    }

    fn at(name: &str, zone: &str, host: Option<&str>) -> (InstanceId, Option<Location>) {
        (
            InstanceId::new(name).unwrap(),
            Some(Location {
                zone: zone.into(),
                host_id: host.map(|h| HostId::new(h).unwrap()),
            }),
        )
    }

    use PlacementPolicy::*;
    use PlacementScope::*;

    #[test]
    fn anti_affinity_by_host_names_the_servers_that_share_one() {
        let r = [rule("spread", AntiAffinity, Host)];
        let p = vec![
            at("db-1", "a", Some("hv-1")),
            at("db-2", "a", Some("hv-1")),
            at("db-3", "a", Some("hv-2")),
        ];
        let v = violations(&r, &p);
        assert_eq!(v.len(), 1);
        assert!(v[0].required);
        assert_eq!(v[0].instances.len(), 2);
        assert!(
            v[0].reason.contains("db-1, db-2 share host hv-1"),
            "{}",
            v[0].reason
        );
        // Two per host allowed: kept.
        let mut two = r[0].clone();
        two.max_per_domain = Some(2);
        assert!(violations(&[two], &p).is_empty());
    }

    #[test]
    fn affinity_wants_one_domain_and_unknown_hosts_break_only_requirements() {
        let p = vec![at("db-1", "a", Some("hv-1")), at("db-2", "b", None)];
        let v = violations(&[rule("together", Affinity, Zone)], &p);
        assert_eq!(v.len(), 1);
        assert!(v[0].reason.contains("not on one zone"), "{}", v[0].reason);
        let v = violations(&[rule("hosts", AntiAffinity, Host)], &p);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].reason.contains("host of db-2 is unknown"),
            "{}",
            v[0].reason
        );
        assert!(violations(&[rule("soft", SoftAntiAffinity, Host)], &p).is_empty());
    }

    #[test]
    fn a_change_is_refused_only_for_a_requirement_it_newly_breaks() {
        let hard = [rule("spread", AntiAffinity, Host)];
        let before = vec![at("db-1", "a", Some("hv-1")), at("db-2", "a", Some("hv-2"))];
        let mut onto_master = before.clone();
        onto_master.push(at("db-3", "a", Some("hv-1")));
        let refused = admit(&hard, &before, &onto_master).unwrap_err();
        assert!(
            refused.to_string().contains("db-1, db-3 share host hv-1"),
            "{refused}"
        );
        let mut elsewhere = before.clone();
        elsewhere.push(at("db-3", "a", Some("hv-3")));
        assert_eq!(admit(&hard, &before, &elsewhere), Ok(vec![]));
        // A preference is allowed and reported.
        let soft = [rule("spread", SoftAntiAffinity, Host)];
        let raised = admit(&soft, &before, &onto_master).unwrap();
        assert_eq!(raised.len(), 1);
        assert!(!raised[0].required);
        // A break that was there before is no reason to refuse what does not add to it.
        let crowded = vec![at("db-1", "a", Some("hv-1")), at("db-2", "a", Some("hv-1"))];
        let mut plus = crowded.clone();
        plus.push(at("db-3", "a", Some("hv-3")));
        assert_eq!(admit(&hard, &crowded, &plus), Ok(vec![]));
    }

    #[test]
    fn rules_that_can_never_hold_together_are_named() {
        let cases = [
            (Affinity, Host, AntiAffinity, Host, true),
            (Affinity, Host, AntiAffinity, Zone, true),
            (Affinity, Zone, AntiAffinity, Zone, true),
            (Affinity, Zone, AntiAffinity, Host, false),
            (SoftAffinity, Host, SoftAntiAffinity, Host, true),
            (Affinity, Host, Affinity, Zone, false),
            (AntiAffinity, Host, AntiAffinity, Zone, false),
        ];
        for (p1, s1, p2, s2, clash) in cases {
            let rules = [rule("one", p1, s1), rule("other", p2, s2)];
            assert_eq!(
                contradiction(&rules).is_some(),
                clash,
                "{p1} by {s1} with {p2} by {s2}"
            );
        }
        // Two per host: a set of two can keep both.
        let mut two = rule("other", AntiAffinity, Host);
        two.max_per_domain = Some(2);
        assert!(contradiction(&[rule("one", Affinity, Host), two]).is_none());
    }

    #[test]
    fn free_servers_are_chosen_by_zone_and_rules_preferences_first() {
        let soft = [rule("spread", SoftAntiAffinity, Host)];
        let set = vec![at("db-1", "a", Some("hv-1"))];
        let free = |n: &str, z: &str, h: &str| {
            let (instance, location) = at(n, z, Some(h));
            Free { instance, location }
        };
        let pool = [
            free("db-4", "a", "hv-1"),
            free("db-5", "b", "hv-9"),
            free("db-6", "a", "hv-2"),
        ];
        let names = |v: Vec<InstanceId>| v.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(choose(&soft, &set, &pool, 1, Some("a")).unwrap()),
            ["db-6"]
        );
        assert_eq!(
            names(choose(&soft, &set, &pool, 2, Some("a")).unwrap()),
            ["db-6", "db-4"],
            "a preference gives way when nothing else is left"
        );
        let hard = [rule("spread", AntiAffinity, Host)];
        let err = choose(&hard, &set, &pool, 2, Some("a")).unwrap_err();
        assert!(err.contains("has 1 of the 2"), "{err}");
        assert!(err.contains("db-4"), "{err}");
        assert!(choose(&hard, &set, &pool, 1, Some("c")).is_err());
        assert_eq!(
            names(choose(&hard, &set, &pool, 2, None).unwrap()),
            ["db-5", "db-6"]
        );
    }

    #[test]
    fn the_server_group_is_the_host_rule_a_requirement_first() {
        let zone = rule("zones", AntiAffinity, Zone);
        let soft = rule("soft-host", SoftAffinity, Host);
        let hard = rule("hard-host", AntiAffinity, Host);
        let g = server_group(&[zone.clone(), soft.clone(), hard]);
        assert_eq!(
            (g.policy, g.scope, g.max_per_domain),
            (AntiAffinity, Host, 1)
        );
        let g = server_group(&[zone.clone(), soft]);
        assert_eq!((g.policy, g.scope), (SoftAffinity, Host));
        let g = server_group(&[zone]);
        assert_eq!((g.policy, g.scope), (AntiAffinity, Zone));
        let g = server_group(&[]);
        assert_eq!((g.policy, g.scope), (SoftAntiAffinity, Host));
    }
}
