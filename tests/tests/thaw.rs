//! A frozen master host (engine and agent stopped, as a paused VM) is replaced, and when
//! it thaws it never answers a client as writable next to the new master: the
//! conductor's fence command cut the host off the network before anyone was promoted.
//! Trial after trial on three real MariaDB servers, each on a host of its own (network
//! namespaces), with the writer and an observer that samples every 10 ms as an ordinary
//! and as a privileged account.

use std::time::{Duration, Instant};

use tandem_api::IntendedRole;
use tandem_e2e::load::{Observer, Writer};
use tandem_e2e::promise::{
    assert_all_acknowledged_on, assert_never_two_writable, failed_over, member, three,
};
use tandem_e2e::{eventually, ClusterOptions};
use tandem_proto::SemiSync;

const TRIALS: usize = 10;

#[test]
fn a_frozen_master_is_fenced_by_the_operator_command_and_thaws_unreachable_trial_after_trial() {
    let mut options = ClusterOptions::read_only_at_start();
    options.isolated = vec!["db-1".into(), "db-2".into(), "db-3".into()];
    options.fence_by_cut = true;
    // Trial after trial: no anti-flapping hold between them.
    options.conductor_env = vec![(
        "TANDEM_CONDUCTOR_FAILOVER__FLAP_WINDOW_S".into(),
        "0".into(),
    )];
    let mut c = three(true, options);
    let observer = Observer::every(c.addresses(), Duration::from_millis(10));
    let writer = Writer::start(c.addresses(), Duration::from_millis(10));

    let mut events: Vec<(Instant, String)> = Vec::new();
    for trial in 1..=TRIALS {
        let old = c.converged("s1");
        eventually(Duration::from_secs(20), "semi-sync active", || {
            (member(&c.set("s1"), &old).semi_sync == Some(SemiSync::Active)).then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
        // The whole host freezes: engine and agent.
        let frozen = Instant::now();
        events.push((frozen, format!("trial {trial} freeze {old}")));
        let node = c.node_mut(&old);
        node.db.pause().unwrap();
        node.agent.pause().unwrap();
        let new = failed_over(&c, &old, Duration::from_secs(20));
        let index = c.nodes.iter().position(|n| n.name == new).unwrap();
        let first = eventually(Duration::from_secs(10), "a write on the new master", || {
            writer.first_ack_on_after(index, frozen)
        });
        events.push((Instant::now(), format!("trial {trial} {new} promoted")));
        assert_eq!(
            c.fenced().len(),
            trial,
            "the old master's host was not fenced before {new} was promoted: {:?}",
            c.fenced()
        );
        eprintln!(
            "trial {trial}: {old} frozen, {new} took writes {} ms later",
            (first.at - frozen).as_millis()
        );

        // It thaws, and its agent is the last to be scheduled: for 300 ms the engine
        // answers clients as the writable master it was, but nobody reaches it any more.
        // What the network says of the fenced host, for a failure message.
        let link = std::process::Command::new("ip")
            .args(["-br", "link", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let old_ip = c.node_mut(&old).host.as_ref().unwrap().ip.clone();
        let route = std::process::Command::new("ip")
            .args(["route", "get", &old_ip])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        events.push((
            Instant::now(),
            format!(
                "trial {trial} links: {} | route to {old_ip}: {}",
                link.lines()
                    .filter(|l| l.starts_with("tdm"))
                    .collect::<Vec<_>>()
                    .join("; "),
                route.trim()
            ),
        ));
        let node = c.node_mut(&old);
        node.db.resume().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        node.agent.resume().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Unfenced as the README says: once the engine is read-only (its agent fenced
        // it at thaw, its lease long gone), asked over the socket the cut leaves alone.
        eventually(
            Duration::from_secs(10),
            "the thawed engine read-only",
            || (c.db(&old).sql("SELECT @@read_only").ok()? == "1").then_some(()),
        );
        events.push((Instant::now(), format!("trial {trial} heal {old}")));
        c.node_mut(&old).host.as_ref().unwrap().heal().unwrap();
        let role = eventually(Duration::from_secs(60), "the old master back", || {
            let role = member(&c.set("s1"), &old).intended.role;
            matches!(role, IntendedRole::Replica | IntendedRole::Quarantined).then_some(role)
        });
        if role == IntendedRole::Quarantined {
            // A commit in flight when it froze (never acknowledged) is errant.
            // (once the quarantine workflow has ended)
            eventually(Duration::from_secs(30), "the re-seed to start", || {
                let (ok, _, err) =
                    c.cli(&["replica", "add", "s1", &old, "--seed", "stream", "--wait"]);
                assert!(ok || err.contains("active workflow"), "{err}");
                ok.then_some(())
            });
        }
        assert_eq!(c.db(&old).sql("SELECT @@read_only").unwrap(), "1");
    }

    let master = c.converged("s1");
    std::thread::sleep(Duration::from_millis(300));
    let (_, acked) = writer.finish();
    let samples = observer.finish();
    let doubles = samples
        .iter()
        .filter(|(_, w)| w.iter().filter(|x| **x).count() > 1)
        .count();
    eprintln!(
        "{TRIALS} freezes: {} observer samples, {doubles} with two writable servers, {} acknowledged writes",
        samples.len(),
        acked.len()
    );
    if doubles > 0 {
        for (at, what) in &events {
            eprintln!("{:>8} ms {what}", (*at - events[0].0).as_millis());
        }
        for (at, w) in samples
            .iter()
            .filter(|(_, w)| w.iter().filter(|x| **x).count() > 1)
        {
            eprintln!("{:>8} ms double {w:?}", (*at - events[0].0).as_millis());
        }
        eprintln!("fenced: {:?}", c.fenced());
        for line in c.conductor.log().lines().filter(|l| {
            l.contains("fence") || l.contains("workflow started") || l.contains("promot")
        }) {
            eprintln!("{line}");
        }
    }
    assert_never_two_writable(&samples);
    assert_all_acknowledged_on(&c, &master, &acked);
}
