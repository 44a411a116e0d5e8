//! What makes MariaDB's `read_only` a fence against every client, not only the polite
//! ones.
//!
//! `read_only` does not stop an account holding `READ_ONLY ADMIN` (in MariaDB 10.11
//! part of `ALL PRIVILEGES ON *.*`), and a session keeps the privileges it logged in
//! with. So: such accounts are found and reported (a *fencing hazard*), the agent
//! revokes that one privilege from them unless told not to, and going read-only ends
//! every client session that could still write. The agent's own account (the admin
//! user, under every host) and the replication accounts are not clients.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::{timed, MariaDb};
use crate::engine::EngineError;

impl MariaDb {
    /// Accounts other than the agent's own that hold `READ_ONLY ADMIN`, as `'user'@'host'`.
    pub(super) async fn read_only_bypass_accounts(
        &self,
        c: &mut Conn,
    ) -> Result<Vec<String>, EngineError> {
        let grantees: Vec<String> = timed(
            "list accounts that bypass read_only",
            c.query(
                "SELECT GRANTEE FROM information_schema.USER_PRIVILEGES \
                 WHERE PRIVILEGE_TYPE = 'READ_ONLY ADMIN'",
            ),
        )
        .await?;
        Ok(grantees
            .into_iter()
            .filter(|g| !self.is_own_account(user_of(g)))
            .collect())
    }

    fn is_own_account(&self, user: &str) -> bool {
        user == self.config.admin_user || user.starts_with("tandem_repl_")
    }

    /// Revokes `READ_ONLY ADMIN` from each account (not binlogged: each server's agent
    /// does this for its own engine) and ends the account's sessions.
    pub(super) async fn revoke_read_only_bypass(
        &self,
        accounts: &[String],
    ) -> Result<Vec<String>, EngineError> {
        let mut c = self.conn().await?;
        let mut left = Vec::new();
        self.exec(&mut c, "SET SESSION sql_log_bin = 0").await?;
        for account in accounts {
            let Some((user, host)) = split_grantee(account) else {
                left.push(format!(
                    "{account} (not an account name the agent can quote)"
                ));
                continue;
            };
            let revoke = format!("REVOKE READ_ONLY ADMIN ON *.* FROM '{user}'@'{host}'");
            match self.exec(&mut c, &revoke).await {
                Ok(()) => {
                    tracing::warn!(
                        account,
                        "READ_ONLY ADMIN revoked: it let the account write through read-only"
                    );
                    self.kill_sessions(&mut c, |s| s.user == user).await?;
                }
                Err(e) => left.push(format!("{account} (revoke failed: {e})")),
            }
        }
        let _ = c.query_drop("SET SESSION sql_log_bin = 1").await;
        Ok(left)
    }

    /// Ends the sessions that keep `SET GLOBAL read_only` (on session `setter`) from
    /// finishing on a master whose replicas stopped acknowledging: every client
    /// session and every busy one of the agent's own (a heartbeat in a commit group),
    /// those waiting for an acknowledgement last (see `kill_sessions`). How many.
    pub(super) async fn end_stuck_commits(
        &self,
        c: &mut Conn,
        setter: u64,
    ) -> Result<usize, EngineError> {
        self.kill_sessions(c, |s| {
            s.id != setter
                && !s.is_internal()
                && (!self.is_own_account(&s.user) || s.command != "Sleep")
        })
        .await
    }

    /// Ends every client session: everything but this connection, the server's own
    /// threads, replication, and the agent's account. Returns how many it ended.
    pub(super) async fn end_client_sessions(&self, c: &mut Conn) -> Result<usize, EngineError> {
        self.kill_sessions(c, |s| !s.is_internal() && !self.is_own_account(&s.user))
            .await
    }
}

/// `'user'@'host'` → `user`.
fn user_of(grantee: &str) -> &str {
    split_grantee(grantee).map_or(grantee, |(u, _)| u)
}

/// `'user'@'host'` → (`user`, `host`), when both are plain enough to quote again.
fn split_grantee(grantee: &str) -> Option<(&str, &str)> {
    let (user, host) = grantee.split_once("'@'")?;
    let user = user.strip_prefix('\'')?;
    let host = host.strip_suffix('\'')?;
    let plain = |s: &str| !s.contains(['\'', '\\', '`']);
    (plain(user) && plain(host)).then_some((user, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grantees_are_split_only_when_they_quote_back_safely() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("'app'@'%'", Some(("app", "%"))),
            ("'root'@'localhost'", Some(("root", "localhost"))),
            ("'a@b'@'10.0.0.%'", Some(("a@b", "10.0.0.%"))),
            ("'x'y'@'%'", None),
            ("app@%", None),
        ];
        for (grantee, expect) in cases {
            assert_eq!(split_grantee(grantee), *expect, "{grantee}");
        }
        assert_eq!(user_of("'app'@'%'"), "app");
    }
}
