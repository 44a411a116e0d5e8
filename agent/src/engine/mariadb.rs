//! MariaDB with GTID replication, over mysql_async.
//!
//! Replication: `MASTER_USE_GTID=slave_pos` under `gtid_strict_mode`, `log_slave_updates`
//! on every server so any replica can be promoted and others can chain from it.
//! Durability: `sync_binlog=1`, `innodb_flush_log_at_trx_commit=1`.
//! Lag: a heartbeat row the master's agent rewrites every interval; a replica's lag is
//! the age of the newest heartbeat it has applied (true also when the master is idle or
//! the replica's SQL thread is stopped, where `Seconds_Behind_Master` is blind).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row};
use rand::distr::{Alphanumeric, SampleString};
use tandem_proto::Secret;
use tandem_proto::{
    EngineKind, GtidSet, InstanceId, Lag, LagSource, Position, ReplicationState, SemiSync,
    SourceEndpoint,
};

use crate::operations::Progress;

use super::{
    replica_of_user, replication_user, server_id_for, BackupStream, ConfigOutcome, Engine,
    EngineError, Observation, Pulse, ReplicationLogin,
};
use crate::config::EngineConfig;

/// The longest any single statement may take before the engine counts as hung.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the source gets to accept our credentials during an attach check.
const SOURCE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an attach waits for both replication threads to run.
const ATTACH_START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct MariaDb {
    pool: Pool,
    pub(super) config: EngineConfig,
    admin_password: Option<String>,
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

    pub fn new(config: EngineConfig, admin_password: Option<String>) -> MariaDb {
        let mut opts = OptsBuilder::default()
            .user(Some(config.admin_user.clone()))
            .pass(admin_password.clone())
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(PoolConstraints::new(0, 4).expect("0 <= 4"))
                    .with_inactive_connection_ttl(Duration::from_secs(30)),
            );
        opts = match &config.socket {
            Some(s) => opts.socket(Some(s.to_string_lossy().into_owned())),
            None => opts
                .ip_or_hostname(config.host.clone())
                .tcp_port(config.port),
        };
        MariaDb {
            pool: Pool::new(opts),
            admin_password,
            config,
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

    pub(super) async fn conn(&self) -> Result<Conn, EngineError> {
        timed("connect", self.pool.get_conn()).await
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
fn managed_settings(instance: &InstanceId) -> Vec<(&'static str, String, bool)> {
    vec![
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

impl Engine for MariaDb {
    fn kind(&self) -> EngineKind {
        EngineKind::Mariadb
    }

    async fn probe(&self) -> Result<Pulse, EngineError> {
        let mut c = self.conn().await?;
        let row = self.slave_status(&mut c).await?;
        let receiving = row.as_ref().map(|row| {
            receiving(
                &col::<String>(row, "Slave_IO_Running").unwrap_or_default(),
                &col::<String>(row, "Slave_IO_State").unwrap_or_default(),
            )
        });
        let applying = row
            .as_ref()
            .map(|row| col::<String>(row, "Slave_SQL_Running").as_deref() == Some("Yes"));
        Ok(Pulse {
            receiving,
            applying,
        })
    }

    async fn observe(&self) -> Result<Observation, EngineError> {
        let mut c = self.conn().await?;
        let (version, read_only, sync_binlog, flush, strict, slave_updates, binlog_format): (
            String,
            u8,
            u32,
            u32,
            u8,
            u8,
            String,
        ) = timed(
            "read variables",
            c.query_first(
                "SELECT @@version, @@read_only, @@sync_binlog, @@innodb_flush_log_at_trx_commit, \
                 @@gtid_strict_mode, @@log_slave_updates, @@binlog_format",
            ),
        )
        .await?
        .ok_or_else(|| EngineError::Internal(anyhow::anyhow!("no row from SELECT @@version")))?;
        let position = self.gtid(&mut c, "gtid_current_pos").await?;

        let slave = self.slave_status(&mut c).await?;
        let (source, mut replication, seconds_behind_master) = match &slave {
            None => (None, None, None),
            Some(row) => {
                let host: String = col(row, "Master_Host").unwrap_or_default();
                let port: u16 = col(row, "Master_Port").unwrap_or(0);
                let io: String = col(row, "Slave_IO_Running").unwrap_or_default();
                let io_state: String = col(row, "Slave_IO_State").unwrap_or_default();
                let sql: String = col(row, "Slave_SQL_Running").unwrap_or_default();
                let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
                let received = col::<String>(row, "Gtid_IO_Pos")
                    .and_then(|g| g.parse::<GtidSet>().ok())
                    .map(Position::Gtid);
                let diverged = divergence(
                    col(row, "Last_SQL_Errno").unwrap_or(0),
                    &col::<String>(row, "Last_SQL_Error").unwrap_or_default(),
                    col(row, "Last_IO_Errno").unwrap_or(0),
                    &col::<String>(row, "Last_IO_Error").unwrap_or_default(),
                );
                (
                    Some((host, port)),
                    Some(ReplicationState {
                        receiving: receiving(&io, &io_state),
                        applying: sql == "Yes",
                        last_receive_error: nonempty(col(row, "Last_IO_Error")),
                        last_apply_error: nonempty(col(row, "Last_SQL_Error")),
                        received,
                        diverged,
                        delay_s: col(row, "SQL_Delay").unwrap_or(0),
                    }),
                    col::<u64>(row, "Seconds_Behind_Master"),
                )
            }
        };

        match replication.as_mut() {
            Some(r) if r.diverged.is_none() => r.diverged = self.errant(&mut c).await?,
            Some(_) => {}
            None => *self.written_here_before.lock().expect("poisoned") = GtidSet::empty(),
        }

        let users: Vec<String> = timed(
            "list replicas",
            c.query(
                "SELECT USER FROM information_schema.PROCESSLIST \
                 WHERE COMMAND LIKE 'Binlog Dump%' AND USER LIKE 'tandem\\_repl\\_%'",
            ),
        )
        .await?;
        let mut replicas: Vec<InstanceId> =
            users.iter().filter_map(|u| replica_of_user(u)).collect();
        replicas.sort();
        replicas.dedup();

        let lag = if slave.is_some() {
            // The table may not exist yet (master never enabled): no heartbeat lag then.
            let age: Option<Option<i64>> = c
                .query_first(
                    "SELECT TIMESTAMPDIFF(MICROSECOND, ts, UTC_TIMESTAMP(6)) \
                     FROM tandem.heartbeat WHERE id = 1",
                )
                .await
                .ok();
            age.flatten().map(|micros| Lag {
                seconds: (micros.max(0) as f64) / 1e6,
                source: LagSource::HeartbeatTable,
            })
        } else {
            None
        };

        let semi: Vec<(String, String)> = timed(
            "read semi-sync status",
            c.query(
                "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME IN ('RPL_SEMI_SYNC_MASTER_STATUS', 'RPL_SEMI_SYNC_SLAVE_STATUS') \
                 UNION ALL SELECT 'MASTER_ENABLED', @@rpl_semi_sync_master_enabled",
            ),
        )
        .await?;
        let on = |name: &str| {
            semi.iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && (v == "ON" || v == "1"))
        };
        let semi_sync = if on("MASTER_ENABLED") {
            Some(if on("RPL_SEMI_SYNC_MASTER_STATUS") {
                SemiSync::Active
            } else {
                SemiSync::FallenBack
            })
        } else if on("RPL_SEMI_SYNC_SLAVE_STATUS") {
            Some(SemiSync::Acknowledging)
        } else {
            None
        };

        let fencing_hazards = self.read_only_bypass_accounts(&mut c).await?;

        let mut settings = BTreeMap::new();
        settings.insert("sync_binlog".into(), sync_binlog.to_string());
        settings.insert("innodb_flush_log_at_trx_commit".into(), flush.to_string());
        settings.insert("gtid_strict_mode".into(), strict.to_string());
        settings.insert("log_slave_updates".into(), slave_updates.to_string());
        settings.insert("binlog_format".into(), binlog_format);
        settings.insert("read_only".into(), read_only.to_string());

        Ok(Observation {
            semi_sync,
            version,
            writable: read_only == 0,
            source,
            replicas,
            position: Position::Gtid(position),
            replication,
            lag,
            seconds_behind_master,
            settings,
            fencing_hazards,
        })
    }

    async fn apply_managed_config(
        &self,
        instance: &InstanceId,
    ) -> Result<ConfigOutcome, EngineError> {
        let wanted = managed_settings(instance);
        if let Some(path) = &self.config.managed_config {
            write_include(path, &wanted).map_err(EngineError::Internal)?;
        }
        let mut c = self.conn().await?;
        let mut outcome = ConfigOutcome::default();
        for (name, value, live) in &wanted {
            let current: Option<String> = timed(
                "read setting",
                c.query_first(format!("SELECT @@GLOBAL.{name}")),
            )
            .await?;
            let current = current.unwrap_or_default();
            let same = current.eq_ignore_ascii_case(value)
                || (value == "1" && current.eq_ignore_ascii_case("ON"));
            if same {
                continue;
            }
            if *live {
                // Numeric variables refuse a quoted value; enumerations take one.
                let literal = if value.bytes().all(|b| b.is_ascii_digit()) {
                    value.clone()
                } else {
                    format!("'{value}'")
                };
                match self
                    .exec(&mut c, &format!("SET GLOBAL {name} = {literal}"))
                    .await
                {
                    Ok(()) => outcome.applied_live.push(format!("{name}={value}")),
                    // One refused setting must not keep the others from being applied.
                    Err(e) => outcome.restart_needed.push(format!(
                        "{name} is {current}, wants {value}, not settable live: {e}"
                    )),
                }
            } else {
                outcome
                    .restart_needed
                    .push(format!("{name} is {current}, wants {value}"));
            }
        }
        Ok(outcome)
    }

    async fn set_writable(&self, writable: bool) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        if writable {
            if let Some(row) = self.slave_status(&mut c).await? {
                let host: String = col(&row, "Master_Host").unwrap_or_default();
                let port: u16 = col(&row, "Master_Port").unwrap_or(0);
                return Err(EngineError::BadRequest(format!(
                    "this server replicates from {host}:{port}; a replica is never made \
                     writable: detach it first"
                )));
            }
        }
        if writable {
            return self.exec(&mut c, "SET GLOBAL read_only = 0").await;
        }
        let was_read_only: u8 = timed("read read_only", c.query_first("SELECT @@read_only"))
            .await?
            .unwrap_or(0);
        self.exec(&mut c, "SET GLOBAL read_only = 1").await?;
        if was_read_only == 0 {
            let ended = self.end_client_sessions(&mut c).await?;
            if ended > 0 {
                tracing::info!(ended, "read-only: client sessions ended");
            }
        }
        Ok(())
    }

    async fn remove_fencing_hazards(
        &self,
        accounts: &[String],
    ) -> Result<Vec<String>, EngineError> {
        self.revoke_read_only_bypass(accounts).await
    }

    async fn fence(&self) -> Result<(), EngineError> {
        // SET read_only waits for commits in progress; once it is waiting, new writes
        // queue behind it. A commit waiting for a semi-sync acknowledgement would hold
        // it for the whole semi-sync timeout and then be acknowledged to its client
        // (asynchronously: a write the new master never sees). Its session is killed
        // instead: the client gets an error, not an acknowledgement.
        let mut c = self.conn().await?;
        let set = tokio::spawn(async move { c.query_drop("SET GLOBAL read_only = 1").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !set.is_finished() {
            let mut k = self.conn().await?;
            let stuck: Vec<u64> = timed(
                "list commits in flight",
                k.query(
                    "SELECT ID FROM information_schema.PROCESSLIST \
                     WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Binlog Dump', 'Daemon') \
                     AND (STATE LIKE '%semi-sync%' OR STATE LIKE '%commit%')",
                ),
            )
            .await?;
            for id in &stuck {
                let _ = k.query_drop(format!("KILL CONNECTION {id}")).await;
            }
            tracing::warn!(
                killed = stuck.len(),
                "fence: sessions stuck in commit were killed"
            );
        }
        match tokio::time::timeout(STATEMENT_TIMEOUT, set).await {
            Ok(Ok(Ok(()))) => {
                let mut k = self.conn().await?;
                let ended = self.end_client_sessions(&mut k).await?;
                tracing::warn!(ended, "fence: read-only, client sessions ended");
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(classify(e)),
            Ok(Err(e)) => Err(EngineError::Internal(anyhow::anyhow!(e))),
            Err(_) => Err(EngineError::Unavailable(format!(
                "MariaDB did not go read-only within {STATEMENT_TIMEOUT:?}"
            ))),
        }
    }

    async fn prepare_master(&self) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        if self.slave_status(&mut c).await?.is_some() {
            return Err(EngineError::BadRequest(
                "this server is a replica; detach it before enabling it as a master".into(),
            ));
        }
        let log_bin: u8 = timed("read log_bin", c.query_first("SELECT @@log_bin"))
            .await?
            .unwrap_or(0);
        if log_bin != 1 {
            return Err(EngineError::Refused(
                "the binary log is off; a master needs log_bin (restart with the managed \
                 configuration)"
                    .into(),
            ));
        }
        self.exec(&mut c, "CREATE DATABASE IF NOT EXISTS tandem")
            .await?;
        self.exec(
            &mut c,
            "CREATE TABLE IF NOT EXISTS tandem.heartbeat (id TINYINT UNSIGNED PRIMARY KEY, \
             ts DATETIME(6) NOT NULL, server_id INT UNSIGNED NOT NULL) ENGINE=InnoDB",
        )
        .await
    }

    async fn write_heartbeat(&self) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        // The agent's account bypasses read_only; a heartbeat on a read-only server
        // would be a transaction the new master never saw.
        let read_only: u8 = timed("read read_only", c.query_first("SELECT @@read_only"))
            .await?
            .unwrap_or(1);
        if read_only != 0 || self.slave_status(&mut c).await?.is_some() {
            return Ok(());
        }
        self.exec(
            &mut c,
            "INSERT INTO tandem.heartbeat (id, ts, server_id) VALUES (1, UTC_TIMESTAMP(6), @@server_id) \
             ON DUPLICATE KEY UPDATE ts = VALUES(ts), server_id = VALUES(server_id)",
        )
        .await
    }

    async fn ensure_replication_user(
        &self,
        replica: &InstanceId,
        from: Option<&str>,
    ) -> Result<ReplicationLogin, EngineError> {
        let host = account_host(from)?;
        let mut c = self.conn().await?;
        if self.slave_status(&mut c).await?.is_some() {
            // A write here would be an errant transaction on a replica.
            return Err(EngineError::BadRequest(
                "this server is a replica; replication users are created on the master".into(),
            ));
        }
        let user = replication_user(replica);
        let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
        // With engine TLS configured, the account logs in over TLS only.
        let require = if self.config.tls_ca_file.is_some() {
            " REQUIRE SSL"
        } else {
            ""
        };
        // The replica's accounts for other addresses (it moved, or was made before
        // accounts were limited to one address) go first.
        for other in account_hosts(&mut c, &user).await? {
            if other != host {
                self.exec(&mut c, &format!("DROP USER IF EXISTS '{user}'@'{other}'"))
                    .await?;
            }
        }
        self.exec(
            &mut c,
            &format!(
                "CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{password}'{require}"
            ),
        )
        .await?;
        self.exec(
            &mut c,
            &format!("ALTER USER '{user}'@'{host}' IDENTIFIED BY '{password}'{require}"),
        )
        .await?;
        self.exec(
            &mut c,
            &format!("GRANT REPLICATION SLAVE ON *.* TO '{user}'@'{host}'"),
        )
        .await?;
        Ok(ReplicationLogin {
            user,
            password: Secret::new(password),
        })
    }

    async fn drop_replication_user(&self, replica: &InstanceId) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        let user = replication_user(replica);
        for host in account_hosts(&mut c, &user).await? {
            self.exec(&mut c, &format!("DROP USER IF EXISTS '{user}'@'{host}'"))
                .await?;
        }
        // Dropping a user does not end its sessions: end the binlog dump so the replica
        // really loses access now.
        let ids: Vec<u64> = timed(
            "list sessions",
            c.query(format!(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}'"
            )),
        )
        .await?;
        for id in ids {
            let _ = c.query_drop(format!("KILL CONNECTION {id}")).await;
        }
        Ok(())
    }

    async fn attach(
        &self,
        me: &InstanceId,
        source: &SourceEndpoint,
        login: &ReplicationLogin,
        position: Option<&Position>,
        delay: Duration,
    ) -> Result<(), EngineError> {
        if &source.instance == me {
            return Err(EngineError::BadRequest(format!(
                "{me} cannot replicate from itself"
            )));
        }
        safe_token("the source host", &source.host)?;
        safe_token("the replication user", &login.user)?;
        safe_token("the replication password", login.password.expose())?;
        let gtid = match position {
            None => None,
            Some(Position::Gtid(g)) => Some(g.clone()),
            Some(other) => {
                return Err(EngineError::BadRequest(format!(
                    "MariaDB positions are GTID sets, not {other}"
                )))
            }
        };

        // Everything that can be wrong with the request is checked before anything
        // changes: reachability, credentials, and that the source is not this server.
        let mut c = self.conn().await?;
        let my_server_id: u32 = timed("read server_id", c.query_first("SELECT @@server_id"))
            .await?
            .unwrap_or(0);
        let source_server_id =
            check_source(source, login, self.config.tls_ca_file.as_deref()).await?;
        if source_server_id == my_server_id {
            return Err(EngineError::BadRequest(format!(
                "source {} at {}:{} is this server itself (server_id {my_server_id})",
                source.instance, source.host, source.port
            )));
        }

        let was_read_only: u8 = timed("read read_only", c.query_first("SELECT @@read_only"))
            .await?
            .unwrap_or(1);
        // Read-only first: from here on no client write can become an errant transaction.
        self.exec(&mut c, "SET GLOBAL read_only = 1").await?;
        self.exec(&mut c, "STOP SLAVE").await?;
        let start_at = match &gtid {
            Some(g) => g.to_string(),
            // What this server holds already; with log_slave_updates that is everything
            // it applied as a replica too.
            None => self.gtid(&mut c, "gtid_binlog_pos").await?.to_string(),
        };
        self.exec(&mut c, &format!("SET GLOBAL gtid_slave_pos = '{start_at}'"))
            .await?;
        self.exec(
            &mut c,
            &format!(
                "CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = {}, MASTER_USER = '{}', \
                 MASTER_PASSWORD = '{}', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, \
                 MASTER_HEARTBEAT_PERIOD = 0.25, MASTER_DELAY = {}{}",
                source.host,
                source.port,
                login.user,
                login.password.expose(),
                delay.as_secs(),
                self.master_tls()
            ),
        )
        .await?;
        self.exec(&mut c, "START SLAVE").await?;

        let deadline = tokio::time::Instant::now() + ATTACH_START_TIMEOUT;
        loop {
            let row = self.slave_status(&mut c).await?;
            let (io, sql, io_err, sql_err) = match &row {
                Some(r) => (
                    col::<String>(r, "Slave_IO_Running").unwrap_or_default(),
                    col::<String>(r, "Slave_SQL_Running").unwrap_or_default(),
                    col::<String>(r, "Last_IO_Error").unwrap_or_default(),
                    col::<String>(r, "Last_SQL_Error").unwrap_or_default(),
                ),
                None => Default::default(),
            };
            if io == "Yes" && sql == "Yes" {
                return Ok(());
            }
            let failure = if !sql_err.is_empty() {
                Some(sql_err)
            } else if !io_err.is_empty() && io != "Connecting" {
                Some(io_err)
            } else if tokio::time::Instant::now() > deadline {
                Some(format!(
                    "replication did not start within {ATTACH_START_TIMEOUT:?} (IO {io}, SQL {sql})"
                ))
            } else {
                None
            };
            if let Some(why) = failure {
                // Undo: the server goes back to what it was.
                let _ = c.query_drop("STOP SLAVE").await;
                let _ = c.query_drop("RESET SLAVE ALL").await;
                if was_read_only == 0 {
                    let _ = c.query_drop("SET GLOBAL read_only = 0").await;
                }
                return Err(EngineError::Refused(format!(
                    "replication from {} did not start: {why}",
                    source.instance
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn detach(&self, me: &InstanceId) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        if self.slave_status(&mut c).await?.is_none() {
            return Err(EngineError::BadRequest(format!(
                "{me} is not a replica; there is nothing to detach"
            )));
        }
        self.exec(&mut c, "STOP SLAVE").await?;
        self.exec(&mut c, "RESET SLAVE ALL").await?;
        // Our own copy of our replication account arrived through replication; it must
        // not outlive the attachment. Not binlogged: it is nobody else's business.
        self.exec(&mut c, "SET SESSION sql_log_bin = 0").await?;
        let user = replication_user(me);
        let mut dropped = Ok(());
        for host in account_hosts(&mut c, &user).await? {
            dropped = dropped.and(
                c.query_drop(format!("DROP USER IF EXISTS '{user}'@'{host}'"))
                    .await,
            );
        }
        let _ = c.query_drop("SET SESSION sql_log_bin = 1").await;
        dropped.map_err(classify)
    }

    async fn latest_position(&self) -> Result<Position, EngineError> {
        let mut c = self.conn().await?;
        Ok(Position::Gtid(self.gtid(&mut c, "gtid_current_pos").await?))
    }

    async fn wait_for_position(
        &self,
        position: &Position,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let Position::Gtid(target) = position else {
            return Err(EngineError::BadRequest(format!(
                "MariaDB positions are GTID sets, not {position}"
            )));
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // Polled rather than MASTER_GTID_WAIT: it also works on a server that is not (or
        // no longer) a replica, and a hung engine cannot hold the command past its deadline.
        loop {
            let mut c = self.conn().await?;
            let current = self.gtid(&mut c, "gtid_current_pos").await?;
            // A replica whose applier stopped on a split history never gets there.
            if let Some(row) = self.slave_status(&mut c).await? {
                if let Some(why) = divergence(
                    col(&row, "Last_SQL_Errno").unwrap_or(0),
                    &col::<String>(&row, "Last_SQL_Error").unwrap_or_default(),
                    col(&row, "Last_IO_Errno").unwrap_or(0),
                    &col::<String>(&row, "Last_IO_Error").unwrap_or_default(),
                ) {
                    return Err(EngineError::Diverged(format!(
                        "this replica cannot reach {target} (at {current}): {why}"
                    )));
                }
            }
            match current.partial_cmp(target) {
                Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal) => return Ok(()),
                None => {
                    return Err(EngineError::Refused(format!(
                        "this server's position {current} has diverged from {target}: it holds \
                         transactions the target does not"
                    )))
                }
                Some(std::cmp::Ordering::Less) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::NotReached(format!(
                    "position {target} not reached within {timeout:?} (at {current})"
                )));
            }
            drop(c);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn set_semi_sync(
        &self,
        master: Option<Duration>,
        replica: bool,
    ) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        match master {
            Some(timeout) => {
                // AFTER_SYNC: a commit is acknowledged to its client only once a replica
                // has it, so a failover to the most advanced replica loses none.
                for sql in [
                    "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'".to_string(),
                    "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON".to_string(),
                    format!(
                        "SET GLOBAL rpl_semi_sync_master_timeout = {}",
                        timeout.as_millis().max(1)
                    ),
                    "SET GLOBAL rpl_semi_sync_master_enabled = ON".to_string(),
                ] {
                    self.exec(&mut c, &sql).await?;
                }
            }
            None => {
                self.exec(&mut c, "SET GLOBAL rpl_semi_sync_master_enabled = OFF")
                    .await?
            }
        }
        // Takes effect when the IO thread (re)starts: set before attaching.
        self.exec(
            &mut c,
            if replica {
                "SET GLOBAL rpl_semi_sync_slave_enabled = ON"
            } else {
                "SET GLOBAL rpl_semi_sync_slave_enabled = OFF"
            },
        )
        .await
    }

    async fn drain(&self, timeout: Duration) -> Result<Position, EngineError> {
        let mut c = self.conn().await?;
        if self.slave_status(&mut c).await?.is_none() {
            return Err(EngineError::BadRequest(
                "this server is not a replica; there is no relay log to drain".into(),
            ));
        }
        self.exec(&mut c, "STOP SLAVE IO_THREAD").await?;
        // Read after the IO thread stopped: nothing arrives any more.
        let row = self.slave_status(&mut c).await?.ok_or_else(|| {
            EngineError::Refused("the replication source vanished while draining".into())
        })?;
        let received = col::<String>(&row, "Gtid_IO_Pos").unwrap_or_default();
        drop(c);
        if !received.trim().is_empty() {
            let target = Position::Gtid(parse_gtid(&received)?);
            self.wait_for_position(&target, timeout)
                .await
                .map_err(|e| match e {
                    EngineError::NotReached(m) => EngineError::NotReached(format!(
                        "the relay log was not applied in time: {m}"
                    )),
                    other => other,
                })?;
        }
        let mut c = self.conn().await?;
        let errant = self.written_here(&mut c).await?;
        if !errant.is_empty() {
            return Err(EngineError::Diverged(format!(
                "it holds {errant}, written on it and never received from its source"
            )));
        }
        self.latest_position().await
    }

    async fn backup_stream(
        &self,
        scratch: &Path,
        since: Option<&str>,
    ) -> Result<BackupStream, EngineError> {
        let version: String = {
            let mut c = self.conn().await?;
            timed("read version", c.query_first("SELECT @@version"))
                .await?
                .unwrap_or_default()
        };
        super::mariadb_backup::stream(
            &self.config,
            self.admin_password.as_deref(),
            version,
            scratch,
            since,
        )
        .await
    }

    async fn unpack(
        &self,
        from: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
        dir: &Path,
        progress: &Progress,
    ) -> Result<(), EngineError> {
        super::mariadb_backup::unpack(from, dir, progress).await
    }

    async fn prepare(
        &self,
        full: &Path,
        incrementals: &[PathBuf],
    ) -> Result<Position, EngineError> {
        super::mariadb_backup::prepare(full, incrementals).await
    }

    fn staging_dir(&self, name: &str) -> PathBuf {
        sibling(&self.config.data_dir, name)
    }

    fn copy_size(&self) -> u64 {
        // mariabackup copies the tablespaces and the redo log, never the binary or
        // relay logs (`<name>-bin.000042` and their index).
        fn is_log(name: &str) -> bool {
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
            stem.ends_with("-bin")
                && (ext == "index" || (!ext.is_empty() && ext.bytes().all(|b| b.is_ascii_digit())))
        }
        fn size(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => size(&e.path()),
                    Ok(m) if !is_log(&e.file_name().to_string_lossy()) => m.len(),
                    _ => 0,
                })
                .sum()
        }
        size(&self.config.data_dir)
    }

    async fn install(&self, prepared: &Path) -> Result<(), EngineError> {
        let data = self.config.data_dir.clone();
        let previous = sibling(&data, "tandem-previous");
        let failed = sibling(&data, "tandem-failed");
        // The new directory gets the old one's owner and mode before the engine stops,
        // to keep the stopped window short.
        let owner = std::fs::metadata(&data)
            .map_err(|e| EngineError::Internal(anyhow::anyhow!("stat {}: {e}", data.display())))?;
        let prepared_owned = prepared.to_owned();
        tokio::task::spawn_blocking(move || give_owner(&prepared_owned, &owner))
            .await
            .map_err(|e| EngineError::Internal(e.into()))?
            .map_err(EngineError::Internal)?;
        let _ = tokio::fs::remove_dir_all(&previous).await;
        let _ = tokio::fs::remove_dir_all(&failed).await;

        self.stop().await?;
        let swapped = std::fs::rename(&data, &previous).and_then(|()| {
            std::fs::rename(prepared, &data).inspect_err(|_| {
                let _ = std::fs::rename(&previous, &data);
            })
        });
        if let Err(e) = swapped {
            let _ = self.start().await;
            return Err(EngineError::Internal(anyhow::anyhow!(
                "could not swap {} for the prepared copy {}: {e}; the old data directory \
                 is in place",
                data.display(),
                prepared.display()
            )));
        }
        match self.start().await {
            Ok(()) => {
                let _ = tokio::fs::remove_dir_all(&previous).await;
                Ok(())
            }
            Err(e) => {
                let _ = self.stop().await;
                let back = std::fs::rename(&data, &failed)
                    .and_then(|()| std::fs::rename(&previous, &data));
                let restarted = self.start().await;
                Err(EngineError::Refused(format!(
                    "the engine did not start on the new data ({e}); {}",
                    match (back, restarted) {
                        (Ok(()), Ok(())) => format!(
                            "the previous data directory was put back and started; the new \
                             one is kept in {}",
                            failed.display()
                        ),
                        (Err(b), _) => format!("the previous data could not be put back: {b}"),
                        (Ok(()), Err(r)) => {
                            format!("the previous data was put back but did not start: {r}")
                        }
                    }
                )))
            }
        }
    }

    async fn stop(&self) -> Result<(), EngineError> {
        run_command("stop", self.config.stop_command.as_deref()).await
    }

    async fn start(&self) -> Result<(), EngineError> {
        run_command("start", self.config.start_command.as_deref()).await
    }
}

/// Connects to the source as the replica will, and returns its server_id.
async fn check_source(
    source: &SourceEndpoint,
    login: &ReplicationLogin,
    tls_ca: Option<&Path>,
) -> Result<u32, EngineError> {
    let mut opts = OptsBuilder::default()
        .ip_or_hostname(source.host.clone())
        .tcp_port(source.port)
        .user(Some(login.user.clone()))
        .pass(Some(login.password.expose().to_owned()))
        .prefer_socket(false);
    if let Some(ca) = tls_ca {
        // As the replica will: TLS, the source's certificate verified against the CA.
        opts = opts.ssl_opts(
            mysql_async::SslOpts::default()
                .with_root_certs(vec![ca.to_path_buf().into()])
                .with_disable_built_in_roots(true),
        );
    }
    let at = format!("{} at {}:{}", source.instance, source.host, source.port);
    let mut conn = match tokio::time::timeout(SOURCE_CHECK_TIMEOUT, Conn::new(opts)).await {
        Err(_) => {
            return Err(EngineError::BadRequest(format!(
                "cannot reach source {at}: no answer within {SOURCE_CHECK_TIMEOUT:?}"
            )))
        }
        Ok(Err(mysql_async::Error::Server(e))) if e.code == 1045 => {
            return Err(EngineError::Refused(format!(
                "source {at} refused the replication credentials of user {}: {}",
                login.user, e.message
            )))
        }
        Ok(Err(e)) => {
            return Err(EngineError::BadRequest(format!(
                "cannot reach source {at}: {e}"
            )))
        }
        Ok(Ok(c)) => c,
    };
    let id: Option<u32> = conn
        .query_first("SELECT @@server_id")
        .await
        .map_err(classify)?;
    let _ = conn.disconnect().await;
    Ok(id.unwrap_or(0))
}

/// The host part of a replication account: the address the replica connects from, or
/// `%` (any). Refused unless it is plainly an address or a name: it goes into SQL, and
/// it comes from what the replica's agent reported.
fn account_host(from: Option<&str>) -> Result<&str, EngineError> {
    let Some(host) = from else { return Ok("%") };
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_' | '%'));
    if plain {
        Ok(host)
    } else {
        Err(EngineError::BadRequest(format!(
            "field `from`: {host:?} is not an address or host name a replication account \
             can be limited to"
        )))
    }
}

/// The hosts `user` has an account for.
async fn account_hosts(c: &mut Conn, user: &str) -> Result<Vec<String>, EngineError> {
    timed(
        "list account hosts",
        c.exec("SELECT Host FROM mysql.user WHERE User = ?", (user,)),
    )
    .await
}

/// `/var/lib/mysql` + "x" -> `/var/lib/mysql.x`: same parent, same filesystem.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

/// Gives every file below `dir` the owner, group and (for `dir` itself) the mode of
/// `like`: files unpacked by the agent belong to the engine's user.
fn give_owner(dir: &Path, like: &std::fs::Metadata) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid) = (
        Some(nix::unistd::Uid::from_raw(like.uid())),
        Some(nix::unistd::Gid::from_raw(like.gid())),
    );
    fn walk(
        p: &Path,
        uid: Option<nix::unistd::Uid>,
        gid: Option<nix::unistd::Gid>,
    ) -> anyhow::Result<()> {
        nix::unistd::chown(p, uid, gid).with_context(|| format!("chown {}", p.display()))?;
        if p.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(dir, uid, gid)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(like.mode() & 0o7777))
        .with_context(|| format!("chmod {}", dir.display()))
}

fn write_include(path: &PathBuf, settings: &[(&str, String, bool)]) -> anyhow::Result<()> {
    let mut text = String::from(
        "# Managed by tandem-agent: rewritten at every agent start; edits are lost.\n\
         # Servers start read-only: only the conductor, through the agent, makes one writable.\n\
         [mariadbd]\nread_only = 1\n",
    );
    for (name, value, _) in settings {
        let value = if *name == "log_bin" {
            "mysql-bin"
        } else {
            value.as_str()
        };
        text.push_str(&format!("{name} = {value}\n"));
    }
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename into {}", path.display()))
}

async fn run_command(what: &str, argv: Option<&[String]>) -> Result<(), EngineError> {
    let Some((program, args)) = argv.and_then(|a| a.split_first()) else {
        return Err(EngineError::Unsupported(format!(
            "no engine.{what}_command is configured for this agent"
        )));
    };
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| EngineError::Internal(anyhow::anyhow!("run {program}: {e}")))?;
    if !out.status.success() {
        return Err(EngineError::Refused(format!(
            "engine {what} command {program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
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
