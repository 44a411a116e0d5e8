//! A set's topology in PostgreSQL: loading a set, writing a change (decided by
//! `ReplicaSet::after`) and bumping the epoch in the same transaction.

use tandem_proto::{Epoch, ReplicaSetId};

use super::link::Tx;
use super::rows::*;
use crate::store::*;

pub(super) fn next_epoch(tx: &Tx<'_>) -> Result<Epoch> {
    let row = tx.one(
        "UPDATE counters SET value = value + 1 WHERE name = 'epoch' RETURNING value",
        &[],
    )?;
    Ok(Epoch::new(get::<i64>(&row, 0)? as u64))
}

pub(super) fn apply_in(
    tx: &Tx<'_>,
    set: &ReplicaSetId,
    change: &TopologyChange,
) -> Result<ReplicaSet> {
    let current = load_set(tx, set, true)?
        .ok_or_else(|| StoreError::NotFound(format!("no replica set {set}")))?;
    let after = current.after(change)?;
    write_members(tx, &current, &after)?;
    match change.beside() {
        Beside::LeavesPool(instance) => {
            tx.execute(
                "DELETE FROM pool WHERE instance = $1",
                &[&instance.as_str()],
            )?;
        }
        Beside::Pair(pair) => super::placement::write_pair(tx, set, pair)?,
        Beside::Dr(dr) => super::placement::write_dr(tx, set, dr)?,
        Beside::Nothing => {}
    }
    let epoch = next_epoch(tx)?;
    tx.execute(
        "UPDATE replica_sets SET epoch = $2, master = $3 WHERE id = $1",
        &[&set.as_str(), &(epoch.get() as i64), &after.master.as_str()],
    )?;
    Ok(load_set(tx, set, false)?.expect("exists"))
}

/// Writes what differs between a set's members `before` and `after` a change.
fn write_members(tx: &Tx<'_>, before: &ReplicaSet, after: &ReplicaSet) -> Result<()> {
    let set = after.id.as_str();
    for gone in before
        .members
        .iter()
        .filter(|m| after.member(&m.instance).is_none())
    {
        tx.execute(
            "DELETE FROM members WHERE instance = $1 AND set_id = $2",
            &[&gone.instance.as_str(), &set],
        )?;
    }
    for m in &after.members {
        let options = serde_json::to_string(&m.options)?;
        let from = m.replicates_from.as_ref().map(|f| f.as_str());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &m.instance.as_str(),
            &set,
            &m.role.as_str(),
            &from,
            &m.writable,
            &options,
        ];
        match before.member(&m.instance) {
            Some(was) if was == m => {}
            Some(_) => {
                tx.execute(
                    "UPDATE members SET role = $3, replicates_from = $4, writable = $5, \
                     options = $6 WHERE instance = $1 AND set_id = $2",
                    &params,
                )?;
            }
            None => {
                let n = tx.execute(
                    "INSERT INTO members (instance, set_id, role, replicates_from, writable, \
                     options) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance) DO NOTHING",
                    &params,
                )?;
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "{} is already a member of a replica set",
                        m.instance
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A set as stored; `lock` holds its row until the transaction ends (a change reads,
/// decides and writes under it, as SQLite's one writer does).
pub(super) fn load_set(tx: &Tx<'_>, set: &ReplicaSetId, lock: bool) -> Result<Option<ReplicaSet>> {
    let sql = if lock {
        "SELECT epoch, master, created_at FROM replica_sets WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT epoch, master, created_at FROM replica_sets WHERE id = $1"
    };
    let Some(row) = tx.opt(sql, &[&set.as_str()])? else {
        return Ok(None);
    };
    let members = tx.query(
        "SELECT instance, role, replicates_from, writable, options FROM members \
         WHERE set_id = $1 ORDER BY role = 'replica', instance",
        &[&set.as_str()],
    )?;
    Ok(Some(ReplicaSet {
        id: set.clone(),
        epoch: Epoch::new(get::<i64>(&row, 0)? as u64),
        master: get_id(&row, 1)?,
        members: rows(members, member_row)?,
        created_at: get_time(&row, 2)?,
    }))
}

fn member_row(r: &tokio_postgres::Row) -> Result<Member> {
    let from: Option<String> = get(r, 2)?;
    Ok(Member {
        instance: get_id(r, 0)?,
        role: get_word(r, 1)?,
        replicates_from: from
            .map(|f| {
                f.parse()
                    .map_err(|e| StoreError::Internal(format!("stored id {f:?}: {e}")))
            })
            .transpose()?,
        writable: get(r, 3)?,
        options: get_json(r, 4)?,
    })
}
