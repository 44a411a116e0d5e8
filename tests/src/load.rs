//! A client that inserts unique rows and remembers which were acknowledged, and an
//! observer that samples how many servers accept writes. Failure tests and benchmarks
//! assert "nothing acknowledged was lost" and "never two writable" from these records,
//! not from logs.
//!
//! The writer connects as the ordinary user `app` (password `apppw`). The observer
//! tries a write both as `app` and as the privileged `admin` (`ALL PRIVILEGES ON *.*`,
//! the kind of account applications should not use but do): `read_only` alone does not
//! stop the second. [`prepare`] creates both accounts and the tables on the master.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tandem_testkit::MariaDb;

/// Creates `app.w` and the user `app` on `master` (replicated to its replicas).
pub fn prepare(master: &MariaDb) {
    master
        .sql(
            "CREATE DATABASE IF NOT EXISTS app; \
             CREATE TABLE IF NOT EXISTS app.w (id BIGINT PRIMARY KEY, at DATETIME(6)); \
             CREATE TABLE IF NOT EXISTS app.probe (id BIGINT AUTO_INCREMENT PRIMARY KEY); \
             CREATE USER IF NOT EXISTS app@'%' IDENTIFIED BY 'apppw'; \
             GRANT INSERT, SELECT ON app.* TO app@'%'; \
             CREATE USER IF NOT EXISTS admin@'%' IDENTIFIED BY 'adminpw'; \
             GRANT ALL PRIVILEGES ON *.* TO admin@'%'",
        )
        .unwrap();
}

fn pool((host, port): &(String, u16)) -> mysql_async::Pool {
    pool_as((host, port), ("app", "apppw"))
}

/// A client of one server over the network, as an application on another machine is:
/// never through the server's unix socket (mysql_async switches to `@@socket` after a
/// TCP connect by default, which on a test machine reaches a server whose host is cut off
/// the network, as no remote client could).
fn pool_as((host, port): (&String, &u16), (user, password): (&str, &str)) -> mysql_async::Pool {
    mysql_async::Pool::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(host.clone())
            .tcp_port(*port)
            .prefer_socket(false)
            .user(Some(user))
            .pass(Some(password))
            .db_name(Some("app")),
    )
}

/// One acknowledged insert.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub id: u64,
    pub at: Instant,
    /// Index of the server (in the list given) that acknowledged it.
    pub server: usize,
}

/// Inserts a row every `every`, on the server that took the last one, trying the
/// others when it refuses (as a client behind a proxy would).
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Ack>>>,
    thread: std::thread::JoinHandle<u64>,
}

impl Writer {
    pub fn start(servers: Vec<(String, u16)>, every: Duration) -> Writer {
        Writer::start_numbered(servers, every, 0)
    }

    /// As [`Writer::start`], its rows numbered from `after + 1` (so that two writers
    /// at once never write the same row).
    pub fn start_numbered(servers: Vec<(String, u16)>, every: Duration, after: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let thread = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(write_loop(servers, every, after, acked, stop))
            })
        };
        Writer {
            stop,
            acked,
            thread,
        }
    }

    /// The first insert acknowledged after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Ack> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.at > t)
            .copied()
    }

    /// The first insert that server `server` (its index in the list given)
    /// acknowledged after `t`.
    pub fn first_ack_on_after(&self, server: usize, t: Instant) -> Option<Ack> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.at > t && a.server == server)
            .copied()
    }

    /// Stops; returns the inserts attempted and those acknowledged.
    pub fn finish(self) -> (u64, Vec<Ack>) {
        self.stop.store(true, Ordering::SeqCst);
        let attempted = self.thread.join().unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (attempted, acked)
    }
}

async fn write_loop(
    servers: Vec<(String, u16)>,
    every: Duration,
    after: u64,
    acked: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let pools: Vec<mysql_async::Pool> = servers.iter().map(pool).collect();
    let mut current = 0usize;
    let mut id = after;
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        id += 1;
        for k in 0..pools.len() {
            let i = (current + k) % pools.len();
            let insert = async {
                let mut result = Err(mysql_async::Error::Driver(
                    mysql_async::DriverError::ConnectionClosed,
                ));
                for _ in 0..2 {
                    let once = async {
                        let mut conn = pools[i].get_conn().await?;
                        conn.exec_drop("INSERT INTO w (id, at) VALUES (?, NOW(6))", (id,))
                            .await
                    };
                    result = once.await;
                    if !matches!(&result, Err(e) if dropped(e)) {
                        break;
                    }
                }
                result
            };
            // A commit may wait for a semi-sync acknowledgement: give it time.
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(300), insert).await {
                acked.lock().unwrap().push(Ack {
                    id,
                    at: Instant::now(),
                    server: i,
                });
                current = i;
                break;
            }
        }
    }
    id
}

/// Whether `e` says the connection is gone (its server ended the session, as a switch
/// does, or went away) rather than refusing the write. A dropped connection is tried
/// again at once on a new one, as an application's pool does (Go's `database/sql`
/// retries a bad connection, JDBC pools validate on borrow): a refusal is an answer, a
/// dead pooled connection is not, and counting it as one would put a whole tick into
/// every gap whatever the server did. The retry is the same insert (same id): if the
/// first did commit, the second fails on the key and the row is not counted as
/// acknowledged, which the loss checks allow.
fn dropped(e: &mysql_async::Error) -> bool {
    // 1927: ER_CONNECTION_KILLED, sent to a session ended while idle.
    e.is_fatal() || matches!(e, mysql_async::Error::Server(s) if s.code == 1927)
}

/// One observation: when, and per server whether it accepted writes.
pub type Sample = (Instant, Vec<bool>);

/// Every period (50 ms unless said otherwise), tries a write on every server, as the
/// ordinary user and as the privileged one (an insert, rolled back: nothing is
/// committed, so nothing replicates or becomes errant). A server accepts writes when
/// either succeeded; one that does not answer within 40 ms counts as not.
pub struct Observer {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Observer {
    pub fn start(servers: Vec<(String, u16)>) -> Observer {
        Observer::every(servers, Duration::from_millis(50))
    }

    pub fn every(servers: Vec<(String, u16)>, period: Duration) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(observe_loop(servers, period, samples, stop))
            })
        };
        Observer {
            stop,
            samples,
            thread,
        }
    }

    /// Stops; returns every sample (time, writable per server).
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        let samples = self.samples.lock().unwrap().clone();
        samples
    }
}

async fn observe_loop(
    servers: Vec<(String, u16)>,
    period: Duration,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) {
    let pools: Vec<[mysql_async::Pool; 2]> = servers
        .iter()
        .map(|(h, p)| {
            [
                pool_as((h, p), ("app", "apppw")),
                pool_as((h, p), ("admin", "adminpw")),
            ]
        })
        .collect();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let at = Instant::now();
        let writable = futures_util::future::join_all(pools.iter().map(|accounts| async move {
            let tries = futures_util::future::join_all(accounts.iter().map(accepts_a_write));
            tries.await.into_iter().any(|ok| ok)
        }))
        .await;
        samples.lock().unwrap().push((at, writable));
    }
}

/// Whether an insert succeeds on `pool`'s server within 40 ms; rolled back either way.
async fn accepts_a_write(pool: &mysql_async::Pool) -> bool {
    let attempt = async {
        let mut conn = pool.get_conn().await?;
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await?;
        let inserted = tx.query_drop("INSERT INTO probe () VALUES ()").await;
        tx.rollback().await?;
        inserted
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(40), attempt).await,
        Ok(Ok(()))
    )
}
