//! The kit's own tests: it starts what it says, isolates it, and cleans it up.

use tandem_testkit::{MariaDb, MariaDbOptions, Postgres};

#[test]
fn mariadb_starts_with_gtid_and_binlog_and_is_removed_on_drop() {
    let db = MariaDb::start(MariaDbOptions {
        server_id: 7,
        ..Default::default()
    })
    .unwrap();
    let row = db
        .sql("SELECT @@server_id, @@log_bin, @@gtid_strict_mode, @@log_slave_updates, @@sync_binlog, @@innodb_flush_log_at_trx_commit, @@port")
        .unwrap();
    assert_eq!(row, format!("7\t1\t1\t1\t1\t1\t{}", db.port()));
    db.sql("CREATE DATABASE t; CREATE TABLE t.x (id INT PRIMARY KEY); INSERT INTO t.x VALUES (1)")
        .unwrap();
    assert_eq!(db.sql("SELECT @@gtid_binlog_pos").unwrap(), "0-7-3");
    let dir = db.dir().to_owned();
    let pid = db.pid().unwrap();
    drop(db);
    assert!(!dir.exists(), "{} was not removed", dir.display());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "mariadbd {pid} still runs"
    );
}

#[test]
fn mariadb_instances_are_isolated_and_survive_kill_and_restart() {
    let mut a = MariaDb::start(MariaDbOptions {
        server_id: 1,
        ..Default::default()
    })
    .unwrap();
    let b = MariaDb::start(MariaDbOptions {
        server_id: 2,
        ..Default::default()
    })
    .unwrap();
    assert_ne!(a.port(), b.port());
    a.sql("CREATE DATABASE only_on_a").unwrap();
    assert!(!b.sql("SHOW DATABASES").unwrap().contains("only_on_a"));

    a.kill();
    assert!(a.sql("SELECT 1").is_err(), "a killed engine still answers");
    a.restart().unwrap();
    assert!(a.sql("SHOW DATABASES").unwrap().contains("only_on_a"));
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let (dir_tx, dir_rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let db = MariaDb::start(MariaDbOptions::default()).unwrap();
        dir_tx
            .send((db.dir().to_owned(), db.pid().unwrap()))
            .unwrap();
        panic!("simulated test failure");
    })
    .join();
    assert!(result.is_err());
    let (dir, pid) = dir_rx.recv().unwrap();
    assert!(!dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn postgres_starts_private_and_is_removed_on_drop() {
    let pg = Postgres::start().unwrap();
    let row = pg
        .sql("SELECT current_setting('port'), current_setting('wal_level'), current_setting('wal_log_hints'), pg_is_in_recovery()")
        .unwrap();
    assert_eq!(row, format!("{}|replica|on|f", pg.port()));
    pg.sql("CREATE TABLE x (id int primary key); INSERT INTO x VALUES (1)")
        .unwrap();
    assert_eq!(pg.sql("SELECT count(*) FROM x").unwrap(), "1");
    let dir = pg.datadir();
    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(!dir.exists());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
