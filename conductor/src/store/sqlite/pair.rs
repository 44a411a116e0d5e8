//! A pair's record in SQL (JSON in `set_pair`).

use rusqlite::{params, OptionalExtension};
use tandem_proto::ReplicaSetId;

use super::SqliteStore;
use crate::store::{PairRecord, PairStore, Result};

impl PairStore for SqliteStore {
    fn pair(&self, set: &ReplicaSetId) -> Result<Option<PairRecord>> {
        self.with(|c| {
            let text: Option<String> = c
                .prepare_cached("SELECT pair FROM set_pair WHERE set_id = ?1")?
                .query_row([set.as_str()], |r| r.get(0))
                .optional()?;
            Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
        })
    }
}

/// Records a pair (in the caller's transaction: the topology change's).
pub(super) fn write_pair(
    c: &rusqlite::Connection,
    set: &ReplicaSetId,
    pair: &PairRecord,
) -> Result<()> {
    c.execute(
        "INSERT INTO set_pair (set_id, pair) VALUES (?1, ?2) \
         ON CONFLICT (set_id) DO UPDATE SET pair = ?2",
        params![set.as_str(), serde_json::to_string(pair)?],
    )?;
    Ok(())
}
