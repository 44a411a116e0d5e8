use super::*;
use tandem_proto::{FailsafePeer, Sealed, Secret};

/// Keys "sealed" in clear: the sealing itself is the transport's, tested there.
fn clear(s: &Sealed) -> Result<Secret, String> {
    Ok(Secret::new(
        String::from_utf8(s.to_bytes().unwrap()).unwrap(),
    ))
}

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

const LEASE: Duration = Duration::from_millis(1000);

/// A master `m` with replicas `r1`, `r2`, each granted, each receiving from `m`.
fn set() -> (Failsafe, Failsafe, Failsafe) {
    let m = Failsafe::new(id("m"), LEASE);
    let peers = ["r1", "r2"]
        .iter()
        .map(|r| FailsafePeer {
            instance: id(r),
            endpoint: None,
            key: Sealed::from_bytes(format!("key-of-{r}").as_bytes()),
        })
        .collect();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    m.assign(
        &FailsafeAssignment::Master { peers },
        Epoch::new(3),
        vec![Some(addr), Some(addr)],
        &clear,
    )
    .unwrap();
    let replica = |r: &str| {
        let f = Failsafe::new(id(r), LEASE);
        f.assign(
            &FailsafeAssignment::Replica {
                master: id("m"),
                key: Sealed::from_bytes(format!("key-of-{r}").as_bytes()),
            },
            Epoch::new(3),
            vec![],
            &clear,
        )
        .unwrap();
        f.observe(Some(id("m")));
        f
    };
    (m, replica("r1"), replica("r2"))
}

#[test]
fn the_lease_is_held_only_with_every_replicas_promise() {
    let (m, r1, r2) = set();
    let now = Instant::now();
    let pings = m.start_round(now, LEASE, 7).unwrap();
    assert_eq!(pings.len(), 2);
    let a1 = r1.receive(&pings[0].1, now).expect("r1 promises");
    assert_eq!(
        r2.receive(&pings[0].1, now),
        None,
        "a ping for r1 means nothing to r2"
    );
    assert_eq!(m.receive(&a1, now), None);
    assert_eq!(m.finish_round(), RoundOutcome::Missing(vec![id("r2")]));

    let pings = m.start_round(now, LEASE, 8).unwrap();
    let a1 = r1.receive(&pings[0].1, now).unwrap();
    let a2 = r2.receive(&pings[1].1, now).unwrap();
    m.receive(&a1, now);
    m.receive(&a2, now);
    assert_eq!(
        m.finish_round(),
        RoundOutcome::Held {
            sent: now,
            promise: LEASE
        }
    );
    assert!(matches!(
        m.state(),
        Some(FailsafeState::Master { held: 1, .. })
    ));
}

#[test]
fn forged_replayed_and_unwanted_messages_are_dropped() {
    let (m, r1, r2) = set();
    let now = Instant::now();
    let pings = m.start_round(now, LEASE, 1).unwrap();
    let answer = r1.receive(&pings[0].1, now).unwrap();
    // A promise from an earlier round does not count in this one.
    let pings = m.start_round(now, LEASE, 2).unwrap();
    m.receive(&answer, now);
    let a2 = r2.receive(&pings[1].1, now).unwrap();
    m.receive(&a2, now);
    assert_eq!(m.finish_round(), RoundOutcome::Missing(vec![id("r1")]));

    // A promise sealed with a key that is not r1's (a tenant of r2 forging r1's).
    let forged = seal(
        b"key-of-r2",
        &FailsafeMessage::Promise {
            from: id("r1"),
            to: id("m"),
            nonce: 3,
            promise_ms: 1000,
        },
    );
    m.start_round(now, LEASE, 3).unwrap();
    m.receive(&forged, now);
    m.receive(&r2.receive(&m_ping(&m, "r2"), now).unwrap(), now);
    assert_eq!(m.finish_round(), RoundOutcome::Missing(vec![id("r1")]));

    // Garbage and a flipped bit.
    assert_eq!(r1.receive(b"\x93garbage", now), None);
    let pings = m.start_round(now, LEASE, 4).unwrap();
    let mut flipped = pings[0].1.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(r1.receive(&flipped, now), None);

    // A replica that stopped receiving from its master promises nothing.
    r1.observe(None);
    assert_eq!(r1.receive(&pings[0].1, now), None);
    // Nor one told to answer another master.
    let other = Failsafe::new(id("other"), LEASE);
    other
        .assign(
            &FailsafeAssignment::Master {
                peers: vec![FailsafePeer {
                    instance: id("r2"),
                    endpoint: None,
                    key: Sealed::from_bytes(b"key-of-r2"),
                }],
            },
            Epoch::new(4),
            vec![Some("127.0.0.1:9".parse().unwrap())],
            &clear,
        )
        .unwrap();
    r2.observe(Some(id("other")));
    let ping = other.start_round(now, LEASE, 5).unwrap();
    assert_eq!(r2.receive(&ping[0].1, now), None);
}

fn m_ping(m: &Failsafe, to: &str) -> Vec<u8> {
    let s = m.inner.lock().unwrap();
    let round = s.round.as_ref().unwrap();
    let peer = s
        .list
        .as_ref()
        .unwrap()
        .peers
        .iter()
        .find(|p| p.instance.as_str() == to)
        .unwrap();
    seal(
        &peer.key,
        &FailsafeMessage::Ping {
            from: id("m"),
            to: id(to),
            nonce: round.nonce,
            promise_ms: round.asked.as_millis() as u64,
        },
    )
}

#[test]
fn a_withdrawn_replica_promises_nothing_and_waits_out_its_last_promise() {
    let (m, r1, _) = set();
    // A fresh agent waits out what its predecessor may have promised.
    let fresh = Failsafe::new(id("x"), LEASE);
    assert!(fresh.withdraw(Instant::now(), Epoch::new(3)) > LEASE);

    let now = Instant::now() + LEASE * 2;
    assert_eq!(
        r1.withdraw(now, Epoch::new(3)),
        Duration::ZERO,
        "nothing promised since start"
    );
    // An assignment from the withdrawal's epoch (sent before it, delivered after)
    // does not undo it; one from a later epoch does.
    let grant = FailsafeAssignment::Replica {
        master: id("m"),
        key: Sealed::from_bytes(b"key-of-r1"),
    };
    assert!(r1.assign(&grant, Epoch::new(3), vec![], &clear).is_err());
    assert_eq!(r1.state(), None);
    assert!(r1.assign(&grant, Epoch::new(4), vec![], &clear).is_ok());
    let r1 = {
        let (_, r1, _) = set();
        r1
    };
    let pings = m.start_round(now, Duration::from_millis(5000), 9).unwrap();
    let answer = r1.receive(&pings[0].1, now).unwrap();
    // Never longer than its own lease, whatever the master asks.
    m.receive(&answer, now);
    let wait = r1.withdraw(now, Epoch::new(3));
    assert_eq!(wait, LEASE + WITHDRAW_MARGIN);
    assert_eq!(
        r1.receive(&pings[0].1, now),
        None,
        "withdrawn: no new promise"
    );
    assert_eq!(r1.state(), None);
}
