//! MariaDB with GTID replication, over mysql_async.
//!
//! Replication: `MASTER_USE_GTID=slave_pos` under `gtid_strict_mode`, `log_slave_updates`
//! on every server so any replica can be promoted and others can chain from it.
//! Durability: `sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`.
//! Lag: a heartbeat row the master's agent rewrites every interval; a replica's lag is
//! the age of the newest heartbeat it has applied (true also when the master is idle or
//! the replica's SQL thread is stopped, where `Seconds_Behind_Master` is blind).
//!
//! The adapter is split by concern: [`observe`], [`replication`], [`lifecycle`]
//! (settings, writability, the fence, stop/start/install), [`copies`] and [`backup`]
//! (physical copies through mariabackup), [`fence`] (making read-only bind every
//! client). This file holds the connection, the helpers they share, and the `Engine`
//! implementation, which hands each method to its module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row};
use tandem_proto::{EngineKind, GtidSet, InstanceId, Position, SourceEndpoint};

use super::{
    server_id_for, BackupStream, ConfigOutcome, Engine, EngineError, Observation, Pulse,
    ReplicationLogin,
};
use crate::config::{EngineSettings, MariadbConfig};
use crate::operations::Progress;

/// The longest any single statement may take before the engine counts as hung.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the source gets to accept our credentials during an attach check.
const SOURCE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an attach waits for both replication threads to run.
const ATTACH_START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct MariaDb {
    pool: Pool,
    pub(super) config: EngineSettings,
    /// The `[engine.mariadb]` section.
    pub(super) own: MariadbConfig,
    /// Transactions in this replica's binary log that replication did not apply, as
    /// the last observation saw them (see [`MariaDb::written_here`]).
    written_here_before: std::sync::Mutex<GtidSet>,
}

impl MariaDb {
    /// The `CHANGE MASTER` options that make a replica connect over TLS and verify its
    /// source's certificate against the CA, when one is configured.
    fn master_tls(&self) -> String {
        match &self.config.tls_ca_file {
            Some(ca) => format!(
                ", MASTER_SSL = 1, MASTER_SSL_CA = '{}', MASTER_SSL_VERIFY_SERVER_CERT = 1",
                ca.display()
            ),
            None => String::new(),
        }
    }

    pub fn new(config: EngineSettings, own: MariadbConfig) -> MariaDb {
        let mut opts = OptsBuilder::default()
            .user(Some(config.admin_user.clone()))
            .pass(config.admin_password.clone())
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(PoolConstraints::new(0, POOL_SIZE).expect("0 <= POOL_SIZE"))
                    .with_inactive_connection_ttl(Duration::from_secs(30)),
            );
        opts = match &own.socket {
            Some(s) => opts.socket(Some(s.to_string_lossy().into_owned())),
            None => opts
                .ip_or_hostname(config.host.clone())
                .tcp_port(config.port),
        };
        MariaDb {
            pool: Pool::new(opts),
            config,
            own,
            written_here_before: Default::default(),
        }
    }

    /// Transactions this server holds that replication did not bring: those in its
    /// binary log (`gtid_binlog_pos`) beyond what its applier recorded
    /// (`gtid_slave_pos`, which attach sets to everything the server held then). On a
    /// replica that is a write made on it: an errant transaction. Read in that order,
    /// so a replicated transaction is only ever seen here in the instant between its
    /// binlog write and its commit.
    async fn written_here(&self, c: &mut Conn) -> Result<GtidSet, EngineError> {
        let binlog = self.gtid(c, "gtid_binlog_pos").await?;
        let applied = self.gtid(c, "gtid_slave_pos").await?;
        Ok(binlog.beyond(&[&applied]))
    }

    /// What [`MariaDb::written_here`] found in the last observation and still finds
    /// now: a replicated transaction passes that window within one observation, a
    /// local write never does.
    async fn errant(&self, c: &mut Conn) -> Result<Option<String>, EngineError> {
        let now = self.written_here(c).await?;
        let applied = self.gtid(c, "gtid_slave_pos").await?;
        let before = std::mem::replace(
            &mut *self.written_here_before.lock().expect("poisoned"),
            now.clone(),
        );
        let persisting = before.beyond(&[&applied]);
        Ok((!persisting.is_empty()).then(|| {
            format!("holds transactions written on it, not received from its source: {now}")
        }))
    }

    /// A pooled connection that answers, its session as a new one's. An idle one may
    /// have been closed by the server since it was last used (a restart for a restore,
    /// a KILL): it is reset first (`COM_RESET_CONNECTION`, one round trip, as a ping
    /// is) and dropped if it does not answer, so a dead socket is never mistaken for a
    /// dead server. The reset also gives it the server's global settings as they are
    /// now: a connection idle in the pool while `configure_pair` changed
    /// `gtid_domain_id` or the auto-increment offset would otherwise write the agent's
    /// heartbeats and accounts into the old write stream. After as many tries as the
    /// pool holds connections, the last try's error is the server's.
    pub(super) async fn conn(&self) -> Result<Conn, EngineError> {
        for _ in 0..POOL_SIZE {
            let mut c = timed("connect", self.pool.get_conn()).await?;
            if timed("reset", c.reset()).await.is_ok() {
                return Ok(c);
            }
        }
        let mut c = timed("connect", self.pool.get_conn()).await?;
        timed("reset", c.reset()).await?;
        Ok(c)
    }

    pub(super) async fn exec(&self, conn: &mut Conn, sql: &str) -> Result<(), EngineError> {
        timed("statement", conn.query_drop(sql)).await
    }

    async fn slave_status(&self, conn: &mut Conn) -> Result<Option<Row>, EngineError> {
        timed(
            "SHOW SLAVE STATUS",
            conn.query_first::<Row, _>("SHOW SLAVE STATUS"),
        )
        .await
    }

    async fn gtid(&self, conn: &mut Conn, variable: &str) -> Result<GtidSet, EngineError> {
        let text: Option<String> = timed(
            "read GTID",
            conn.query_first(format!("SELECT @@{variable}")),
        )
        .await?;
        parse_gtid(text.as_deref().unwrap_or(""))
    }
}

/// The most connections the agent holds open to its server.
const POOL_SIZE: usize = 4;

pub(super) async fn timed<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, fut).await {
        Ok(r) => r.map_err(classify),
        Err(_) => Err(EngineError::Unavailable(format!(
            "MariaDB did not answer ({what}) within {STATEMENT_TIMEOUT:?}; it may be hung"
        ))),
    }
}

fn classify(e: mysql_async::Error) -> EngineError {
    match e {
        mysql_async::Error::Io(io) => EngineError::Unavailable(format!("MariaDB: {io}")),
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => {
            EngineError::Unavailable("MariaDB closed the connection".into())
        }
        // ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR.
        mysql_async::Error::Server(s) if s.code == 1045 || s.code == 1698 => {
            EngineError::LoginRefused(format!("MariaDB refused the login: {s}"))
        }
        mysql_async::Error::Server(s) => EngineError::Refused(format!("MariaDB refused: {s}")),
        other => EngineError::Internal(anyhow::anyhow!(other).context("MariaDB")),
    }
}

/// Whether the IO thread is connected to its source. After a lost connection MariaDB
/// keeps `Slave_IO_Running = Yes` while it waits to reconnect; only the state says the
/// source is gone, which is what a replica's confirmation of a lost master rests on.
fn receiving(io_running: &str, io_state: &str) -> bool {
    let state = io_state.to_ascii_lowercase();
    io_running == "Yes" && !state.contains("reconnect") && !state.starts_with("connecting")
}

/// Why a replica's history split from its source's, from the errors its threads
/// stopped on; `None` for errors that waiting or reconnecting can cure.
fn divergence(sql_errno: u32, sql_error: &str, io_errno: u32, io_error: &str) -> Option<String> {
    match (sql_errno, io_errno) {
        // ER_GTID_STRICT_OUT_OF_ORDER: a transaction arrived with a sequence this
        // server already has (from a write of its own) in that domain.
        (1950, _) => Some(format!("out-of-order transaction: {sql_error}")),
        // A row already there or missing: the data differs from the source's.
        (1062 | 1032, _) => Some(format!("data differs from the source: {sql_error}")),
        // ER_MASTER_FATAL_ERROR_READING_BINLOG about a GTID: the source lacks what
        // this replica holds (this replica is ahead of it, or on another history).
        (_, 1236) if io_error.contains("GTID") => Some(format!(
            "the source lacks this replica's position: {io_error}"
        )),
        _ => None,
    }
}

/// The GTID set of a position; another engine's position is a wrong request.
fn gtid_of(position: &Position) -> Result<&GtidSet, EngineError> {
    match position {
        Position::Gtid(g) => Ok(g),
        other => Err(EngineError::BadRequest(format!(
            "MariaDB positions are GTID sets, not {other}"
        ))),
    }
}

fn parse_gtid(text: &str) -> Result<GtidSet, EngineError> {
    text.parse()
        .map_err(|e| EngineError::Internal(anyhow::anyhow!("MariaDB reported a bad GTID: {e}")))
}

fn col<T: mysql_async::prelude::FromValue>(row: &Row, name: &str) -> Option<T> {
    row.get_opt::<Option<T>, _>(name)
        .and_then(|r| r.ok())
        .flatten()
}

/// Only what we generate or validate is ever put into SQL text; this is the check for
/// values that arrive in a command.
fn safe_token(what: &str, s: &str) -> Result<(), EngineError> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(EngineError::BadRequest(format!(
            "{what} must be 1-128 characters of letters, digits, '_', '-' and '.'"
        )));
    }
    Ok(())
}

/// The settings the agent owns, as (variable, wanted value, can be set live).
fn managed_settings(
    instance: &InstanceId,
    pair: Option<tandem_proto::PairSide>,
) -> Vec<(&'static str, String, bool)> {
    // A side of a master-master pair writes in a GTID domain of its own and mints
    // every second auto-increment key; any other server writes in domain 0.
    let (domain, increment, offset) = match pair {
        Some(side) => (
            side.domain(),
            tandem_proto::PairSide::AUTO_INCREMENT_INCREMENT,
            side.auto_increment_offset(),
        ),
        None => (0, 1, 1),
    };
    vec![
        ("gtid_domain_id", domain.to_string(), true),
        ("auto_increment_increment", increment.to_string(), true),
        ("auto_increment_offset", offset.to_string(), true),
        ("server_id", server_id_for(instance).to_string(), true),
        ("log_bin", "1".into(), false),
        ("log_slave_updates", "1".into(), false),
        ("binlog_format", "ROW".into(), true),
        ("gtid_strict_mode", "1".into(), true),
        ("sync_binlog", "1".into(), true),
        ("innodb_flush_log_at_trx_commit", "1".into(), true),
        // A replica notices a hung master within a second (with heartbeats every
        // 0.25 s, set at attach), so it can confirm the master is lost.
        ("slave_net_timeout", "1".into(), true),
        // A semi-sync replica that stops receiving first connects to its master to end
        // its dump thread; against a hung master that costs this long (seconds), on
        // the failover's path.
        ("rpl_semi_sync_slave_kill_conn_timeout", "1".into(), true),
    ]
}

mod backup;
mod copies;
mod fence;
mod lifecycle;
mod observe;
mod pause;
mod replication;
mod sessions;

// Each method is implemented in the module of its concern.
impl Engine for MariaDb {
    fn kind(&self) -> EngineKind {
        EngineKind::Mariadb
    }

    async fn probe(&self) -> Result<Pulse, EngineError> {
        MariaDb::probe(self).await
    }

    async fn observe(&self) -> Result<Observation, EngineError> {
        MariaDb::observe(self).await
    }

    async fn apply_managed_config(
        &self,
        instance: &InstanceId,
        pair: Option<tandem_proto::PairSide>,
    ) -> Result<ConfigOutcome, EngineError> {
        MariaDb::apply_managed_config(self, instance, pair).await
    }

    async fn set_writable(&self, writable: bool) -> Result<(), EngineError> {
        MariaDb::set_writable(self, writable).await
    }

    async fn remove_fencing_hazards(
        &self,
        accounts: &[String],
    ) -> Result<Vec<String>, EngineError> {
        MariaDb::remove_fencing_hazards(self, accounts).await
    }

    async fn fence(&self) -> Result<(), EngineError> {
        MariaDb::fence(self).await
    }

    async fn prepare_master(&self) -> Result<(), EngineError> {
        MariaDb::prepare_master(self).await
    }

    async fn write_heartbeat(&self) -> Result<(), EngineError> {
        MariaDb::write_heartbeat(self).await
    }

    async fn ensure_replication_user(
        &self,
        replica: &InstanceId,
        from: Option<&str>,
    ) -> Result<ReplicationLogin, EngineError> {
        MariaDb::ensure_replication_user(self, replica, from).await
    }

    async fn drop_replication_user(&self, replica: &InstanceId) -> Result<(), EngineError> {
        MariaDb::drop_replication_user(self, replica).await
    }

    async fn attach(
        &self,
        me: &InstanceId,
        source: &SourceEndpoint,
        login: &ReplicationLogin,
        position: Option<&Position>,
        applying: &crate::engine::Applying,
    ) -> Result<(), EngineError> {
        MariaDb::attach(self, me, source, login, position, applying).await
    }

    async fn detach(&self, me: &InstanceId) -> Result<(), EngineError> {
        MariaDb::detach(self, me).await
    }

    async fn latest_position(&self) -> Result<Position, EngineError> {
        MariaDb::latest_position(self).await
    }

    async fn wait_for_position(
        &self,
        position: &Position,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        MariaDb::wait_for_position(self, position, timeout).await
    }

    async fn set_semi_sync(
        &self,
        master: Option<Duration>,
        replica: bool,
    ) -> Result<(), EngineError> {
        MariaDb::set_semi_sync(self, master, replica).await
    }

    async fn drain(&self, timeout: Duration) -> Result<Position, EngineError> {
        MariaDb::drain(self, timeout).await
    }

    async fn pause_replication(&self, until: Option<&Position>) -> Result<Position, EngineError> {
        MariaDb::pause_replication(self, until).await
    }

    async fn databases(&self) -> Result<Vec<String>, EngineError> {
        MariaDb::databases(self).await
    }

    async fn resume_replication(&self, semi_sync: bool) -> Result<(), EngineError> {
        MariaDb::resume_replication(self, semi_sync).await
    }

    async fn backup_stream(
        &self,
        scratch: &Path,
        since: Option<&str>,
    ) -> Result<BackupStream, EngineError> {
        MariaDb::backup_stream(self, scratch, since).await
    }

    async fn unpack(
        &self,
        from: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
        dir: &Path,
        progress: &Progress,
    ) -> Result<(), EngineError> {
        MariaDb::unpack(self, from, dir, progress).await
    }

    async fn prepare(
        &self,
        full: &Path,
        incrementals: &[PathBuf],
    ) -> Result<Position, EngineError> {
        MariaDb::prepare(self, full, incrementals).await
    }

    fn staging_dir(&self, name: &str) -> PathBuf {
        MariaDb::staging_dir(self, name)
    }

    fn copy_size(&self) -> u64 {
        MariaDb::copy_size(self)
    }

    async fn install(&self, prepared: &Path) -> Result<(), EngineError> {
        MariaDb::install(self, prepared).await
    }

    async fn stop(&self) -> Result<(), EngineError> {
        MariaDb::stop(self).await
    }

    async fn start(&self) -> Result<(), EngineError> {
        MariaDb::start(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_histories_are_told_from_passing_errors() {
        let out_of_order = "An attempt was made to binlog GTID 0-1-12 which would create an \
                            out-of-order sequence number with existing GTID 0-2-12";
        let cases: &[(u32, &str, u32, &str, Option<&str>)] = &[
            (1950, out_of_order, 0, "", Some("out-of-order transaction")),
            (1062, "Duplicate entry '7'", 0, "", Some("data differs")),
            (1032, "Can't find record", 0, "", Some("data differs")),
            (
                0,
                "",
                1236,
                "Error: connecting slave requested to start from GTID 0-2-5, which is not in the master's binlog",
                Some("source lacks"),
            ),
            (0, "", 2003, "Can't connect to MySQL server", None),
            (0, "", 1236, "binlog truncated in the middle of event", None),
            (1146, "Table 'x.y' doesn't exist", 0, "", None),
            (0, "", 0, "", None),
        ];
        for (sql_errno, sql, io_errno, io, expect) in cases {
            let got = divergence(*sql_errno, sql, *io_errno, io);
            match expect {
                None => assert_eq!(got, None, "{sql_errno} {io_errno}"),
                Some(part) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(part)),
                    "{sql_errno} {io_errno}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn an_io_thread_waiting_to_reconnect_is_not_receiving() {
        assert!(receiving("Yes", "Waiting for master to send event"));
        assert!(!receiving(
            "Yes",
            "Waiting to reconnect after a failed master event read"
        ));
        assert!(!receiving(
            "Yes",
            "Reconnecting after a failed master event read"
        ));
        assert!(!receiving("Connecting", "Connecting to master"));
        assert!(!receiving("No", ""));
    }
}
