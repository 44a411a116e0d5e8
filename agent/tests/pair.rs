//! The agent's side of a master-master pair, end to end through its commands: each side
//! configured with its own write stream and key offset (kept across an engine
//! restart), the writable side attached to its passive peer and still the master, the
//! passive side's account for that written nowhere else, and the active side switched.

mod common;
use common::*;
use tandem_proto::{GtidSet, Position};

fn domain_and_offset(h: &Harness, name: &str) -> String {
    h.node(name)
        .db
        .sql("SELECT @@gtid_domain_id, @@auto_increment_increment, @@auto_increment_offset")
        .unwrap()
}

#[tokio::test]
async fn a_pair_is_configured_attached_both_ways_and_switched_by_commands() {
    let h = Harness::new(&["db-1", "db-2"]).await;
    h.attach("db-1", "db-2", 1).await;
    for (name, side) in [("db-1", PairSide::First), ("db-2", PairSide::Second)] {
        h.ok(name, 1, Command::ConfigurePair { side: Some(side) })
            .await;
    }
    assert_eq!(domain_and_offset(&h, "db-1"), "1\t2\t1");
    assert_eq!(domain_and_offset(&h, "db-2"), "2\t2\t2");

    // The master's own writes (its heartbeats) go to its new write stream at once,
    // whichever of the agent's pooled connections they take: none stays in domain 0.
    let stream = |domain: u32| -> Option<String> {
        let pos = h.node("db-1").db.sql("SELECT @@gtid_binlog_pos").ok()?;
        pos.split(',')
            .find(|g| g.starts_with(&format!("{domain}-")))
            .map(str::to_string)
    };
    let zero = stream(0);
    eventually(
        Duration::from_secs(10),
        "a heartbeat in domain 1",
        async || stream(1),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stream(0), zero, "an agent write landed in domain 0");

    // Only the master attaches as the writable side.
    let credentials = match h
        .ok(
            "db-2",
            1,
            Command::CreateReplicationUser {
                replica: id("db-1"),
                from: None,
                seal_to: h.key_of("db-1"),
            },
        )
        .await
    {
        ReplyBody::Credentials { credentials } => credentials,
        other => panic!("{other:?}"),
    };
    let reverse = |target: &str, peer: bool| Command::AttachToSource {
        source: h.endpoint(if target == "db-1" { "db-2" } else { "db-1" }),
        credentials: credentials.clone(),
        position: None,
        semi_sync: false,
        delay_s: 0,
        paused: None,
        filter: None,
        peer,
    };
    let refused = h.cmd("db-2", 1, reverse("db-2", true)).await.unwrap_err();
    assert!(refused.message.contains("only the master"), "{refused:?}");
    h.ok("db-1", 1, reverse("db-1", true)).await;

    // The passive side wrote nothing of its own: its account for the reverse channel
    // is in no binary log.
    let passive_pos = h.node("db-2").db.sql("SELECT @@gtid_binlog_pos").unwrap();
    assert!(!passive_pos.contains("2-"), "{passive_pos}");

    let active = h.status("db-1").await;
    assert_eq!(active.role, Role::Master);
    assert_eq!(active.writable, Some(true));
    assert_eq!(active.replicates_from, Some(id("db-2")));
    assert_eq!(active.pair_side, Some(PairSide::First));
    let passive = h.status("db-2").await;
    assert_eq!(passive.role, Role::Replica);
    assert_eq!(passive.replicates_from, Some(id("db-1")));
    assert_eq!(passive.replicates_to, vec![id("db-1")]);

    // The switch, as the conductor sends it (protocol v5): writes stop on the active
    // side, answered with its position; the passive side catches up and takes them.
    let db1 = &h.node("db-1").db;
    db1.sql("CREATE DATABASE app; CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY); INSERT INTO app.t VALUES (NULL)")
        .unwrap();
    let position = match h.ok("db-1", 2, Command::StopWrites).await {
        ReplyBody::Position { position } => position,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.status("db-1").await.writable, Some(false));
    let take_over = |position: &Position| Command::TakeOverWrites {
        position: position.clone(),
        timeout_ms: 10_000,
    };
    match h.ok("db-2", 2, take_over(&position)).await {
        // It became writable holding everything db-1 wrote, and nothing more.
        ReplyBody::Position { position: reached } => assert_eq!(reached, position),
        other => panic!("{other:?}"),
    }
    let db2 = &h.node("db-2").db;
    db2.sql("INSERT INTO app.t VALUES (NULL)").unwrap();
    eventually(Duration::from_secs(10), "db-2's row on db-1", async || {
        (db1.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM app.t")
            .ok()?
            == "1,2")
            .then_some(())
    })
    .await;
    assert!(db2.sql("SELECT @@gtid_binlog_pos").unwrap().contains("2-"));
    let passive = h.status("db-2").await;
    assert_eq!(passive.writable, Some(true));
    assert!(passive
        .replication
        .is_some_and(|r| r.receiving && r.applying && r.diverged.is_none()));

    // Handed a position older than what it holds (db-2's row came over the reverse
    // channel), db-1 refuses to take the writes and stays read-only.
    eventually(
        Duration::from_secs(10),
        "db-2's row applied on db-1",
        async || {
            db1.sql("SELECT @@gtid_binlog_pos")
                .ok()?
                .contains("2-")
                .then_some(())
        },
    )
    .await;
    let refused = h.cmd("db-1", 3, take_over(&position)).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Diverged, "{refused:?}");
    assert!(refused.message.contains("errant"), "{refused:?}");
    assert_eq!(db1.sql("SELECT @@read_only").unwrap(), "1");
    assert_eq!(h.status("db-1").await.writable, Some(false));

    // And back, with db-2's position.
    let back = match h.ok("db-2", 3, Command::StopWrites).await {
        ReplyBody::Position { position } => position,
        other => panic!("{other:?}"),
    };
    h.ok("db-1", 3, take_over(&back)).await;
    assert_eq!(h.status("db-1").await.writable, Some(true));
    assert_eq!(h.status("db-2").await.writable, Some(false));
}

#[tokio::test]
async fn a_pair_side_survives_an_engine_restart_and_leaving_the_pair_restores_the_defaults() {
    let mut h = Harness::new(&["db-1"]).await;
    h.ok(
        "db-1",
        1,
        Command::ConfigurePair {
            side: Some(PairSide::Second),
        },
    )
    .await;
    h.node_mut("db-1").db.kill();
    h.node_mut("db-1").db.restart().unwrap();
    eventually(
        Duration::from_secs(30),
        "the side applied again",
        async || (domain_and_offset(&h, "db-1") == "2\t2\t2").then_some(()),
    )
    .await;
    h.ok("db-1", 1, Command::ConfigurePair { side: None }).await;
    assert_eq!(domain_and_offset(&h, "db-1"), "0\t1\t1");
    assert_eq!(h.status("db-1").await.pair_side, None);

    // Outside a pair, nothing takes over writes while it replicates.
    h.ok("db-1", 2, Command::SetReadOnly).await;
    let refused = h
        .cmd(
            "db-1",
            2,
            Command::TakeOverWrites {
                position: Position::Gtid(GtidSet::empty()),
                timeout_ms: 1_000,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::BadRequest, "{refused:?}");
    assert!(
        refused.message.contains("master-master pair"),
        "{refused:?}"
    );
    assert_eq!(h.node("db-1").db.sql("SELECT @@read_only").unwrap(), "1");
}
