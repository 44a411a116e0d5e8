//! The agent binary against real `mariadbd` instances and the real broker. A test plays
//! the conductor: it sends commands through the transport and reads replies and reports.
//! One cohesive thing, hence its length: the agent's command contract end to end (each
//! test one behaviour of dispatch on a real server); the `Engine` trait alone is tested
//! by the engine suite (`engine_suite/`).

mod common;
use common::*;

#[tokio::test]
async fn attach_replicates_and_the_contract_is_reported_then_detach_makes_it_standalone() {
    let h = Harness::new(&["db-1", "db-2"]).await;
    h.attach("db-1", "db-2", 1).await;

    let master = &h.node("db-1").db;
    master
        .sql(
            "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT); \
              INSERT INTO app.t VALUES (1,'a'),(2,'b'),(3,'c')",
        )
        .unwrap();
    let replica = &h.node("db-2").db;
    eventually(Duration::from_secs(10), "rows on the replica", async || {
        (replica.sql("SELECT count(*) FROM app.t").ok()? == "3").then_some(())
    })
    .await;

    // Both status reports tell the replication contract the engines hold.
    let (m, r) = eventually(Duration::from_secs(5), "matching positions", async || {
        let m = h.status("db-1").await;
        let r = h.status("db-2").await;
        (m.position == r.position && m.replicates_to == vec![id("db-2")]).then_some((m, r))
    })
    .await;
    assert_eq!(
        (m.role, m.writable, m.replicates_from.clone()),
        (Role::Master, Some(true), None)
    );
    assert_eq!(m.health, Health::Healthy);
    assert_eq!(
        (
            r.role,
            r.writable,
            r.replicates_from.clone(),
            r.replicates_to.clone()
        ),
        (Role::Replica, Some(false), Some(id("db-1")), vec![])
    );
    assert_eq!(r.health, Health::Healthy, "{:?}", r.last_error);
    // The report's position is the engine's (read again until no heartbeat lands
    // between the two reads).
    eventually(
        Duration::from_secs(5),
        "the master's reported position",
        async || {
            let reported = h.status("db-1").await.position?;
            let engine = master.sql("SELECT @@gtid_current_pos").ok()?;
            (reported == tandem_proto::Position::Gtid(engine.parse().ok()?)).then_some(())
        },
    )
    .await;
    let rep = r.replication.unwrap();
    assert!(rep.receiving && rep.applying);
    assert_eq!(
        r.engine_version.as_deref().map(|v| v.contains("MariaDB")),
        Some(true)
    );
    assert_eq!(m.highest_epoch, Epoch::new(1));

    // A write on the replica by an ordinary user is refused.
    master
        .sql("CREATE USER app@'%' IDENTIFIED BY 'apppw'; GRANT ALL ON app.* TO app@'%'")
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the app user on the replica",
        async || {
            (replica
                .sql("SELECT count(*) FROM mysql.user WHERE user='app'")
                .ok()?
                == "1")
                .then_some(())
        },
    )
    .await;
    let out = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-h127.0.0.1", "-uapp", "-papppw"])
        .arg(format!("-P{}", replica.port()))
        .args(["-e", "INSERT INTO app.t VALUES (9,'x')"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the replica accepted a write");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Detach: the master drops the replica's account, the replica becomes standalone.
    h.ok(
        "db-1",
        2,
        Command::DropReplicationUser {
            replica: id("db-2"),
        },
    )
    .await;
    h.ok("db-2", 2, Command::Detach).await;
    let r = h.status("db-2").await;
    assert_eq!(
        (r.role, r.writable, r.replicates_from),
        (Role::Standalone, Some(true), None)
    );
    replica.sql("INSERT INTO app.t VALUES (4,'d')").unwrap();
    for db in [master, replica] {
        assert_eq!(
            db.sql("SELECT count(*) FROM mysql.user WHERE user='tandem_repl_db-2'")
                .unwrap(),
            "0"
        );
    }
    assert_eq!(replica.sql("SHOW SLAVE STATUS").unwrap(), "");
    let m = h.status("db-1").await;
    assert!(m.replicates_to.is_empty(), "{:?}", m.replicates_to);

    // The managed configuration include was written, with durable settings.
    let cnf = std::fs::read_to_string(h.node("db-1").agent.managed_config_path()).unwrap();
    assert!(
        cnf.contains("sync_binlog = 1") && cnf.contains("read_only = 1"),
        "{cnf}"
    );
}

#[tokio::test]
async fn lag_comes_from_the_heartbeat_table_while_the_sql_thread_is_stopped() {
    let h = Harness::new(&["db-1", "db-2"]).await;
    h.attach("db-1", "db-2", 1).await;
    let replica = &h.node("db-2").db;
    eventually(
        Duration::from_secs(10),
        "the first heartbeat on the replica",
        async || {
            replica
                .sql("SELECT count(*) FROM tandem.heartbeat")
                .ok()
                .filter(|c| c == "1")
        },
    )
    .await;
    replica.sql("STOP SLAVE SQL_THREAD").unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    let report = h.status("db-2").await;
    let truth: f64 = replica
        .sql("SELECT TIMESTAMPDIFF(MICROSECOND, ts, UTC_TIMESTAMP(6)) / 1e6 FROM tandem.heartbeat")
        .unwrap()
        .parse()
        .unwrap();
    let lag = report.lag.expect("a lag figure");
    assert_eq!(lag.source, tandem_proto::LagSource::HeartbeatTable);
    assert!(
        lag.seconds >= 3.5,
        "the applier stopped 4 s ago, lag says {}",
        lag.seconds
    );
    assert!(
        (lag.seconds - truth).abs() <= 1.0,
        "reported {} vs heartbeat truth {truth}",
        lag.seconds
    );
    assert_eq!(report.health, Health::Degraded);
    let rep = report.replication.unwrap();
    assert!(rep.receiving && !rep.applying);

    replica.sql("START SLAVE SQL_THREAD").unwrap();
    let caught_up = eventually(Duration::from_secs(10), "lag to fall", async || {
        let r = h.status("db-2").await;
        r.lag.as_ref().is_some_and(|l| l.seconds < 1.5).then_some(r)
    })
    .await;
    assert_eq!(caught_up.health, Health::Healthy);
}

#[tokio::test]
async fn a_command_from_a_replaced_conductors_term_is_fenced_at_any_epoch() {
    let mut h = Harness::new(&["db-1"]).await;
    let in_term = |term: u64, command: Command| tandem_proto::Envelope {
        term: Some(tandem_proto::Term::new(term)),
        ..envelope("db-1", Epoch::new(5), command)
    };
    h.send(&in_term(3, Command::EnableAsMaster { semi_sync: None }))
        .await
        .unwrap();
    h.send(&in_term(3, Command::SetWritable)).await.unwrap();
    // The conductor was replaced (term 4) and sent something at the same epoch.
    h.send(&in_term(4, Command::SetWritable)).await.unwrap();

    // The replaced one, thawed, sends at the current epoch: refused, nothing changes.
    let err = h.send(&in_term(3, Command::SetReadOnly)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Fenced);
    assert!(
        err.message.contains("term t3") && err.message.contains("t4"),
        "{}",
        err.message
    );
    assert_eq!(h.node("db-1").db.sql("SELECT @@read_only").unwrap(), "0");

    // The highest term is on disk: also after a restart.
    let agent = &mut h.node_mut("db-1").agent;
    assert!(agent.stop().unwrap().success());
    agent.start().unwrap();
    h.wait_ready("db-1").await;
    let err = h.send(&in_term(3, Command::SetReadOnly)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Fenced);
    // A command with no term (an older conductor) is judged by its epoch alone.
    h.ok("db-1", 5, Command::SetReadOnly).await;
    assert_eq!(h.node("db-1").db.sql("SELECT @@read_only").unwrap(), "1");
}

#[tokio::test]
async fn stale_epochs_are_fenced_and_repeats_are_answered_from_the_record() {
    let mut h = Harness::new(&["db-1"]).await;
    h.ok("db-1", 5, Command::EnableAsMaster { semi_sync: None })
        .await;
    h.ok("db-1", 5, Command::SetWritable).await;

    // Older epoch: refused, and nothing changes.
    let err = h.cmd("db-1", 4, Command::SetReadOnly).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Fenced);
    assert!(
        err.message.contains("epoch e4") && err.message.contains("e5"),
        "{}",
        err.message
    );
    assert_eq!(h.node("db-1").db.sql("SELECT @@read_only").unwrap(), "0");

    // The same message twice: the second answer is the recorded one (a re-run would
    // have made a new password).
    let create = envelope(
        "db-1",
        Epoch::new(5),
        Command::CreateReplicationUser {
            replica: id("db-9"),
            from: None,
            seal_to: h.key_of("db-9"),
        },
    );
    let first = h.send(&create).await.unwrap();
    let second = h.send(&create).await.unwrap();
    assert_eq!(first, second);

    // Also after an agent restart: the record and the epoch are on disk.
    let agent = &mut h.node_mut("db-1").agent;
    assert!(agent.stop().unwrap().success());
    agent.start().unwrap();
    h.wait_ready("db-1").await;
    assert_eq!(h.send(&create).await.unwrap(), first);
    let err = h.cmd("db-1", 4, Command::SetReadOnly).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Fenced);
    assert_eq!(h.status("db-1").await.highest_epoch, Epoch::new(5));
    let other = h
        .ok(
            "db-1",
            5,
            Command::CreateReplicationUser {
                replica: id("db-9"),
                from: None,
                seal_to: h.key_of("db-9"),
            },
        )
        .await;
    assert_ne!(other, first, "a new message id is a new command");

    // An account limited to the replica's address replaces the one for any address; a
    // `from` that is not plainly an address never reaches the SQL.
    h.ok(
        "db-1",
        5,
        Command::CreateReplicationUser {
            replica: id("db-9"),
            from: Some("127.0.0.1".into()),
            seal_to: h.key_of("db-9"),
        },
    )
    .await;
    let hosts = h
        .node("db-1")
        .db
        .sql("SELECT GROUP_CONCAT(Host) FROM mysql.user WHERE User LIKE '%db_9%'")
        .unwrap();
    assert_eq!(hosts, "127.0.0.1");
    let err = h
        .cmd(
            "db-1",
            5,
            Command::CreateReplicationUser {
                replica: id("db-9"),
                from: Some("x'@'%' IDENTIFIED BY 'y".into()),
                seal_to: h.key_of("db-9"),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest, "{err:?}");
    assert!(err.message.contains("field `from`"), "{err:?}");

    // A newer epoch since: a repeat is still answered from the record (nothing runs),
    // while a new command at the old epoch is fenced.
    h.ok("db-1", 6, Command::SetWritable).await;
    assert_eq!(h.send(&create).await.unwrap(), first);
    let err = h.cmd("db-1", 5, Command::SetReadOnly).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Fenced);
}

#[tokio::test]
async fn a_killed_engine_is_reported_within_one_interval() {
    let mut h = Harness::new(&["db-1"]).await;
    let mut follow = h.client.subscribe_status("#");
    eventually(Duration::from_secs(5), "a healthy report", async || {
        let r = tokio::time::timeout(Duration::from_secs(2), follow.next())
            .await
            .ok()??;
        (r.body.health == Health::Healthy).then_some(())
    })
    .await;
    h.node_mut("db-1").db.kill();
    let killed_at = Instant::now();
    let down = loop {
        let r = tokio::time::timeout(Duration::from_secs(3), follow.next())
            .await
            .expect("a report within one interval of the kill")
            .unwrap();
        if r.body.health == Health::EngineDown {
            break r;
        }
    };
    // One status interval is 1 s; the probe runs every 200 ms.
    assert!(
        killed_at.elapsed() <= Duration::from_millis(1500),
        "engine death reported after {:?}",
        killed_at.elapsed()
    );
    assert_eq!(down.body.role, Role::Unknown);
    assert_eq!(down.body.writable, None);
    assert!(down.body.last_error.is_some());
    // The agent stays up and keeps answering.
    let err = h
        .cmd("db-1", 0, Command::GetLatestPosition)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::EngineUnavailable);
    assert!(err.retryable);
}

#[tokio::test]
async fn wrong_input_gets_a_clear_error_and_changes_nothing() {
    let h = Harness::new(&["db-1", "db-2"]).await;
    h.ok("db-1", 1, Command::EnableAsMaster { semi_sync: None })
        .await;
    h.ok("db-1", 1, Command::SetWritable).await;
    let creds = match h
        .ok(
            "db-1",
            1,
            Command::CreateReplicationUser {
                replica: id("db-2"),
                from: None,
                seal_to: h.key_of("db-2"),
            },
        )
        .await
    {
        ReplyBody::Credentials { credentials } => credentials,
        other => panic!("{other:?}"),
    };
    let replica = &h.node("db-2").db;
    let before = (
        replica.sql("SELECT @@read_only, @@gtid_slave_pos").unwrap(),
        replica.sql("SHOW SLAVE STATUS").unwrap(),
    );
    let attach =
        |source: SourceEndpoint, credentials: ReplicationCredentials| Command::AttachToSource {
            source,
            credentials,
            position: None,
            semi_sync: false,
            delay_s: 0,
            paused: None,
            filter: None,
            peer: false,
        };

    // A source nothing listens on.
    let nowhere = SourceEndpoint {
        instance: id("db-404"),
        host: "127.0.0.1".into(),
        port: tandem_testkit::free_port(),
    };
    let err = h
        .cmd("db-2", 1, attach(nowhere, creds.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest, "{err}");
    assert!(
        err.message.contains("cannot reach source db-404"),
        "{}",
        err.message
    );

    // A password sealed to another agent's key (db-1's): refused before anything is
    // tried, and nothing of it shows.
    let mut misaddressed = creds.clone();
    misaddressed.password = h.seal("db-1", "whatever-it-is");
    let err = h
        .cmd("db-2", 1, attach(h.endpoint("db-1"), misaddressed))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest, "{err}");
    assert!(
        err.message.contains("the replication password")
            && err.message.contains("not sealed to this agent"),
        "{}",
        err.message
    );

    // Wrong credentials.
    let mut wrong = creds.clone();
    wrong.password = h.seal("db-2", "not-the-password");
    let err = h
        .cmd("db-2", 1, attach(h.endpoint("db-1"), wrong))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::EngineRefused, "{err}");
    assert!(
        err.message.contains("refused the replication credentials"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("not-the-password"));

    // Itself, by id and by address.
    let err = h
        .cmd("db-2", 1, attach(h.endpoint("db-2"), creds.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(
        err.message.contains("cannot replicate from itself"),
        "{}",
        err.message
    );

    // Detach a server that is not a replica.
    let err = h.cmd("db-2", 1, Command::Detach).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(err.message.contains("not a replica"), "{}", err.message);

    // A command this agent does not know (what a newer conductor's command decodes to:
    // see proto's codec tests), and one past its deadline.
    let future = envelope("db-2", Epoch::new(1), Command::Unknown);
    let err = h.send(&future).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    let mut late = envelope("db-2", Epoch::new(1), Command::SetWritable);
    late.expires_at = Some(tandem_proto::Timestamp(late.issued_at.0 - 1));
    let err = h.send(&late).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::TimedOut);

    let after = (
        replica.sql("SELECT @@read_only, @@gtid_slave_pos").unwrap(),
        replica.sql("SHOW SLAVE STATUS").unwrap(),
    );
    assert_eq!(before, after, "a refused command changed the server");
    let r = h.status("db-2").await;
    assert_eq!((r.role, r.replicates_from), (Role::Standalone, None));
}

#[tokio::test]
async fn managed_settings_are_applied_live_and_restart_needs_are_reported() {
    tandem_testkit::init_tracing();
    let broker = Broker::new().unwrap();
    let db = MariaDb::start(MariaDbOptions {
        server_id: 4242, // not the derived one: the agent corrects it live
        extra_args: vec!["--sync-binlog=0".into(), "--log-slave-updates=0".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(db.sql("SELECT @@sync_binlog").unwrap(), "0");
    let agent =
        AgentProcess::start_mariadb(AGENT.as_ref(), "db-7", "zone-a", broker.uri(), &db).unwrap();
    let shutdown = CancellationToken::new();
    let client = Transport::connect(
        signed_config(broker.uri(), "t", &[&agent]),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let report = eventually(Duration::from_secs(30), "a report", async || {
        let env = envelope("db-7", Epoch::ZERO, Command::GetStatus);
        match client
            .call(&env, Duration::from_secs(2))
            .await
            .ok()?
            .body
            .into_result()
            .ok()?
        {
            ReplyBody::Status { report } => Some(*report),
            _ => None,
        }
    })
    .await;
    assert_eq!(db.sql("SELECT @@sync_binlog").unwrap(), "1");
    assert_eq!(
        db.sql("SELECT @@server_id").unwrap(),
        tandem_agent::server_id_for(&id("db-7")).to_string()
    );
    let pending = report.restart_needed.join("; ");
    assert!(
        pending.contains("log_slave_updates"),
        "{pending:?} / {:?}",
        report.engine_settings
    );
    assert_eq!(
        report
            .engine_settings
            .get("sync_binlog")
            .map(String::as_str),
        Some("1")
    );
    drop(agent);
    shutdown.cancel();
}

#[tokio::test]
async fn waits_are_bounded_and_a_flood_of_them_leaves_the_agent_answering() {
    let h = Harness::with_env(
        &["db-1"],
        &[("TANDEM_AGENT_MAX_WAIT_MS".into(), "8000".into())],
    )
    .await;
    let unreachable = || Command::WaitForPosition {
        position: tandem_proto::Position::Gtid("0-1-999999".parse().unwrap()),
        timeout_ms: u64::MAX / 2,
    };

    // No deadline, or one too far out: refused before anything runs.
    let read_only = || h.node("db-1").db.sql("SELECT @@read_only").unwrap();
    let before = read_only();
    let flip = if before == "1" {
        Command::SetWritable
    } else {
        Command::SetReadOnly
    };
    let mut e = envelope("db-1", Epoch::new(1), flip.clone());
    e.expires_at = None;
    let err = h.send(&e).await.unwrap_err();
    assert!(err.message.contains("no deadline"), "{}", err.message);
    let e = envelope("db-1", Epoch::new(1), flip).expires_in(Duration::from_secs(3600));
    let err = h.send(&e).await.unwrap_err();
    assert!(err.message.contains("max_deadline_s"), "{}", err.message);
    assert_eq!(read_only(), before, "a refused command changed the engine");

    // A flood of waits that can never finish, each asking for ages: a few wait (each for
    // at most `max_wait_ms`), the rest are refused as busy at once, and a ping sent
    // after all of them is answered while they still wait.
    let flood: Vec<_> = (0..30)
        .map(|_| envelope("db-1", Epoch::new(1), unreachable()))
        .collect();
    let started = Instant::now();
    let waits = futures_util::future::join_all(flood.iter().map(|e| async {
        let r = h.send(e).await;
        (Instant::now(), r)
    }));
    let ping = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = h
            .send(&envelope("db-1", Epoch::new(1), Command::Ping))
            .await;
        (Instant::now(), r)
    };
    let (waits, (pinged_at, pong)) = tokio::join!(waits, ping);
    assert!(matches!(pong, Ok(ReplyBody::Pong { .. })), "{pong:?}");
    let busy = waits
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e.message.contains("busy")))
        .count();
    let waited: Vec<_> = waits
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e.kind == ErrorKind::TimedOut))
        .filter(|(_, r)| !r.as_ref().unwrap_err().message.contains("busy"))
        .collect();
    assert_eq!(busy + waited.len(), 30, "{waits:?}");
    assert!(busy >= 20, "only {busy} of 30 refused as busy");
    assert!(
        waited.iter().all(|(at, _)| *at > pinged_at),
        "the ping was answered only after the waits ended"
    );
    // And every wait ended by the agent's bound, not the hours it asked for.
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn only_commands_signed_by_a_trusted_conductor_key_are_obeyed() {
    use std::sync::Arc;
    use tandem_transport::signing::SigningKey;
    let key = |bytes: Vec<u8>| Arc::new(SigningKey::from_pkcs8(&bytes).unwrap());
    let conductor = key(SigningKey::generate().unwrap());
    let h = Harness::signed(&["db-1"], conductor.clone()).await;
    let read_only = || h.node("db-1").db.sql("SELECT @@read_only").unwrap();

    // The conductor's signed commands are obeyed.
    h.ok("db-1", 1, Command::SetWritable).await;
    assert_eq!(read_only(), "0");

    // Unsigned, and signed by a key the agent does not trust: dead-lettered unread, no
    // answer, nothing changed, not even the epoch.
    for stranger in [None, Some(key(SigningKey::generate().unwrap()))] {
        let t = h.stranger(stranger).await;
        let e = envelope("db-1", Epoch::new(99), Command::SetReadOnly);
        let r = t.call(&e, Duration::from_secs(3)).await;
        assert!(r.is_err(), "a stranger's command was answered: {r:?}");
        assert_eq!(read_only(), "0", "a stranger's command ran");
    }
    let report = eventually(
        Duration::from_secs(10),
        "the refusals reported",
        async || {
            let r = h.status("db-1").await;
            (r.refused_commands == 2).then_some(r)
        },
    )
    .await;
    assert_eq!(report.highest_epoch, Epoch::new(1));
    h.ok("db-1", 1, Command::SetReadOnly).await;
    assert_eq!(read_only(), "1");

    // A genuine signed command captured off the bus: tampered with, it is refused; sent
    // as it was, it runs once; replayed byte for byte, it is refused.
    let bytes = tandem_proto::codec::encode(&envelope("db-1", Epoch::new(2), Command::SetWritable))
        .unwrap();
    let signature = tandem_transport::identity::tags_header(
        &conductor,
        &[h.node("db-1").agent.key().unwrap().public_key()],
        &bytes,
    );
    let mut tampered = bytes.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 0x01;
    let t = h.stranger(None).await;
    let publish = |b: Vec<u8>| {
        let (t, key, sig) = (&t, conductor.id().to_owned(), signature.clone());
        async move {
            t.publish_raw_signed(&id("db-1"), &b, Some((&key, &sig)))
                .await
                .unwrap()
        }
    };
    publish(tampered).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read_only(), "1", "a tampered command ran");
    publish(bytes.clone()).await;
    eventually(
        Duration::from_secs(5),
        "the genuine command to run",
        async || (read_only() == "0").then_some(()),
    )
    .await;
    h.ok("db-1", 2, Command::SetReadOnly).await;
    publish(bytes).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read_only(), "1", "a replayed command ran again");
    eventually(
        Duration::from_secs(10),
        "every refusal counted",
        async || (h.status("db-1").await.refused_commands == 4).then_some(()),
    )
    .await;
}

// Multi-threaded: the call runs on while the test waits (blocking) for the agent to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_crashes_the_agent_each_time_is_refused_after_the_delivery_limit() {
    // The agent's command queue is classic (the default), which has no delivery limit
    // of its own: the agent counts the redeliveries in its state and ends the loop.
    let mut h = Harness::with_env(
        &["db-1"],
        &[
            (
                "TANDEM_AGENT_CRASH_ON_COMMAND".into(),
                "set_writable".into(),
            ),
            ("TANDEM_AGENT_BROKER__DELIVERY_LIMIT".into(), "3".into()),
        ],
    )
    .await;
    let read_only = h.node("db-1").db.sql("SELECT @@read_only").unwrap();
    let poison =
        envelope("db-1", Epoch::new(5), Command::SetWritable).expires_in(Duration::from_secs(120));
    let call = {
        let (client, poison) = (h.client.clone(), poison.clone());
        tokio::spawn(async move { client.call(&poison, Duration::from_secs(120)).await })
    };
    for delivery in 1..=3 {
        let agent = &mut h.node_mut("db-1").agent;
        let exit = agent.wait_exit(Duration::from_secs(30));
        assert!(
            exit.is_some_and(|s| !s.success()),
            "delivery {delivery} should have crashed the agent: {exit:?}\n{}",
            agent.log()
        );
        agent.start().unwrap();
    }
    let reply = call.await.unwrap().expect("the refusal reaches the caller");
    let tandem_proto::Reply::Err(e) = reply.body else {
        panic!("refused, not run: {reply:?}");
    };
    assert_eq!(e.kind, ErrorKind::Internal, "{e:?}");
    assert!(!e.retryable, "{e:?}");
    assert!(
        e.message.contains("delivered 4 times") && e.message.contains("delivery limit 3"),
        "{}",
        e.message
    );
    // Recorded: the same command again is answered, not run (no crash), and the agent
    // goes on serving.
    let again = h.send(&poison).await.unwrap_err();
    assert_eq!(again, e);
    assert_eq!(h.status("db-1").await.instance, id("db-1"));
    assert_eq!(
        h.node("db-1").db.sql("SELECT @@read_only").unwrap(),
        read_only
    );
    assert!(h
        .node("db-1")
        .agent
        .log()
        .contains("refusing a command delivered"));
}
