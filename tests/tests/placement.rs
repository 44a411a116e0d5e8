//! Zones, hosts, the free pool and placement rules, through the CLI, the conductor and
//! real agents and engines: servers in two zones on four hosts (as their agents'
//! configuration says), rules that refuse or raise, replicas taken from the pool.

use std::time::Duration;

use tandem_api::{ApiEvent, PlacementPolicy, PlacementRule, PlacementScope, PoolEntry, ZonesView};
use tandem_e2e::provisioner::Provisioner;
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

/// The tandem CLI started in the background (it waits on a workflow while the test
/// plays the cloud); its (success, stdout, stderr) once it ends.
fn in_background(c: &Cluster, args: &[&str]) -> std::process::Child {
    c.conductor
        .cli_command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn ended(child: std::process::Child) -> (bool, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An empty pool: the provisioner is asked (with the set's rule as the server group
/// and where its members run); one that fails, and one that names a server that never
/// registers, each end the request saying so with the set unchanged; one that starts
/// a private engine and agent on a new network-namespace host in zone-b makes the
/// replica.
#[test]
fn an_empty_pool_is_filled_by_the_provisioner_and_its_failures_are_named() {
    let provisioner = Provisioner::new();
    let mut options = ClusterOptions::two_zones(true);
    options.conductor_env.extend(provisioner.conductor_env(5));
    let mut c = Cluster::start_with(1, options);
    c.cli_ok(&[
        "rule",
        "create",
        "spread",
        "--policy",
        "anti-affinity",
        "--scope",
        "host",
    ]);
    c.cli_ok(&[
        "set", "create", "s1", "--master", "db-1", "--rule", "spread", "--wait",
    ]);
    c.write_and_see_everywhere("s1", "db-1", 1);
    let wait = Duration::from_secs(30);

    // A provisioner that fails: its reason is the workflow's, and nothing changed.
    let add = in_background(&c, &["replica", "add", "s1", "--count", "1", "--wait"]);
    let asked = provisioner.next(wait);
    let r = &asked.request;
    assert_eq!((r.count, r.zone.as_deref()), (1, None));
    assert_eq!(r.engine, tandem_proto::EngineKind::Mariadb);
    assert_eq!(r.set.as_str(), "s1");
    assert_eq!(
        (r.server_group.policy, r.server_group.scope),
        (PlacementPolicy::AntiAffinity, PlacementScope::Host)
    );
    let db1 = &r.members[0];
    assert_eq!(db1.instance.as_str(), "db-1");
    let at = db1.location.as_ref().expect("db-1's location");
    assert_eq!(
        (at.zone.as_str(), at.host_id.as_ref().map(|h| h.as_str())),
        ("zone-a", Some("hv-1"))
    );
    provisioner.answer(&asked, 4, "", "quota exceeded for project shop");
    let (ok, _, err) = ended(add);
    assert!(
        !ok && err.contains("quota exceeded for project shop"),
        "{err}"
    );
    assert_eq!(members(&c, "s1"), ["db-1"]);

    // One that names a server whose agent never registers: refused after the limit.
    let add = in_background(
        &c,
        &[
            "replica", "add", "s1", "--count", "1", "--zone", "zone-b", "--wait",
        ],
    );
    let asked = provisioner.next(wait);
    assert_eq!(asked.request.zone.as_deref(), Some("zone-b"));
    provisioner.answer(&asked, 0, r#"{"instances": ["db-9"]}"#, "");
    let (ok, _, err) = ended(add);
    assert!(!ok && err.contains("db-9 did not register within"), "{err}");
    assert_eq!(members(&c, "s1"), ["db-1"]);
    assert!(pooled(&c).is_empty());

    // A cloud that serves it: a new host in zone-b, its server seeded and attached.
    let add = in_background(
        &c,
        &[
            "replica", "add", "s1", "--count", "1", "--zone", "zone-b", "--wait",
        ],
    );
    let made = c.serve_provisioner(&provisioner, wait);
    assert_eq!(made, ["db-2"]);
    let (ok, _, err) = ended(add);
    assert!(ok, "{err}\n{}", c.node_logs());
    assert_eq!(members(&c, "s1"), ["db-1", "db-2"]);
    assert!(
        pooled(&c).is_empty(),
        "the new server left the pool for the set"
    );
    let topology = c.cli_ok(&["topology"]);
    assert!(topology.contains("db-2 @zone-b/hv-2"), "{topology}");
    c.write_and_see_everywhere("s1", "db-1", 2);
}

/// `set create --dr` with nothing free in the DR zone: the provisioner starts the DR
/// source there, and the set replicates into it.
#[test]
fn a_dr_set_gets_its_dr_source_from_the_provisioner_when_the_pool_is_empty() {
    let provisioner = Provisioner::new();
    let mut options = ClusterOptions::two_zones(true);
    options.conductor_env.extend(provisioner.conductor_env(30));
    let mut c = Cluster::start_with(1, options);
    let create = in_background(
        &c,
        &[
            "set", "create", "shop", "--master", "db-1", "--dr", "a-to-b", "--wait",
        ],
    );
    let made = c.serve_provisioner(&provisioner, Duration::from_secs(30));
    assert_eq!(made, ["db-2"]);
    let (ok, _, err) = ended(create);
    assert!(ok, "{err}\n{}", c.node_logs());
    let view = c.set("shop");
    let dr = view.dr.as_ref().expect("a DR set");
    assert_eq!(dr.dr_source.as_ref().map(|i| i.as_str()), Some("db-2"));
    assert_eq!(dr.settings.dr.as_str(), "zone-b");
    c.write_and_see_everywhere("shop", "db-1", 1);
}
