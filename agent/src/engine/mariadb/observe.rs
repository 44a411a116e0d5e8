//! What the engine says about itself: alive, writable, where it replicates from and
//! how far, its settings, and whether its history split from its source's.

use mysql_async::prelude::Queryable;
use tandem_proto::{GtidSet, InstanceId, Lag, LagSource, Position, ReplicationState, SemiSync};

use super::*;
use crate::engine::{replica_of_user, EngineError, Observation, Pulse};

impl MariaDb {
    pub(super) async fn probe(&self) -> Result<Pulse, EngineError> {
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

    pub(super) async fn observe(&self) -> Result<Observation, EngineError> {
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
                        filter: filter_of(
                            &col::<String>(row, "Replicate_Wild_Do_Table").unwrap_or_default(),
                            &col::<String>(row, "Replicate_Wild_Ignore_Table").unwrap_or_default(),
                        ),
                    }),
                    col::<u64>(row, "Seconds_Behind_Master"),
                )
            }
        };

        // Only a read-only replica's own writes are errant: the writable side of a
        // master-master pair replicates from its peer and writes by design.
        match replication.as_mut() {
            Some(r) if r.diverged.is_none() && read_only != 0 => {
                r.diverged = self.errant(&mut c).await?
            }
            Some(_) => {}
            None => *self.written_here_before.lock().expect("poisoned") = GtidSet::empty(),
        }

        // (`replica_of_user` takes only Tandem's `tandem_repl_` accounts.)
        let mut replicas: Vec<InstanceId> = self
            .sessions(&mut c)
            .await?
            .iter()
            .filter(|s| s.is_dump())
            .filter_map(|s| replica_of_user(&s.user))
            .collect();
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
}

impl MariaDb {
    pub(super) async fn databases(&self) -> Result<Vec<String>, EngineError> {
        let mut c = self.conn().await?;
        let names: Vec<String> = timed("list databases", c.query("SHOW DATABASES")).await?;
        Ok(names
            .into_iter()
            .filter(|n| {
                !matches!(
                    n.as_str(),
                    "information_schema" | "mysql" | "performance_schema" | "sys" | "tandem"
                )
            })
            .collect())
    }
}

/// The table patterns that filter whole databases: `db.%` each, with `_` (a wildcard
/// in a pattern) escaped so that `sales_2` never matches `salesX2`. These are the
/// values; inside an SQL string their backslashes are doubled.
pub(super) fn wild_tables(databases: &[String]) -> String {
    databases
        .iter()
        .map(|d| format!("{}.%", d.replace('_', r"\_")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The database filter a replica applies, from `SHOW SLAVE STATUS`'s comma-separated
/// `Replicate_Wild_Do_Table` and `Replicate_Wild_Ignore_Table` (as [`wild_tables`]
/// writes them).
fn filter_of(only: &str, except: &str) -> Option<tandem_proto::DatabaseFilter> {
    let names = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter_map(|p| p.strip_suffix(".%"))
            .map(|d| d.replace(r"\_", "_"))
            .collect()
    };
    match (names(only), names(except)) {
        (only, _) if !only.is_empty() => Some(tandem_proto::DatabaseFilter::Only(only)),
        (_, except) if !except.is_empty() => Some(tandem_proto::DatabaseFilter::Except(except)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tandem_proto::DatabaseFilter;

    #[test]
    fn a_database_filter_reads_back_from_its_table_patterns() {
        let names = vec!["sales_2".to_string(), "stock".to_string()];
        let written = super::wild_tables(&names);
        assert_eq!(written, r"sales\_2.%,stock.%");
        assert_eq!(
            super::filter_of(&written, ""),
            Some(DatabaseFilter::Only(names.clone()))
        );
        assert_eq!(
            super::filter_of("", &written),
            Some(DatabaseFilter::Except(names))
        );
        assert_eq!(super::filter_of("", ""), None);
    }
}
