//! PostgreSQL rows read back into their types: ids, words of closed sets, JSON columns.

use tandem_proto::{Epoch, Timestamp};
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::store::*;

/// Column `idx` of `row`, or an error naming it.
pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx)
        .map_err(|e| StoreError::Internal(format!("stored column {idx}: {e}")))
}

pub(super) fn get_id<T: std::str::FromStr>(row: &Row, idx: usize) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = get(row, idx)?;
    text.parse()
        .map_err(|e: T::Err| StoreError::Internal(format!("stored id {text:?}: {e}")))
}

pub(super) fn get_word<W: tandem_api::Word>(row: &Row, idx: usize) -> Result<W> {
    let text: String = get(row, idx)?;
    W::parse_word(&text).map_err(StoreError::Internal)
}

pub(super) fn get_json<T: serde::de::DeserializeOwned>(row: &Row, idx: usize) -> Result<T> {
    let text: String = get(row, idx)?;
    Ok(serde_json::from_str(&text)?)
}

pub(super) fn get_time(row: &Row, idx: usize) -> Result<Timestamp> {
    Ok(Timestamp(get::<i64>(row, idx)? as u64))
}

pub(super) const WORKFLOW_COLUMNS: &str =
    "id, kind, set_id, params, state, requested_by, error, created_at, updated_at";

/// One row of `SELECT {WORKFLOW_COLUMNS}`.
pub(super) fn workflow_row(r: &Row) -> Result<WorkflowRow> {
    Ok(WorkflowRow {
        id: get(r, 0)?,
        kind: get_word(r, 1)?,
        set_id: get_id(r, 2)?,
        params: get_json(r, 3)?,
        state: get_word(r, 4)?,
        requested_by: get(r, 5)?,
        error: get(r, 6)?,
        created_at: get_time(r, 7)?,
        updated_at: get_time(r, 8)?,
    })
}

pub(super) const JOURNAL_COLUMNS: &str =
    "workflow_id, seq, step, target, command, message_id, epoch, result, sent_at";

/// One row of `SELECT {JOURNAL_COLUMNS}`.
pub(super) fn journal_row(r: &Row) -> Result<JournalEntry> {
    let result: Option<String> = get(r, 7)?;
    Ok(JournalEntry {
        workflow_id: get(r, 0)?,
        seq: u32::try_from(get::<i64>(r, 1)?)
            .map_err(|e| StoreError::Internal(format!("stored step number: {e}")))?,
        step: get(r, 2)?,
        target: get_id(r, 3)?,
        command: get(r, 4)?,
        message_id: get_id(r, 5)?,
        epoch: Epoch::new(get::<i64>(r, 6)? as u64),
        result: result.map(|t| serde_json::from_str(&t)).transpose()?,
        sent_at: get_time(r, 8)?,
    })
}

pub(super) fn rows<T>(rows: Vec<Row>, each: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(each).collect()
}
