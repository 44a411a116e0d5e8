//! Exactly one acting conductor: a second conductor started on the same store stands by
//! (no API, no broker connection, nothing sent) until the first is gone, then takes
//! over and carries on. Real binaries, a real MariaDB and agent, the real broker.

use std::time::Duration;

use tandem_e2e::{eventually, Cluster};

#[test]
fn a_second_conductor_on_the_same_store_stands_by_and_takes_over_when_the_first_is_gone() {
    let mut c = Cluster::start(2);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    eventually(
        Duration::from_secs(10),
        "the conductor's connection",
        || (c.conductors_connected() == 1).then_some(()),
    );

    let mut second = c.standby();
    // The acting one still works.
    c.cli_ok(&["ping", "db-1"]);

    // The first dies; the second takes over and acts.
    c.conductor.kill();
    second.wait_serving(Duration::from_secs(20)).unwrap();
    assert!(second.log().contains("takes over"), "{}", second.log());
    eventually(
        Duration::from_secs(20),
        "the agents heard by the second",
        || {
            let (ok, out, _) = second.cli(&["status"]);
            (ok && out.contains("db-1") && out.contains("db-2")).then_some(())
        },
    );
    let (ok, _, err) = second.cli(&["replica", "add", "s1", "db-2", "--wait"]);
    assert!(ok, "{err}\n{}", second.log());
    let (ok, out, _) = second.cli(&["--json", "set", "list"]);
    assert!(ok && out.contains("\"db-2\""), "{out}");
    eventually(Duration::from_secs(10), "one conductor connected", || {
        (c.conductors_connected() == 1).then_some(())
    });
}
