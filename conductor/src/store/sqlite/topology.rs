//! A set's topology in SQL: loading a set, applying a change and bumping the epoch in
//! the same transaction.

use rusqlite::{params, Connection, OptionalExtension};
use tandem_api::Word;
use tandem_proto::{Epoch, ReplicaSetId, Timestamp};

use crate::store::*;

use super::rows::*;

pub(super) fn next_epoch(conn: &Connection) -> Result<Epoch> {
    let v: i64 = conn.query_row(
        "UPDATE counters SET value = value + 1 WHERE name = 'epoch' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    Ok(Epoch::new(v as u64))
}

pub(super) fn apply_in(
    conn: &Connection,
    set: &ReplicaSetId,
    change: &TopologyChange,
) -> Result<ReplicaSet> {
    let current = load_set(conn, set)?
        .ok_or_else(|| StoreError::NotFound(format!("no replica set {set}")))?;
    let after = current.after(change)?;
    write_members(conn, &current, &after)?;
    match change.beside() {
        Beside::LeavesPool(instance) => {
            conn.execute("DELETE FROM pool WHERE instance = ?1", [instance.as_str()])?;
        }
        Beside::Pair(pair) => super::pair::write_pair(conn, set, pair)?,
        Beside::Dr(dr) => super::placement::write_dr(conn, set, dr)?,
        Beside::Nothing => {}
    }
    let epoch = next_epoch(conn)?;
    conn.execute(
        "UPDATE replica_sets SET epoch = ?2, master = ?3 WHERE id = ?1",
        params![set.as_str(), epoch.get() as i64, after.master.as_str()],
    )?;
    Ok(load_set(conn, set)?.expect("exists"))
}

/// Writes what differs between a set's members `before` and `after` a change.
fn write_members(conn: &Connection, before: &ReplicaSet, after: &ReplicaSet) -> Result<()> {
    let set = &after.id;
    for gone in before
        .members
        .iter()
        .filter(|m| after.member(&m.instance).is_none())
    {
        conn.execute(
            "DELETE FROM members WHERE instance = ?1 AND set_id = ?2",
            params![gone.instance.as_str(), set.as_str()],
        )?;
    }
    for m in &after.members {
        let params = params![
            m.instance.as_str(),
            set.as_str(),
            m.role.as_str(),
            m.replicates_from.as_ref().map(|f| f.as_str()),
            m.writable,
            options_json(&m.options)?
        ];
        match before.member(&m.instance) {
            Some(was) if was == m => {}
            Some(_) => {
                conn.execute(
                    "UPDATE members SET role = ?3, replicates_from = ?4, writable = ?5, \
                     options = ?6 WHERE instance = ?1 AND set_id = ?2",
                    params,
                )?;
            }
            None => {
                let n = conn.execute(
                    "INSERT INTO members (instance, set_id, role, replicates_from, writable, \
                     options) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (instance) DO NOTHING",
                    params,
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

fn options_json(options: &ReplicaOptions) -> Result<String> {
    serde_json::to_string(options).map_err(|e| StoreError::Internal(e.to_string()))
}

pub(super) fn load_set(conn: &Connection, set: &ReplicaSetId) -> Result<Option<ReplicaSet>> {
    let row = conn
        .query_row(
            "SELECT epoch, master, created_at FROM replica_sets WHERE id = ?1",
            [set.as_str()],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((epoch, master, created_at)) = row else {
        return Ok(None);
    };
    let mut stmt = conn.prepare(
        "SELECT instance, role, replicates_from, writable, options FROM members \
         WHERE set_id = ?1 ORDER BY role = 'replica', instance",
    )?;
    let members = stmt
        .query_map([set.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .map(|row| {
            let (instance, role, from, writable, options) = row?;
            Ok(Member {
                options: serde_json::from_str(&options)
                    .map_err(|e| StoreError::Internal(format!("the options of {instance}: {e}")))?,
                instance: id(instance)?,
                role: IntendedRole::parse_word(&role).map_err(StoreError::Internal)?,
                replicates_from: from.map(id).transpose()?,
                writable,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(ReplicaSet {
        id: set.clone(),
        epoch: Epoch::new(epoch as u64),
        master: id(master)?,
        members,
        created_at: Timestamp(created_at as u64),
    }))
}
