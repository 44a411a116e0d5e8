//! The conductor killed at any step of a switchover finishes it or rolls it back after a
//! restart, with no manual reset: proved for every step and every crash point.

use std::time::{Duration, Instant};

use tandem_e2e::Cluster;

const FAILPOINT: &str = "TANDEM_CONDUCTOR_FAILPOINT";

/// The newest switchover's state line, if the conductor answers.
fn newest_switchover(c: &Cluster) -> Option<String> {
    let (ok, out, _) = c.cli(&["workflow", "list"]);
    if !ok {
        return None;
    }
    out.lines()
        .find(|l| l.contains("switchover"))
        .map(str::to_owned)
}

#[test]
fn a_conductor_killed_at_any_step_of_a_switchover_finishes_or_rolls_back_after_restart() {
    let mut c = Cluster::start(3);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-3", "--wait"]);
    let mut master = c.converged("s1");
    let mut row = 0;
    let mut crashed_at = Vec::new();

    'steps: for seq in 0.. {
        for point in ["before", "sent", "after"] {
            let candidate = if master == "db-2" { "db-3" } else { "db-2" };
            c.conductor.stop();
            c.conductor
                .set_env(FAILPOINT, Some(&format!("switchover:{seq}:{point}")));
            c.conductor.start_again().unwrap();
            c.cli_ok(&["promote", "s1", candidate]);

            // Either the conductor dies at the failpoint, or the switchover ends first
            // (the workflow has fewer steps than `seq`).
            let deadline = Instant::now() + Duration::from_secs(60);
            let crashed = loop {
                if let Some(status) = c.conductor.wait_exit(Duration::from_millis(100)) {
                    assert_eq!(
                        status.code(),
                        Some(86),
                        "the conductor died of something else"
                    );
                    break true;
                }
                if newest_switchover(&c).is_some_and(|l| !l.contains(" running")) {
                    break false;
                }
                assert!(
                    Instant::now() < deadline,
                    "switchover {seq}:{point} neither crashed nor ended"
                );
            };

            c.conductor.set_env(FAILPOINT, None);
            if crashed {
                crashed_at.push(format!("{seq}:{point}"));
                c.conductor.start_again().unwrap();
            }
            let line = tandem_e2e::eventually(
                Duration::from_secs(60),
                "the resumed switchover to end",
                || {
                    newest_switchover(&c)
                        .filter(|l| !l.contains(" running") && !l.contains(" rolling_back"))
                },
            );
            assert!(
                line.contains(" done") || line.contains(" rolled_back"),
                "after a crash at {seq}:{point}: {line}\n{}",
                tandem_e2e::tail(&c.conductor.log(), 30)
            );
            master = c.converged("s1");
            if line.contains(" done") {
                assert_eq!(master, candidate, "{line}");
            }
            row += 1;
            c.write_and_see_everywhere("s1", &master, row);
            if !crashed {
                break 'steps;
            }
        }
    }
    // Steps: the direct replicas (a journaled decision), read-only, position, catch-up,
    // record, detach, enable, two re-points (user + attach each) and demote: at least
    // ten steps, each crashed at three points.
    assert!(
        crashed_at.len() >= 30,
        "crash points covered: {crashed_at:?}"
    );
    // Every row written between crashes is on every member: nothing was lost.
    for node in ["db-1", "db-2", "db-3"] {
        assert_eq!(
            c.db(node).sql("SELECT COUNT(*) FROM app.t").unwrap(),
            row.to_string()
        );
    }
}
