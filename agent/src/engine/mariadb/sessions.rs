//! The server's sessions, as `SHOW FULL PROCESSLIST` lists them.
//!
//! Not `information_schema.PROCESSLIST`: a query on it materializes an Aria temporary
//! table, and MariaDB 10.11.19 was seen crashing (signal 11 in `ha_maria::drop_table`
//! from `free_tmp_table`) on dropping it, seconds after a start, three times in one test
//! run here. `SHOW PROCESSLIST` reads the thread list directly; the filtering is done
//! here instead.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use super::{col, timed, MariaDb};
use crate::engine::EngineError;

/// One session of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Session {
    pub id: u64,
    pub user: String,
    pub command: String,
    pub state: String,
}

impl Session {
    /// A replica's binlog dump thread (`Binlog Dump` or `Binlog Dump GTID`).
    pub fn is_dump(&self) -> bool {
        self.command.starts_with("Binlog Dump")
    }

    /// Waiting for a replica to acknowledge its commit (a group commit's leader).
    pub fn waits_for_ack(&self) -> bool {
        self.state.to_ascii_lowercase().contains("semi-sync")
    }

    /// The server's own threads and replication's: never a client.
    pub fn is_internal(&self) -> bool {
        self.is_dump()
            || matches!(
                self.command.as_str(),
                "Daemon" | "Slave_IO" | "Slave_SQL" | "Slave_worker"
            )
            || matches!(
                self.user.as_str(),
                "system user" | "event_scheduler" | "unauthenticated user"
            )
    }
}

impl MariaDb {
    /// Every session but the one asking.
    pub(super) async fn sessions(&self, c: &mut Conn) -> Result<Vec<Session>, EngineError> {
        let me: Option<u64> = timed(
            "read CONNECTION_ID()",
            c.query_first("SELECT CONNECTION_ID()"),
        )
        .await?;
        let rows: Vec<Row> =
            timed("SHOW FULL PROCESSLIST", c.query("SHOW FULL PROCESSLIST")).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Session {
                    id: col(r, "Id")?,
                    user: col(r, "User").unwrap_or_default(),
                    command: col(r, "Command").unwrap_or_default(),
                    state: col(r, "State").unwrap_or_default(),
                })
            })
            .filter(|s| Some(s.id) != me)
            .collect())
    }

    /// Ends the sessions `which` picks (one that ended on its own meanwhile is no
    /// error); how many it ended.
    ///
    /// Those waiting for a semi-sync acknowledgement go last. Binary-log group commit
    /// has one transaction (the leader) wait for the whole group's acknowledgement;
    /// its followers wait for it in a state that does not say so. Ending the leader
    /// first releases the group, and a follower's client would be told its commit
    /// succeeded with no replica holding it (a lost acknowledged write, seen here).
    /// Ended first, a follower's connection is closed before anything can be sent on
    /// it.
    pub(super) async fn kill_sessions(
        &self,
        c: &mut Conn,
        which: impl Fn(&Session) -> bool,
    ) -> Result<usize, EngineError> {
        let mut ended = 0;
        let mut picked: Vec<Session> = self
            .sessions(c)
            .await?
            .into_iter()
            .filter(|s| which(s))
            .collect();
        picked.sort_by_key(Session::waits_for_ack);
        for s in &picked {
            if c.query_drop(format!("KILL CONNECTION {}", s.id))
                .await
                .is_ok()
            {
                ended += 1;
            }
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_waiting_for_an_acknowledgement_is_told_by_its_state() {
        let s = |state: &str| Session {
            id: 1,
            user: "app".into(),
            command: "Query".into(),
            state: state.into(),
        };
        // MariaDB 10.11's words (stage_waiting_for_semi_sync_ack_from_slave).
        assert!(s("Waiting for semi-sync ACK from slave").waits_for_ack());
        assert!(!s("Waiting for prior transaction to commit").waits_for_ack());
        assert!(!s("Update").waits_for_ack());
        let mut order = [s("Waiting for semi-sync ACK from slave"), s("Update")];
        order.sort_by_key(Session::waits_for_ack);
        assert_eq!(order[0].state, "Update", "followers first, the leader last");
    }
}
