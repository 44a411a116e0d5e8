//! The connection to PostgreSQL, used synchronously as the `Store` trait is.
//!
//! The `Store` is called from the conductor's async tasks as SQLite is, a short
//! blocking call each time. tokio-postgres's client only talks to its connection task
//! through channels, so that task runs on a thread of its own (with its own runtime)
//! and each call waits on its answer with a plain `block_on`: no runtime is entered
//! from inside another (which `postgres`, the blocking crate, would do, and panic).

use std::time::Duration;

use futures_lite::future::block_on;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use crate::store::{Result, StoreError};

/// How long a connection attempt may take before the store says it cannot reach
/// PostgreSQL (when the URL sets no `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// An error of PostgreSQL's, with what the server said (tokio-postgres's own text for
/// a server error is only "db error").
pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Internal(format!(
            "PostgreSQL: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => StoreError::Internal(format!("PostgreSQL: {e}")),
    }
}

/// Whether `e` is a unique-key violation.
pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// Opens a connection to `url` (a `postgresql://` URL or `key=value` settings).
pub(super) fn connect(url: &str) -> Result<Client> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Internal(format!("field `store_url`: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("tandem-conductor");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tandem-store-pg".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(StoreError::Internal(format!("a runtime: {e}"))));
                    return;
                }
            };
            rt.block_on(async move {
                match config.connect(NoTls).await {
                    Ok((client, connection)) => {
                        let _ = tx.send(Ok(client));
                        if let Err(e) = connection.await {
                            tracing::warn!("the store's PostgreSQL connection ended: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::Internal(format!(
                            "cannot reach the PostgreSQL store: {}",
                            pg(e)
                        ))));
                    }
                }
            });
        })
        .map_err(|e| StoreError::Internal(format!("start the store's thread: {e}")))?;
    rx.recv()
        .map_err(|_| StoreError::Internal("the store's thread ended".into()))?
}

pub(super) fn query(c: &Client, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
    block_on(c.query(sql, params)).map_err(pg)
}

#[cfg(test)]
pub(super) fn execute(c: &Client, sql: &str, params: Params<'_>) -> Result<u64> {
    block_on(c.execute(sql, params)).map_err(pg)
}

pub(super) fn opt(c: &Client, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
    block_on(c.query_opt(sql, params)).map_err(pg)
}

/// A transaction; rolled back when dropped uncommitted.
pub(super) struct Tx<'a>(pub(super) tokio_postgres::Transaction<'a>);

impl<'a> Tx<'a> {
    pub(super) fn begin(c: &'a mut Client) -> Result<Tx<'a>> {
        Ok(Tx(block_on(c.transaction()).map_err(pg)?))
    }

    pub(super) fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        block_on(self.0.query(sql, params)).map_err(pg)
    }

    pub(super) fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64> {
        block_on(self.0.execute(sql, params)).map_err(pg)
    }

    /// As `execute`, with the driver's error kept (to tell a unique violation).
    pub(super) fn execute_raw(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        block_on(self.0.execute(sql, params))
    }

    pub(super) fn opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        block_on(self.0.query_opt(sql, params)).map_err(pg)
    }

    pub(super) fn one(&self, sql: &str, params: Params<'_>) -> Result<Row> {
        block_on(self.0.query_one(sql, params)).map_err(pg)
    }

    pub(super) fn batch(&self, sql: &str) -> Result<()> {
        block_on(self.0.batch_execute(sql)).map_err(pg)
    }

    pub(super) fn commit(self) -> Result<()> {
        block_on(self.0.commit()).map_err(pg)
    }
}
