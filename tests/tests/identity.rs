//! Only an instance's own agent speaks for it. Anyone with a broker login can publish
//! a status report or a reply naming any instance; the conductor believes only what
//! the key pinned at enrolment signed. A hostile client (raw lapin) forges reports
//! that would make the conductor fail over a healthy master, signed by nobody, by a
//! stranger, by another instance's real agent key, and with a made-up enrolment proof;
//! and it answers commands before the real agent does. Real broker, engines, binaries.

use std::time::{Duration, Instant};

use tandem_api::{ApiEvent, EnrolmentView, Verdict};
use tandem_e2e::hostile::{signed_by, Hostile};
use tandem_e2e::{eventually, Cluster, EventFollower};
use tandem_proto::{codec, CommandError, Envelope, ErrorKind, Health, Reply, Sender};
use tandem_transport::identity::{enrolment_proof, ENROLMENT_HEADER};
use tandem_transport::signing::SigningKey;
use tandem_transport::{Transport, TransportConfig};

fn new_key() -> SigningKey {
    SigningKey::random()
}

#[test]
fn forged_reports_and_replies_move_nothing_and_trigger_no_failover() {
    let c = Cluster::start(2);
    c.cli_ok(&["set", "create", "s1", "--master", "db-1", "--wait"]);
    c.cli_ok(&["replica", "add", "s1", "db-2", "--wait"]);
    c.converged("s1");
    // Both agents enrolled themselves with their tokens.
    let keys: Vec<EnrolmentView> = c.cli_json(&["instance", "keys"]);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.key.is_some()), "{keys:?}");
    let follower = EventFollower::start(&c);
    std::thread::sleep(Duration::from_millis(500));

    let db2_key = SigningKey::from_pkcs8(
        &std::fs::read(c.nodes[1].agent.state_dir().join("agent.key")).unwrap(),
    )
    .unwrap();
    let stranger = new_key();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let forging_until = rt.block_on(async {
        // A real report of db-1, turned into one that says its engine died, with a
        // sequence no real report will ever pass.
        let listener = Transport::connect(
            TransportConfig::new(c.broker.uri(), "listener"),
            Default::default(),
        )
        .await
        .unwrap();
        let mut reports = listener.subscribe_status("#");
        let mut forged = loop {
            let r = reports.next().await.unwrap();
            if r.body.instance.as_str() == "db-1" {
                break r;
            }
        };
        forged.body.health = Health::EngineDown;
        forged.body.writable = None;
        forged.body.position = None;
        forged.body.sequence = u64::MAX - 1;
        let bytes = codec::encode(&forged).unwrap();
        let hostile = Hostile::connect(c.broker.uri()).await.unwrap();
        let mut with_made_up_proof = signed_by(&stranger, &bytes);
        with_made_up_proof.push((
            ENROLMENT_HEADER,
            enrolment_proof("a-guessed-token", "db-1", &stranger.public_key()),
        ));
        let mut tampered = codec::encode(&forged).unwrap();
        let signed_then_tampered = signed_by(&db2_key, &tampered);
        tampered[10] ^= 1;
        let forgeries = [
            (bytes.clone(), vec![]),
            (bytes.clone(), signed_by(&stranger, &bytes)),
            (bytes.clone(), with_made_up_proof),
            // Another instance's real agent key (a tenant with root on db-2's VM).
            (bytes.clone(), signed_by(&db2_key, &bytes)),
            (tampered, signed_then_tampered),
        ];
        // Forged replies: a stranger answers every command to db-1 first.
        let answering = hostile
            .answer_commands_first(
                "db-1",
                |command| {
                    let mut reply = Envelope::new(
                        Sender::Agent {
                            instance: command.target.clone(),
                        },
                        command.target.clone(),
                        command.epoch,
                        Reply::Err(CommandError::new(ErrorKind::BadRequest, "forged answer")),
                    );
                    reply.correlation_id = Some(command.message_id);
                    reply
                },
                {
                    let stranger = new_key();
                    move |bytes| signed_by(&stranger, bytes)
                },
            )
            .await
            .unwrap();
        // Six seconds of forgeries every 50 ms: far more than the failure detector
        // needs to act on a master whose engine is down.
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            for (bytes, headers) in &forgeries {
                hostile
                    .publish_report(&forged, bytes, headers)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (answering, until)
    });
    let (answering, _) = forging_until;

    // Pings through the conductor get the real agent's answer, whoever answers first.
    for _ in 0..5 {
        let out = c.cli_ok(&["ping", "db-1"]);
        assert!(!out.contains("forged"), "{out}");
    }
    answering.abort();

    // Nothing moved: db-1 is the master, writable, healthy, and its real reports are
    // still taken (the forged sequence did not lock them out).
    let set = c.set("s1");
    assert_eq!(set.master.as_str(), "db-1", "{set:?}");
    assert_eq!(c.db("db-1").sql("SELECT @@read_only").unwrap(), "0");
    let workflows = c.cli_ok(&["workflow", "list"]);
    assert!(!workflows.contains("failover"), "{workflows}");
    let seen_before = c.instance("db-1").status.sequence;
    assert!(seen_before < u64::MAX / 2, "a forged sequence was taken");
    eventually(
        Duration::from_secs(5),
        "db-1's real reports still taken",
        || {
            let i = c.instance("db-1");
            (i.status.sequence > seen_before && i.status.health == Health::Healthy).then_some(())
        },
    );

    // Every refusal was raised, once per key and reason (not once per message).
    let events = follower.stop();
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            ApiEvent::MessageRefused {
                instance, reason, ..
            } if instance.as_str() == "db-1" => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("unsigned")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&db2_key.public_hex()) && r.contains("not by the key")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains(&stranger.public_hex())),
        "{reasons:?}"
    );
    assert!(
        reasons.len() <= 4,
        "raised once per key and reason: {reasons:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            ApiEvent::MasterVerdict { verdict, .. } if *verdict != Verdict::Healthy
        )),
        "the detector changed its mind: {events:?}"
    );
}

#[test]
fn a_new_key_is_believed_only_after_an_operator_rekeys_the_instance() {
    let mut c = Cluster::start(2);
    let last_seen = |c: &Cluster| c.instance("db-2").last_seen_ms;
    let follower = EventFollower::start(&c);
    std::thread::sleep(Duration::from_millis(500));
    // db-2's VM is rebuilt: same instance id, a new key (its old token already used).
    let node = c.node_mut("db-2");
    node.agent.stop();
    std::fs::remove_file(node.agent.state_dir().join("agent.key")).unwrap();
    node.agent.start().unwrap();
    let new_key = c.nodes[1].agent.run_with_config(&["public-key"]).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        last_seen(&c) > 3000,
        "a new key was believed without an operator"
    );

    // The operator re-keys db-2 and pins the new key.
    c.cli_ok(&["instance", "rekey", "db-2"]);
    let (ok, _, err) = c.cli(&["instance", "enroll", "db-2", "--key", "abcd"]);
    assert!(!ok && err.contains("key"), "{err}");
    let out = c.cli_ok(&["instance", "enroll", "db-2", "--key", &new_key]);
    assert!(out.contains("enrolled"), "{out}");
    eventually(Duration::from_secs(15), "db-2 believed again", || {
        (last_seen(&c) < 2000).then_some(())
    });
    // A token for an enrolled instance would enrol nothing: refused, with the way out.
    let (ok, _, err) = c.cli(&["instance", "enroll", "db-2"]);
    assert!(!ok && err.contains("rekey"), "{err}");
    c.cli_ok(&["ping", "db-2"]);
    let events = follower.stop();
    assert!(
        events.iter().any(
            |e| matches!(e, ApiEvent::MessageRefused { instance, reason, .. }
            if instance.as_str() == "db-2" && reason.contains(&new_key))
        ),
        "the refusal names the new key: {events:?}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, ApiEvent::InstanceEnrolled { instance, by, .. }
            if instance.as_str() == "db-2" && by == "operator")
        ),
        "{events:?}"
    );
}
