//! The leadership of a shared store: a lease in the `leader` row, on its own connection
//! (a slow store query never delays a renewal).
//!
//! Taking the lease and taking the next term (`conductor_term`, the store's fencing
//! number) are one transaction; renewing extends the lease only while it is still
//! this term's and unexpired. Expiry is the database's clock, so conductors whose own
//! clocks differ agree on it; a holder also counts the lease down on its own monotonic
//! clock from the moment it asked for each renewal (earlier than the database's), and
//! stops acting when that runs out, whether or not it can reach the database.

use std::time::Duration;

use tokio_postgres::Client;

use super::link;
use super::rows::get;
use crate::store::Result;

/// A connection for the lease.
pub struct Lease {
    url: String,
    client: Client,
}

/// Who holds the lease, as a standby sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub term: u64,
}

impl Lease {
    pub fn connect(url: &str) -> Result<Lease> {
        Ok(Lease {
            url: url.to_owned(),
            client: link::connect(url)?,
        })
    }

    fn client(&mut self) -> Result<&mut Client> {
        if self.client.is_closed() {
            self.client = link::connect(&self.url)?;
        }
        Ok(&mut self.client)
    }

    /// Takes the lease for `holder` unless another holds it unexpired: `Ok(term)` when
    /// taken (the new term), `Err(holder)` naming who holds it.
    pub fn try_take(
        &mut self,
        holder: &str,
        lease: Duration,
    ) -> Result<std::result::Result<u64, Holder>> {
        let tx = link::Tx::begin(self.client()?)?;
        // Two standbys at once: one at a time (the row may not exist yet to lock).
        tx.execute("SELECT pg_advisory_xact_lock(7448)", &[])?;
        if let Some(row) = tx.opt(
            "SELECT holder, term FROM leader WHERE expires_at > clock_timestamp()",
            &[],
        )? {
            return Ok(Err(Holder {
                name: get(&row, 0)?,
                term: get::<i64>(&row, 1)? as u64,
            }));
        }
        let term = get::<i64>(
            &tx.one(
                "UPDATE counters SET value = value + 1 WHERE name = 'conductor_term' \
                 RETURNING value",
                &[],
            )?,
            0,
        )?;
        tx.execute(
            "INSERT INTO leader (id, holder, term, expires_at) \
             VALUES (TRUE, $1, $2, clock_timestamp() + $3::float8 * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, term = EXCLUDED.term, \
             expires_at = EXCLUDED.expires_at",
            &[&holder, &term, &(lease.as_millis() as f64)],
        )?;
        tx.commit()?;
        Ok(Ok(term as u64))
    }

    /// Extends the lease of `term`; false when it is no longer this term's (it expired,
    /// and perhaps another conductor took it).
    pub fn renew(&mut self, term: u64, lease: Duration) -> Result<bool> {
        let client = self.client()?;
        let n = futures_lite::future::block_on(client.execute(
            "UPDATE leader SET expires_at = clock_timestamp() + $2::float8 * interval '1 millisecond' \
             WHERE term = $1 AND expires_at > clock_timestamp()",
            &[&(term as i64), &(lease.as_millis() as f64)],
        ))
        .map_err(link::pg)?;
        Ok(n == 1)
    }

    /// Gives the lease up at once (a clean stop): a standby need not wait for it to
    /// expire.
    pub fn release(&mut self, term: u64) -> Result<()> {
        let client = self.client()?;
        futures_lite::future::block_on(client.execute(
            "UPDATE leader SET expires_at = clock_timestamp() WHERE term = $1",
            &[&(term as i64)],
        ))
        .map_err(link::pg)?;
        Ok(())
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (term {})", self.name, self.term)
    }
}
