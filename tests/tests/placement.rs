//! Zones, hosts, the free pool and placement rules, through the CLI, the conductor and
//! real agents and engines: servers in two zones on four hosts (as their agents'
//! configuration says), rules that refuse or raise, replicas taken from the pool.

use std::time::Duration;

use tandem_api::{ApiEvent, PlacementRule, PoolEntry, ZonesView};
use tandem_e2e::{eventually, Cluster, ClusterOptions, EventFollower};

/// db-1 and db-2 share host hv-1 in zone-a, db-3 is on hv-2 in zone-a; db-4 and db-5
/// are in zone-b on hv-3 and hv-4. Two zones and a DR profile are configured.
fn two_zones() -> Cluster {
    let at = |z: &str, h: &str| (z.to_string(), Some(h.to_string()));
    Cluster::start_with(
        5,
        ClusterOptions {
            locations: vec![
                at("zone-a", "hv-1"),
                at("zone-a", "hv-1"),
                at("zone-a", "hv-2"),
                at("zone-b", "hv-3"),
                at("zone-b", "hv-4"),
            ],
            conductor_env: vec![
                (
                    "TANDEM_CONDUCTOR_ZONES".into(),
                    r#"[{name="zone-a", description="room 1"},{name="zone-b"}]"#.into(),
                ),
                (
                    "TANDEM_CONDUCTOR_DR_PROFILES".into(),
                    r#"[{name="a-to-b", primary="zone-a", dr="zone-b"}]"#.into(),
                ),
            ],
            ..ClusterOptions::read_only_at_start()
        },
    )
}

fn refused(c: &Cluster, args: &[&str], said: &str) {
    let (ok, _, err) = c.cli(args);
    assert!(!ok, "{args:?} should be refused");
    assert!(err.contains(said), "{args:?}: {err}");
}

fn members(c: &Cluster, set: &str) -> Vec<String> {
    let mut m: Vec<String> = c
        .set(set)
        .members
        .iter()
        .map(|m| m.instance.to_string())
        .collect();
    m.sort();
    m
}

fn pooled(c: &Cluster) -> Vec<String> {
    let pool: Vec<PoolEntry> = c.cli_json(&["instance", "pool", "list"]);
    pool.iter().map(|p| p.instance.to_string()).collect()
}

#[test]
fn required_rules_refuse_pool_servers_that_break_them_and_place_those_that_keep_them() {
    let c = two_zones();

    // Zones: both configured, with the hosts their servers reported; the DR profile.
    let zones: ZonesView = c.cli_json(&["zone", "list"]);
    let a = zones.zones.iter().find(|z| z.zone == "zone-a").unwrap();
    assert!(a.configured && a.instances == 3, "{a:?}");
    let hosts: Vec<&str> = a.hosts.iter().map(|h| h.as_str()).collect();
    assert_eq!(hosts, ["hv-1", "hv-2"]);
    assert_eq!(a.description.as_deref(), Some("room 1"));
    assert_eq!(zones.dr_profiles[0].name, "a-to-b");
    assert_eq!(zones.dr_profiles[0].dr.as_str(), "zone-b");

    // Rules; two that contradict each other are refused together.
    let spread: PlacementRule = c.cli_json(&[
        "rule",
        "create",
        "spread",
        "--policy",
        "anti-affinity",
        "--scope",
        "host",
    ]);
    let together: PlacementRule = c.cli_json(&[
        "rule", "create", "together", "--policy", "affinity", "--scope", "host",
    ]);
    refused(
        &c,
        &[
            "set",
            "create",
            "s1",
            "--master",
            "db-1",
            "--rule",
            "spread",
            "--rule",
            together.id.as_str(),
        ],
        "no set of two servers can keep both",
    );
    refused(
        &c,
        &["set", "create", "s1", "--master", "db-1", "--rule", "nope"],
        "no placement rule \"nope\"",
    );
    refused(
        &c,
        &[
            "rule",
            "create",
            "bad",
            "--policy",
            "affinity",
            "--max-per-host",
            "2",
        ],
        "goes with an anti-affinity policy",
    );
    refused(
        &c,
        &["rule", "create", "spread", "--policy", "soft-affinity"],
        "exists already",
    );
    assert!(c.api().sets().unwrap().is_empty(), "nothing was created");

    c.cli_ok(&[
        "set",
        "create",
        "s1",
        "--master",
        "db-1",
        "--rule",
        spread.id.as_str(),
        "--wait",
    ]);
    let view = c.set("s1");
    assert_eq!(view.rules.len(), 1);
    assert_eq!(view.rules[0].name, "spread");
    assert!(view.violations.is_empty(), "{:?}", view.violations);

    // A replica on the master's host breaks the requirement: refused, nothing changes.
    refused(
        &c,
        &["replica", "add", "s1", "db-2"],
        "db-1, db-2 share host hv-1",
    );
    assert_eq!(members(&c, "s1"), ["db-1"]);
    assert_eq!(
        c.db("db-2").sql("SHOW SLAVE STATUS").unwrap().trim(),
        "",
        "db-2 was never attached"
    );
    refused(&c, &["rule", "delete", "spread"], "kept by set(s) s1");

    // The pool: servers in no set; a member is refused.
    c.cli_ok(&["instance", "pool", "add", "db-2", "db-3", "db-4", "db-5"]);
    refused(
        &c,
        &["instance", "pool", "add", "db-1"],
        "member of replica set s1",
    );
    refused(&c, &["instance", "pool", "add", "db-9"], "db-9");
    assert_eq!(pooled(&c), ["db-2", "db-3", "db-4", "db-5"]);

    // One from zone-a: db-2 shares the master's host, so db-3 is taken and seeded.
    c.write_and_see_everywhere("s1", "db-1", 1);
    c.cli_ok(&[
        "replica", "add", "s1", "--count", "1", "--zone", "zone-a", "--seed", "stream", "--wait",
    ]);
    assert_eq!(members(&c, "s1"), ["db-1", "db-3"]);
    assert_eq!(c.converged("s1"), "db-1");
    c.write_and_see_everywhere("s1", "db-1", 2);
    assert_eq!(
        pooled(&c),
        ["db-2", "db-4", "db-5"],
        "a server in a set leaves the pool"
    );

    // Nothing more in zone-a keeps the rule; wrong input is named.
    refused(
        &c,
        &["replica", "add", "s1", "--count", "1", "--zone", "zone-a"],
        "the pool has 0 of the 1",
    );
    refused(
        &c,
        &["replica", "add", "s1", "--count", "1", "--zone", "zone-z"],
        "no zone \"zone-z\"",
    );
    refused(
        &c,
        &["replica", "add", "s1", "--count", "1", "--seed", "none"],
        "give a seed method",
    );
    assert_eq!(members(&c, "s1"), ["db-1", "db-3"]);

    // The topology shows where each server runs and the rule it keeps.
    let topology = c.cli_ok(&["topology"]);
    assert!(topology.contains("db-3 @zone-a/hv-2"), "{topology}");
    assert!(
        topology.contains("placement spread (anti-affinity by host)"),
        "{topology}"
    );

    // Off the set, then deleted.
    c.cli_ok(&["rule", "remove", "s1", "spread"]);
    c.cli_ok(&["rule", "delete", "spread"]);
    let rules: Vec<PlacementRule> = c.cli_json(&["rule", "list"]);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(c.set("s1").rules[0].name, "default");
}

#[test]
fn a_preferred_rule_is_allowed_raises_a_violation_and_clears_when_it_holds_again() {
    let c = two_zones();
    let events = EventFollower::start(&c);
    c.cli_ok(&[
        "rule",
        "create",
        "zones-apart",
        "--policy",
        "soft-anti-affinity",
        "--scope",
        "zone",
    ]);
    c.cli_ok(&[
        "set",
        "create",
        "s2",
        "--master",
        "db-4",
        "--rule",
        "zones-apart",
        "--wait",
    ]);
    // db-5 is in db-4's zone: allowed (a preference), raised, shown.
    c.cli_ok(&["replica", "add", "s2", "db-5", "--wait"]);
    assert_eq!(c.converged("s2"), "db-4");
    let view = eventually(Duration::from_secs(10), "the violation shown", || {
        let v = c.set("s2");
        (!v.violations.is_empty()).then_some(v)
    });
    assert!(!view.violations[0].required);
    assert!(
        view.violations[0]
            .reason
            .contains("db-4, db-5 share zone zone-b"),
        "{:?}",
        view.violations
    );
    // The watch looks every second: let it see the violation before it goes.
    std::thread::sleep(Duration::from_millis(1500));
    let topology = c.cli_ok(&["topology"]);
    assert!(
        topology.contains("violated zones-apart: db-4, db-5 share zone zone-b"),
        "{topology}"
    );

    // A third in the other zone changes nothing of it; detaching db-5 restores it.
    c.cli_ok(&["replica", "add", "s2", "db-3", "--wait"]);
    assert_eq!(c.set("s2").violations.len(), 1);
    c.cli_ok(&["replica", "detach", "s2", "db-5", "--wait"]);
    eventually(Duration::from_secs(10), "the violation gone", || {
        c.set("s2").violations.is_empty().then_some(())
    });
    // Give the watch its second to say so.
    std::thread::sleep(Duration::from_millis(1500));
    let seen = events.stop();
    let raised = seen.iter().position(|e| {
        matches!(e, ApiEvent::PlacementViolation { set, violations, .. }
            if set.as_str() == "s2" && violations.iter().any(|v| v.rule_name == "zones-apart"))
    });
    let restored = seen
        .iter()
        .position(|e| matches!(e, ApiEvent::PlacementRestored { set, .. } if set.as_str() == "s2"));
    assert!(raised.is_some(), "no placement_violation event: {seen:?}");
    assert!(
        restored > raised,
        "no placement_restored after it: {seen:?}"
    );
}

#[test]
fn the_master_is_rebuilt_from_a_replica_through_a_backup_in_swift() {
    let swift = tandem_testkit::Swift::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let at = |h: &str| ("zone-a".to_string(), Some(h.to_string()));
    let c = Cluster::start_with(
        3,
        ClusterOptions {
            locations: vec![at("hv-1"), at("hv-2"), at("hv-3")],
            agent_env: swift.agent_env(keys.path()).unwrap(),
            ..ClusterOptions::read_only_at_start()
        },
    );
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.write_and_see_everywhere("s1", "db-1", 1);
    c.cli_ok(&["instance", "pool", "add", "db-3"]);

    refused(
        &c,
        &["set", "rebuild-master", "s1", "--from", "db-1"],
        "rebuilt from one of its replicas",
    );
    refused(
        &c,
        &["set", "rebuild-master", "s1", "--from", "db-9"],
        "not a member of set s1",
    );
    refused(
        &c,
        &[
            "set",
            "rebuild-master",
            "s1",
            "--from",
            "db-2",
            "--zone",
            "zone-b",
        ],
        "no zone \"zone-b\"",
    );
    assert_eq!(members(&c, "s1"), ["db-1", "db-2"]);

    c.cli_ok(&[
        "set",
        "rebuild-master",
        "s1",
        "--from",
        "db-2",
        "--via",
        "backup",
        "--wait",
    ]);
    let view = c.set("s1");
    assert_eq!(
        view.master.as_str(),
        "db-3",
        "the fresh server is the master"
    );
    assert_eq!(c.converged("s1"), "db-3");
    // The copy went through a full backup of db-2, stored in Swift.
    let backups = c.api().backups(None).unwrap();
    let of_db2 = backups
        .backups
        .iter()
        .find(|b| b.instance.as_str() == "db-2")
        .expect("a backup of db-2 recorded");
    // The agents' store path is the prefix of their objects in the container.
    let prefix = c.backups.path().display().to_string();
    let prefix = prefix.trim_start_matches('/');
    for object in [
        format!("{prefix}/{}.json", of_db2.backup_id),
        format!("{prefix}/{}.xb.zst", of_db2.backup_id),
    ] {
        assert!(swift.get(&object).unwrap().is_some(), "{object} in Swift");
    }
    // Everything written before is on the new master, and it takes writes.
    c.write_and_see_everywhere("s1", "db-3", 2);
}
