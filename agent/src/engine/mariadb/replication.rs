//! Replication: a master's heartbeat and its replicas' accounts, attaching to a source
//! (checked first), detaching, positions and waits, semi-sync, draining.

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use rand::distr::{Alphanumeric, SampleString};
use tandem_proto::Secret;
use tandem_proto::{InstanceId, Position, SourceEndpoint};

use super::*;
use crate::engine::{replication_user, EngineError, ReplicationLogin};

impl MariaDb {
    pub(super) async fn prepare_master(&self) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        // A side of a master-master pair (a write stream of its own) is a master that
        // keeps replicating its peer.
        let domain: u32 = timed(
            "read gtid_domain_id",
            c.query_first("SELECT @@GLOBAL.gtid_domain_id"),
        )
        .await?
        .unwrap_or(0);
        if domain == 0 && self.slave_status(&mut c).await?.is_some() {
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

    pub(super) async fn write_heartbeat(&self) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        // The agent's account bypasses read_only; a heartbeat on a read-only server
        // would be a transaction the new master never saw.
        let read_only: u8 = timed("read read_only", c.query_first("SELECT @@read_only"))
            .await?
            .unwrap_or(1);
        // (The writable side of a master-master pair replicates its peer and still
        // writes heartbeats: its read replicas measure their lag by them.)
        if read_only != 0 {
            return Ok(());
        }
        self.exec(
            &mut c,
            "INSERT INTO tandem.heartbeat (id, ts, server_id) VALUES (1, UTC_TIMESTAMP(6), @@server_id) \
             ON DUPLICATE KEY UPDATE ts = VALUES(ts), server_id = VALUES(server_id)",
        )
        .await
    }

    pub(super) async fn ensure_replication_user(
        &self,
        replica: &InstanceId,
        from: Option<&str>,
    ) -> Result<ReplicationLogin, EngineError> {
        let host = account_host(from)?;
        let mut c = self.conn().await?;
        // On a replica (the passive side of a master-master pair, for its peer's
        // reverse channel) the account is made without a binary-log event: logged, it
        // would be a transaction of the replica's own, an errant one.
        let local = self.slave_status(&mut c).await?.is_some();
        if local {
            self.exec(&mut c, "SET SESSION sql_log_bin = 0").await?;
        }
        let made = self.make_replication_user(&mut c, replica, host).await;
        if local {
            // The pooled connection goes back logging, whatever happened.
            self.exec(&mut c, "SET SESSION sql_log_bin = 1").await?;
        }
        made
    }

    async fn make_replication_user(
        &self,
        c: &mut Conn,
        replica: &InstanceId,
        host: &str,
    ) -> Result<ReplicationLogin, EngineError> {
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
        for other in account_hosts(c, &user).await? {
            if other != host {
                self.exec(c, &format!("DROP USER IF EXISTS '{user}'@'{other}'"))
                    .await?;
            }
        }
        self.exec(
            c,
            &format!(
                "CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{password}'{require}"
            ),
        )
        .await?;
        self.exec(
            c,
            &format!("ALTER USER '{user}'@'{host}' IDENTIFIED BY '{password}'{require}"),
        )
        .await?;
        self.exec(
            c,
            &format!("GRANT REPLICATION SLAVE ON *.* TO '{user}'@'{host}'"),
        )
        .await?;
        Ok(ReplicationLogin {
            user,
            password: Secret::new(password),
        })
    }

    pub(super) async fn drop_replication_user(
        &self,
        replica: &InstanceId,
    ) -> Result<(), EngineError> {
        let mut c = self.conn().await?;
        let user = replication_user(replica);
        for host in account_hosts(&mut c, &user).await? {
            self.exec(&mut c, &format!("DROP USER IF EXISTS '{user}'@'{host}'"))
                .await?;
        }
        // Dropping a user does not end its sessions: end the binlog dump so the replica
        // really loses access now.
        self.kill_sessions(&mut c, |s| s.user == user).await?;
        Ok(())
    }

    pub(super) async fn attach(
        &self,
        me: &InstanceId,
        source: &SourceEndpoint,
        login: &ReplicationLogin,
        position: Option<&Position>,
        applying: &crate::engine::Applying,
    ) -> Result<(), EngineError> {
        if let Some(filter) = &applying.filter {
            filter.check().map_err(EngineError::BadRequest)?;
        }
        if &source.instance == me {
            return Err(EngineError::BadRequest(format!(
                "{me} cannot replicate from itself"
            )));
        }
        safe_token("the source host", &source.host)?;
        safe_token("the replication user", &login.user)?;
        safe_token("the replication password", login.password.expose())?;
        let gtid = position.map(gtid_of).transpose()?.cloned();
        // Where a paused attach stops, checked before anything changes.
        let until = applying
            .paused
            .as_ref()
            .and_then(|p| p.until.as_ref())
            .map(gtid_of)
            .transpose()?;
        if let Some(until) = until {
            super::pause::safe_gtid(until)?;
        }

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
        // Not the active side of a pair: it writes, and its peer only ever sends back
        // what it wrote itself (skipped by server id) until the two switch.
        if !applying.peer {
            self.exec(&mut c, "SET GLOBAL read_only = 1").await?;
        }
        self.exec(&mut c, "STOP SLAVE").await?;
        let start_at = match &gtid {
            Some(g) => g.to_string(),
            // What this server holds already, domain by domain: what it logged (with
            // log_slave_updates, everything it applied too) or, for a domain it has
            // logged nothing of since it was seeded (a pair's other domain, say), where
            // its copy stood. Its binary log alone would ask for such a domain from
            // the beginning.
            None => self.gtid(&mut c, "gtid_current_pos").await?.to_string(),
        };
        self.exec(&mut c, &format!("SET GLOBAL gtid_slave_pos = '{start_at}'"))
            .await?;
        // Filtered by table (`db.%`), not by `replicate_do_db`: that one judges a DDL
        // statement by the session's default database, so a `CREATE TABLE sales.t` sent
        // without `USE sales` would be skipped and the rows that follow would break
        // replication. A `db.%` pattern also takes `CREATE DATABASE db`. Both are set
        // every time, so that an attach without a filter removes an old one (they take
        // effect while replication is stopped; names checked above).
        let (only, except) = match &applying.filter {
            Some(tandem_proto::DatabaseFilter::Only(d)) => {
                (super::observe::wild_tables(d), String::new())
            }
            Some(tandem_proto::DatabaseFilter::Except(d)) => {
                (String::new(), super::observe::wild_tables(d))
            }
            None => (String::new(), String::new()),
        };
        self.exec(
            &mut c,
            &format!(
                "SET GLOBAL replicate_wild_do_table = '{}'",
                only.replace('\\', r"\\")
            ),
        )
        .await?;
        self.exec(
            &mut c,
            &format!(
                "SET GLOBAL replicate_wild_ignore_table = '{}'",
                except.replace('\\', r"\\")
            ),
        )
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
                applying.delay.as_secs(),
                self.master_tls()
            ),
        )
        .await?;
        match (&applying.paused, until) {
            (None, _) => self.exec(&mut c, "START SLAVE").await?,
            // Paused: the source is set (and was checked above); nothing is applied.
            (Some(_), None) => return Ok(()),
            (Some(_), Some(until)) => {
                // Already there or past it: it stays where it is.
                let applied = self.gtid(&mut c, "gtid_slave_pos").await?;
                if applied.beyond(&[until]).is_empty() && &applied != until {
                    self.exec(
                        &mut c,
                        &format!("START SLAVE UNTIL master_gtid_pos = '{until}'"),
                    )
                    .await?;
                }
                return Ok(());
            }
        }

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

    pub(super) async fn detach(&self, me: &InstanceId) -> Result<(), EngineError> {
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

    pub(super) async fn latest_position(&self) -> Result<Position, EngineError> {
        let mut c = self.conn().await?;
        Ok(Position::Gtid(self.gtid(&mut c, "gtid_current_pos").await?))
    }

    pub(super) async fn wait_for_position(
        &self,
        position: &Position,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let target = gtid_of(position)?;
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

    pub(super) async fn set_semi_sync(
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

    pub(super) async fn drain(&self, timeout: Duration) -> Result<Position, EngineError> {
        let mut c = self.conn().await?;
        let Some(row) = self.slave_status(&mut c).await? else {
            return Err(EngineError::BadRequest(
                "this server is not a replica; there is no relay log to drain".into(),
            ));
        };
        // Refused at once where waiting could never finish in time.
        let sql: String = col(&row, "Slave_SQL_Running").unwrap_or_default();
        let error: String = col(&row, "Last_SQL_Error").unwrap_or_default();
        let delay: u64 = col(&row, "SQL_Delay").unwrap_or(0);
        if sql != "Yes" && error.is_empty() {
            return Err(EngineError::Refused(
                "its applier is paused: what it received is not being applied".into(),
            ));
        }
        if delay > 0 {
            return Err(EngineError::Refused(format!(
                "it applies {delay} s behind its source (a delayed replica)"
            )));
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
}

/// Connects to the source as the replica will, and returns its server_id.
pub(super) async fn check_source(
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
pub(super) fn account_host(from: Option<&str>) -> Result<&str, EngineError> {
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
pub(super) async fn account_hosts(c: &mut Conn, user: &str) -> Result<Vec<String>, EngineError> {
    timed(
        "list account hosts",
        c.exec("SELECT Host FROM mysql.user WHERE User = ?", (user,)),
    )
    .await
}
