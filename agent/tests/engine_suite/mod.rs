//! The one engine test suite: every behaviour of the [`Engine`] trait the agent relies
//! on, written once over the trait (as garage runs one suite over every storage
//! adapter). An engine joins by implementing [`Subject`] (start a private server, write
//! a row, count rows) and instantiating the suite with [`engine_suite!`]; MariaDB does
//! in `engine_mariadb.rs`, PostgreSQL will beside it.

use std::future::Future;
use std::time::Duration;

use tandem_agent::engine::{Applying, Engine, ReplicationLogin};
use tandem_proto::{InstanceId, PairSide, SourceEndpoint};

/// One private server of an engine, with the agent's adapter on it.
pub trait Subject: Sized + Send + Sync {
    type E: Engine;
    /// Starts a fresh server named `name` (its data, its port) and the adapter on it.
    fn start(name: &str) -> impl Future<Output = Self> + Send;
    fn engine(&self) -> &Self::E;
    fn id(&self) -> InstanceId;
    /// Where replicas reach it.
    fn endpoint(&self) -> SourceEndpoint;
    /// Commits one row `n` in the suite's table (made on first use), as a client would.
    fn write(&self, n: u32);
    /// The rows of the suite's table, as a client on this server sees them.
    fn count(&self) -> u32;
    /// Commits one row whose key the engine mints (an auto-increment), as a client
    /// would; the key.
    fn write_minted(&self) -> u64;
}

const WAIT: Duration = Duration::from_secs(20);

/// Writable and read-only on demand, as observed; a fence makes it read-only.
pub async fn writability_is_set_and_observed<S: Subject>() {
    let s = S::start("e-1").await;
    let e = s.engine();
    e.set_writable(true).await.unwrap();
    assert!(e.observe().await.unwrap().writable);
    e.set_writable(false).await.unwrap();
    assert!(!e.observe().await.unwrap().writable);
    e.set_writable(true).await.unwrap();
    e.fence().await.unwrap();
    assert!(!e.observe().await.unwrap().writable, "fenced yet writable");
}

/// Each commit moves the position forward; an older position is contained in a newer.
pub async fn positions_grow_with_commits<S: Subject>() {
    let s = S::start("e-1").await;
    s.engine().set_writable(true).await.unwrap();
    s.write(1);
    let before = s.engine().latest_position().await.unwrap();
    s.write(2);
    let after = s.engine().latest_position().await.unwrap();
    assert!(after.contains(&before), "{after} does not contain {before}");
    assert!(
        !before.contains(&after),
        "{before} contains the later {after}"
    );
}

/// The databases applications keep are listed, the engine's own schemas are not.
pub async fn databases_are_listed_without_the_engines_own<S: Subject>() {
    let s = S::start("e-1").await;
    s.engine().set_writable(true).await.unwrap();
    let before = s.engine().databases().await.unwrap();
    s.write(1);
    let after = s.engine().databases().await.unwrap();
    assert_eq!(after.len(), before.len() + 1, "{before:?} -> {after:?}");
    for own in ["mysql", "information_schema", "performance_schema", "sys"] {
        assert!(!after.iter().any(|d| d == own), "{own} listed: {after:?}");
    }
}

async fn pair<S: Subject>() -> (S, S, ReplicationLogin) {
    let master = S::start("e-1").await;
    let replica = S::start("e-2").await;
    let m = master.engine();
    m.set_writable(true).await.unwrap();
    m.prepare_master().await.unwrap();
    let login = m
        .ensure_replication_user(&replica.id(), None)
        .await
        .unwrap();
    replica
        .engine()
        .attach(
            &replica.id(),
            &master.endpoint(),
            &login,
            None,
            &Applying::default(),
        )
        .await
        .unwrap();
    (master, replica, login)
}

/// A replica receives, applies and says whom from; it is read-only; waiting for the
/// master's position ends once it holds it.
pub async fn a_replica_follows_its_source_and_says_so<S: Subject>() {
    let (master, replica, _) = pair::<S>().await;
    for n in 1..=3 {
        master.write(n);
    }
    let at = master.engine().latest_position().await.unwrap();
    replica.engine().wait_for_position(&at, WAIT).await.unwrap();
    assert_eq!(replica.count(), 3);
    let seen = replica.engine().observe().await.unwrap();
    assert!(!seen.writable, "a replica is read-only");
    assert!(seen.position.contains(&at), "{} lacks {at}", seen.position);
    let endpoint = master.endpoint();
    assert_eq!(seen.source, Some((endpoint.host, endpoint.port)));
    let state = seen.replication.expect("a replica reports its replication");
    assert!(state.receiving && state.applying, "{state:?}");
    assert!(state.diverged.is_none(), "{state:?}");
}

/// Draining stops receiving and returns a position holding everything received; a
/// server that is not a replica is refused.
pub async fn draining_applies_everything_received<S: Subject>() {
    let (master, replica, _) = pair::<S>().await;
    master.write(1);
    master.write(2);
    let at = master.engine().latest_position().await.unwrap();
    replica.engine().wait_for_position(&at, WAIT).await.unwrap();
    let drained = replica.engine().drain(WAIT).await.unwrap();
    assert!(
        drained.contains(&at),
        "drained to {drained}, master at {at}"
    );
    let state = replica.engine().observe().await.unwrap().replication;
    assert!(
        state.as_ref().is_some_and(|s| !s.receiving),
        "still receiving after a drain: {state:?}"
    );
    assert!(
        master.engine().drain(WAIT).await.is_err(),
        "a master drained"
    );
}

/// A paused replica applies nothing and refuses a drain at once; resumed, it applies
/// everything; paused at a position it applies up to there and stops; a position it
/// has passed is refused, and it goes on as before.
pub async fn a_paused_replica_applies_nothing_until_resumed<S: Subject>() {
    let (master, replica, _) = pair::<S>().await;
    master.write(1);
    let first = master.engine().latest_position().await.unwrap();
    replica
        .engine()
        .wait_for_position(&first, WAIT)
        .await
        .unwrap();
    let paused_at = replica.engine().pause_replication(None).await.unwrap();
    master.write(2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replica.count(), 1, "a paused replica applied a row");
    let state = replica.engine().observe().await.unwrap().replication;
    assert!(
        state.as_ref().is_some_and(|s| !s.applying),
        "paused yet applying: {state:?}"
    );
    assert!(
        replica.engine().drain(WAIT).await.is_err(),
        "a paused replica drained"
    );
    assert_eq!(replica.engine().latest_position().await.unwrap(), paused_at);
    replica.engine().resume_replication(false).await.unwrap();
    let second = master.engine().latest_position().await.unwrap();
    replica
        .engine()
        .wait_for_position(&second, WAIT)
        .await
        .unwrap();
    assert_eq!(replica.count(), 2);

    // Paused at a position: applies row 3, not row 4.
    replica.engine().pause_replication(None).await.unwrap();
    master.write(3);
    let third = master.engine().latest_position().await.unwrap();
    master.write(4);
    replica
        .engine()
        .pause_replication(Some(&third))
        .await
        .unwrap();
    replica
        .engine()
        .wait_for_position(&third, WAIT)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replica.count(), 3, "it went past its stop position");
    // A position it passed: refused.
    assert!(replica
        .engine()
        .pause_replication(Some(&first))
        .await
        .is_err());
    replica.engine().resume_replication(false).await.unwrap();
    let fourth = master.engine().latest_position().await.unwrap();
    replica
        .engine()
        .wait_for_position(&fourth, WAIT)
        .await
        .unwrap();
    assert_eq!(replica.count(), 4);
}

/// Waiting for a position the server will not reach ends at its limit with an error.
pub async fn a_wait_for_an_unreached_position_is_bounded<S: Subject>() {
    let (master, replica, _) = pair::<S>().await;
    let at = master.engine().latest_position().await.unwrap();
    replica.engine().wait_for_position(&at, WAIT).await.unwrap();
    replica.engine().drain(WAIT).await.unwrap();
    master.write(9);
    let ahead = master.engine().latest_position().await.unwrap();
    let started = std::time::Instant::now();
    let waited = replica
        .engine()
        .wait_for_position(&ahead, Duration::from_millis(500))
        .await;
    assert!(waited.is_err(), "reached a position it never received");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Detaching forgets the source and leaves writability alone; the data stays.
pub async fn a_detached_replica_is_standalone_with_its_data<S: Subject>() {
    let (master, replica, _) = pair::<S>().await;
    master.write(1);
    let at = master.engine().latest_position().await.unwrap();
    replica.engine().wait_for_position(&at, WAIT).await.unwrap();
    replica.engine().detach(&replica.id()).await.unwrap();
    let seen = replica.engine().observe().await.unwrap();
    assert_eq!(seen.source, None);
    assert!(seen.replication.is_none(), "{:?}", seen.replication);
    assert!(!seen.writable, "detach changed writability");
    assert_eq!(replica.count(), 1);
}

/// A replica is never made writable (it would take writes its source never has):
/// refused, and it stays read-only and replicating.
pub async fn a_replica_is_never_made_writable<S: Subject>() {
    let (master, replica, _) = pair::<S>().await;
    master.write(1);
    let at = master.engine().latest_position().await.unwrap();
    replica.engine().wait_for_position(&at, WAIT).await.unwrap();
    assert!(replica.engine().set_writable(true).await.is_err());
    let seen = replica.engine().observe().await.unwrap();
    assert!(!seen.writable);
    assert!(seen.source.is_some(), "the refusal detached it");
}

/// The two sides of a master-master pair: each replicates the other, the writable side
/// staying writable; each mints keys the other never does; switching the writable
/// side (read-only, the other waits for its position, writable) loses nothing and
/// keeps both directions running, and switching back does too.
pub async fn a_pair_replicates_both_ways_and_switches_without_loss<S: Subject>() {
    let (a, b, _) = pair::<S>().await;
    let (ea, eb) = (a.engine(), b.engine());
    ea.apply_managed_config(&a.id(), Some(PairSide::First))
        .await
        .unwrap();
    eb.apply_managed_config(&b.id(), Some(PairSide::Second))
        .await
        .unwrap();
    a.write(1);
    // The reverse channel: the writable side replicates its passive peer.
    let login = eb.ensure_replication_user(&a.id(), None).await.unwrap();
    let peer = Applying {
        peer: true,
        ..Applying::default()
    };
    ea.attach(&a.id(), &b.endpoint(), &login, None, &peer)
        .await
        .unwrap();
    let seen = ea.observe().await.unwrap();
    assert!(
        seen.writable,
        "the writable side went read-only on attaching"
    );
    let state = seen
        .replication
        .expect("the writable side replicates its peer");
    assert!(state.diverged.is_none(), "{state:?}");
    let minted_a = [a.write_minted(), a.write_minted()];
    a.write(2);
    // Its own writes come back through its peer and are no errant transactions.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = ea.observe().await.unwrap();
    assert!(
        seen.replication
            .as_ref()
            .is_some_and(|s| s.diverged.is_none()),
        "{:?}",
        seen.replication
    );

    let mut total = 2;
    for (from, to) in [(&a, &b), (&b, &a)] {
        // The switch: no write after the position is read can be lost.
        from.engine().set_writable(false).await.unwrap();
        let at = from.engine().latest_position().await.unwrap();
        to.engine().wait_for_position(&at, WAIT).await.unwrap();
        to.engine().set_writable(true).await.unwrap();
        assert_eq!(to.count(), total, "rows lost in the switch");
        total += 1;
        to.write(total);
        let now = to.engine().latest_position().await.unwrap();
        assert!(now.contains(&at), "{now} does not contain {at}");
        from.engine().wait_for_position(&now, WAIT).await.unwrap();
        assert_eq!(from.count(), total, "the other direction lost a row");
        for side in [from, to] {
            let s = side.engine().observe().await.unwrap().replication.unwrap();
            assert!(s.receiving && s.applying && s.diverged.is_none(), "{s:?}");
        }
    }
    // a is writable again; b minted keys while it was: never one of a's.
    let minted_b = b_minted_while_writable(&a, &b).await;
    for k in minted_a {
        assert_ne!(
            k % 2,
            minted_b % 2,
            "{minted_a:?} and {minted_b} share a step"
        );
    }
}

/// Makes `b` writable for one minted key (and `a` read-only meanwhile); the key.
async fn b_minted_while_writable<S: Subject>(a: &S, b: &S) -> u64 {
    a.engine().set_writable(false).await.unwrap();
    let at = a.engine().latest_position().await.unwrap();
    b.engine().wait_for_position(&at, WAIT).await.unwrap();
    b.engine().set_writable(true).await.unwrap();
    let key = b.write_minted();
    b.engine().set_writable(false).await.unwrap();
    let at = b.engine().latest_position().await.unwrap();
    a.engine().wait_for_position(&at, WAIT).await.unwrap();
    a.engine().set_writable(true).await.unwrap();
    key
}

/// Instantiates the suite for one engine's [`Subject`].
#[macro_export]
macro_rules! engine_suite {
    ($subject:ty) => {
        #[tokio::test]
        async fn writability_is_set_and_observed() {
            engine_suite::writability_is_set_and_observed::<$subject>().await
        }
        #[tokio::test]
        async fn positions_grow_with_commits() {
            engine_suite::positions_grow_with_commits::<$subject>().await
        }
        #[tokio::test]
        async fn databases_are_listed_without_the_engines_own() {
            engine_suite::databases_are_listed_without_the_engines_own::<$subject>().await
        }
        #[tokio::test]
        async fn a_replica_follows_its_source_and_says_so() {
            engine_suite::a_replica_follows_its_source_and_says_so::<$subject>().await
        }
        #[tokio::test]
        async fn draining_applies_everything_received() {
            engine_suite::draining_applies_everything_received::<$subject>().await
        }
        #[tokio::test]
        async fn a_wait_for_an_unreached_position_is_bounded() {
            engine_suite::a_wait_for_an_unreached_position_is_bounded::<$subject>().await
        }
        #[tokio::test]
        async fn a_detached_replica_is_standalone_with_its_data() {
            engine_suite::a_detached_replica_is_standalone_with_its_data::<$subject>().await
        }
        #[tokio::test]
        async fn a_paused_replica_applies_nothing_until_resumed() {
            engine_suite::a_paused_replica_applies_nothing_until_resumed::<$subject>().await
        }
        #[tokio::test]
        async fn a_pair_replicates_both_ways_and_switches_without_loss() {
            engine_suite::a_pair_replicates_both_ways_and_switches_without_loss::<$subject>().await
        }
        #[tokio::test]
        async fn a_replica_is_never_made_writable() {
            engine_suite::a_replica_is_never_made_writable::<$subject>().await
        }
    };
}
