//! The store suite on PostgreSQL, and what only a shared store has: fencing.
//!
//! One private server (the test kit's) for the whole test binary, a database of its
//! own for each test.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use super::*;
use crate::store::suite::{store_suite, Opened};

/// The port of the private server, started once. It is started from a thread that
/// lives as long as the test binary: the test kit kills a server when the thread that
/// started it ends.
fn server_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pg = tandem_testkit::Postgres::start().expect("a private PostgreSQL");
            tx.send(pg.port()).unwrap();
            // Held until the test binary exits.
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the private PostgreSQL started")
    })
}

/// A URL for a database of its own on the private server.
fn fresh_database() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let port = server_port();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let admin = link::connect(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres"
    ))
    .unwrap();
    link::execute(&admin, &format!("CREATE DATABASE {name}"), &[]).unwrap();
    format!("postgresql://postgres@127.0.0.1:{port}/{name}")
}

struct InDatabase {
    url: String,
    store: PgStore,
}

fn in_database() -> InDatabase {
    let url = fresh_database();
    let store = PgStore::open(&url).unwrap();
    InDatabase { url, store }
}

impl Opened for InDatabase {
    fn store(&self) -> &dyn Store {
        &self.store
    }
    fn reopen(&self) -> Box<dyn Store> {
        Box::new(PgStore::open(&self.url).unwrap())
    }
}

store_suite!(in_database);

fn i(s: &str) -> InstanceId {
    s.parse().unwrap()
}

#[test]
fn a_conductor_whose_term_has_ended_writes_nothing() {
    let db = in_database();
    let first = &db.store;
    let t1 = first.begin_term().unwrap();
    first
        .create_set(&"s1".parse().unwrap(), &i("db-1"))
        .unwrap();
    first.set_metadata(&i("db-1"), "k", "v1").unwrap();

    // A second conductor takes the store (the first froze, say).
    let second = PgStore::open(&db.url).unwrap();
    let t2 = second.begin_term().unwrap();
    assert!(t2 > t1, "terms rise: {t1} then {t2}");
    assert_eq!(
        second
            .set(&"s1".parse().unwrap())
            .unwrap()
            .map(|s| s.master),
        Some(i("db-1")),
        "the new term reads what the one before wrote"
    );

    // The first thaws: every kind of write is refused, and nothing of it lands.
    let fenced = |r: Result<()>| match r {
        Err(StoreError::Fenced { mine, now }) => assert_eq!((mine, now), (t1, t2)),
        other => panic!("not fenced: {other:?}"),
    };
    fenced(first.set_metadata(&i("db-1"), "k", "v2"));
    fenced(first.bump_epoch(&"s1".parse().unwrap()).map(|_| ()));
    fenced(
        first
            .apply(
                &"s1".parse().unwrap(),
                &TopologyChange::AddReplica {
                    instance: i("db-2"),
                    options: ReplicaOptions::default(),
                    source: None,
                },
            )
            .map(|_| ()),
    );
    let err = first
        .update_workflow("w", WorkflowState::Done, None)
        .unwrap_err();
    assert!(err.to_string().contains("has ended"), "{err}");
    assert_eq!(
        second.metadata(&i("db-1")).unwrap(),
        vec![("k".to_string(), "v1".to_string())]
    );
    let s1 = second.set(&"s1".parse().unwrap()).unwrap().unwrap();
    assert_eq!(
        s1.members.len(),
        1,
        "the deposed conductor's change did not land"
    );

    // The acting one writes on.
    second.set_metadata(&i("db-1"), "k", "v3").unwrap();
    second
        .apply(
            &"s1".parse().unwrap(),
            &TopologyChange::AddReplica {
                instance: i("db-2"),
                options: ReplicaOptions::default(),
                source: None,
            },
        )
        .unwrap();
}

#[test]
fn a_store_newer_than_this_conductor_is_refused_and_a_second_open_keeps_the_schema() {
    let db = in_database();
    // Opening again finds the schema made and changes nothing.
    let again = PgStore::open(&db.url).unwrap();
    again
        .create_set(&"s1".parse().unwrap(), &i("db-1"))
        .unwrap();
    db.store
        .with(|c| {
            link::execute(
                c,
                "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, 'later', 0)",
                &[&(schema::VERSION + 1)],
            )
        })
        .unwrap();
    let err = PgStore::open(&db.url).err().expect("refused").to_string();
    assert!(err.contains("newer than this conductor knows"), "{err}");
}

#[test]
fn the_store_connects_again_after_the_server_closed_its_connection() {
    let db = in_database();
    db.store
        .create_set(&"s1".parse().unwrap(), &i("db-1"))
        .unwrap();
    // The server ends every session of this database (as a restart would).
    let port = server_port();
    let admin = link::connect(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres"
    ))
    .unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    link::execute(
        &admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        &[&name],
    )
    .unwrap();
    // The first call after it may fail (the connection is found closed while in use);
    // the next one works.
    let mut worked = false;
    for _ in 0..3 {
        if db.store.set_metadata(&i("db-1"), "k", "v").is_ok() {
            worked = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(worked, "the store did not connect again");
    assert_eq!(db.store.metadata(&i("db-1")).unwrap().len(), 1);
}

#[test]
fn an_unreachable_store_says_where_it_looked() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = PgStore::open(&format!("postgresql://postgres@127.0.0.1:{port}/x"))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("cannot reach the PostgreSQL store"), "{err}");
    let err = PgStore::open("postgresql://[nonsense")
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("store_url"), "{err}");
}
