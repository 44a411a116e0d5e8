//! Rows read back into their types: ids, words of closed sets, JSON columns.

use tandem_proto::{Epoch, Timestamp};

use crate::store::*;

pub(super) fn id<T: std::str::FromStr>(s: String) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| StoreError::Internal(format!("stored id {s:?}: {e}")))
}

/// A stored id parsed back into its type; a bad one is a conversion error of its column.
pub(super) fn col_id<T: std::str::FromStr>(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = r.get(idx)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(super) fn col_json<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<T> {
    let text: String = r.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A stored word of a closed set (a state, a kind, a role) parsed back into its type.
pub(super) fn col_word<W: tandem_api::Word>(
    r: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<W> {
    let text: String = r.get(idx)?;
    W::parse_word(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

/// One row of `SELECT {WORKFLOW_COLUMNS}`.
pub(super) fn workflow_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkflowRow> {
    Ok(WorkflowRow {
        id: r.get(0)?,
        kind: col_word(r, 1)?,
        set_id: col_id(r, 2)?,
        params: col_json(r, 3)?,
        state: col_word(r, 4)?,
        requested_by: r.get(5)?,
        error: r.get(6)?,
        created_at: Timestamp(r.get::<_, i64>(7)? as u64),
        updated_at: Timestamp(r.get::<_, i64>(8)? as u64),
    })
}

pub(super) const WORKFLOW_COLUMNS: &str =
    "id, kind, set_id, params, state, requested_by, error, created_at, updated_at";

/// One row of `SELECT {JOURNAL_COLUMNS}`.
pub(super) fn journal_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalEntry> {
    let result: Option<String> = r.get(7)?;
    Ok(JournalEntry {
        workflow_id: r.get(0)?,
        seq: r.get(1)?,
        step: r.get(2)?,
        target: col_id(r, 3)?,
        command: r.get(4)?,
        message_id: col_id(r, 5)?,
        epoch: Epoch::new(r.get::<_, i64>(6)? as u64),
        result: match result {
            Some(_) => Some(col_json(r, 7)?),
            None => None,
        },
        sent_at: Timestamp(r.get::<_, i64>(8)? as u64),
    })
}

pub(super) const JOURNAL_COLUMNS: &str =
    "workflow_id, seq, step, target, command, message_id, epoch, result, sent_at";
