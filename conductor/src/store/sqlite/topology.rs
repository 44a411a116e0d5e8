//! A set's topology in SQL: loading a set, applying a change and bumping the epoch in
//! the same transaction.

use rusqlite::{params, Connection, OptionalExtension};
use tandem_api::Word;
use tandem_proto::{Epoch, InstanceId, ReplicaSetId, Timestamp};

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
    match change {
        TopologyChange::AddReplica {
            instance,
            options,
            source,
        } => {
            let from = source.as_ref().unwrap_or(&current.master);
            if !current.members.iter().any(|m| {
                &m.instance == from
                    && matches!(m.role, IntendedRole::Master | IntendedRole::Replica)
            }) {
                return Err(StoreError::NotFound(format!(
                    "{from} is not a replicating member of set {set}"
                )));
            }
            let n = conn.execute(
                "INSERT INTO members (instance, set_id, role, replicates_from, writable, options) \
                 VALUES (?1, ?2, 'replica', ?3, 0, ?4) ON CONFLICT (instance) DO NOTHING",
                params![
                    instance.as_str(),
                    set.as_str(),
                    from.as_str(),
                    options_json(options)?
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "{instance} is already a member of a replica set"
                )));
            }
            // A server in a set is no longer free.
            conn.execute("DELETE FROM pool WHERE instance = ?1", [instance.as_str()])?;
        }
        TopologyChange::Reparent { instance, source } => {
            if source == instance || current.ancestors(source).contains(instance) {
                return Err(StoreError::Conflict(format!(
                    "{instance} cannot replicate from {source}: {source} replicates from it \
                     (a cycle)"
                )));
            }
            if !current.members.iter().any(|m| {
                &m.instance == source
                    && matches!(m.role, IntendedRole::Master | IntendedRole::Replica)
            }) {
                return Err(StoreError::NotFound(format!(
                    "{source} is not a replicating member of set {set}"
                )));
            }
            let n = conn.execute(
                "UPDATE members SET replicates_from = ?3 \
                 WHERE instance = ?1 AND set_id = ?2 AND role = 'replica'",
                params![instance.as_str(), set.as_str(), source.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "{instance} is not a replica of set {set}"
                )));
            }
        }
        TopologyChange::SetOptions { instance, options } => {
            let n = conn.execute(
                "UPDATE members SET options = ?3 \
                 WHERE instance = ?1 AND set_id = ?2 AND role = 'replica'",
                params![instance.as_str(), set.as_str(), options_json(options)?],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "{instance} is not a replica of set {set}"
                )));
            }
        }
        TopologyChange::RemoveReplica { instance } => {
            let n = conn.execute(
                "DELETE FROM members WHERE instance = ?1 AND set_id = ?2 AND role = 'replica'",
                params![instance.as_str(), set.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "{instance} is not a replica of set {set}"
                )));
            }
        }
        TopologyChange::NewMaster { new_master } => {
            if !current.members.iter().any(|m| &m.instance == new_master) {
                return Err(StoreError::NotFound(format!(
                    "{new_master} is not a member of set {set}"
                )));
            }
            new_master_in(conn, &current, new_master)?;
        }
        TopologyChange::PairUp { pair } => {
            let master = &current.master;
            let Some(peer) = pair.peer_of(master) else {
                return Err(StoreError::Conflict(format!(
                    "{master}, the master of set {set}, is not a side of the pair"
                )));
            };
            if current
                .member(peer)
                .and_then(|m| m.replicates_from.as_ref())
                != Some(master)
            {
                return Err(StoreError::Conflict(format!(
                    "{peer} is not a replica of {master}, the master of set {set}"
                )));
            }
            conn.execute(
                "UPDATE members SET replicates_from = ?2 WHERE instance = ?1",
                params![master.as_str(), peer.as_str()],
            )?;
            super::pair::write_pair(conn, set, pair)?;
        }
        TopologyChange::PairSwitch { new_active, pair } => {
            let old = current.master.clone();
            if pair.side_of(new_active).is_none() || pair.peer_of(new_active) != Some(&old) {
                return Err(StoreError::Conflict(format!(
                    "{new_active} is not the other side of {old} in set {set}"
                )));
            }
            new_master_in(conn, &current, new_active)?;
            // The new active side keeps replicating its peer.
            conn.execute(
                "UPDATE members SET replicates_from = ?2 WHERE instance = ?1",
                params![new_active.as_str(), old.as_str()],
            )?;
            super::pair::write_pair(conn, set, pair)?;
        }
        TopologyChange::SiteSwitch { new_master, dr } => {
            site_switch_in(conn, &current, new_master)?;
            super::placement::write_dr(conn, set, dr)?;
        }
        TopologyChange::SiteFailover {
            new_master,
            failed,
            dr,
        } => {
            new_master_in(conn, &current, new_master)?;
            for f in failed {
                conn.execute(
                    "UPDATE members SET role = 'failed', replicates_from = NULL, writable = 0, \
                     options = '{}' WHERE instance = ?1 AND set_id = ?2",
                    params![f.as_str(), set.as_str()],
                )?;
            }
            super::placement::write_dr(conn, set, dr)?;
        }
        TopologyChange::Failover { new_master, failed } => {
            new_master_in(conn, &current, new_master)?;
            conn.execute(
                "UPDATE members SET role = 'failed', replicates_from = NULL, writable = 0, \
                 options = '{}' WHERE instance = ?1 AND set_id = ?2",
                params![failed.as_str(), set.as_str()],
            )?;
        }
        TopologyChange::Rejoin { instance } | TopologyChange::Quarantine { instance } => {
            // Rejoin: a failed or quarantined member replicates again. Quarantine: a
            // returning failed master, or a replica whose re-seeding failed.
            let (role, from, from_roles) = match change {
                TopologyChange::Rejoin { .. } => (
                    "replica",
                    Some(current.master.as_str()),
                    "'failed', 'quarantined'",
                ),
                _ => ("quarantined", None, "'failed', 'quarantined', 'replica'"),
            };
            let n = conn.execute(
                &format!(
                    "UPDATE members SET role = ?3, replicates_from = ?4, writable = 0 \
                     WHERE instance = ?1 AND set_id = ?2 AND role IN ({from_roles})"
                ),
                params![instance.as_str(), set.as_str(), role, from],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "{instance} cannot be {} in set {set}: not a member in a role that allows it",
                    if role == "replica" {
                        "rejoined"
                    } else {
                        "quarantined"
                    }
                )));
            }
        }
    }
    let epoch = next_epoch(conn)?;
    conn.execute(
        "UPDATE replica_sets SET epoch = ?2 WHERE id = ?1",
        params![set.as_str(), epoch.get() as i64],
    )?;
    Ok(load_set(conn, set)?.expect("exists"))
}

/// `new_master` becomes the writable master; the old master and its direct replicas
/// (not failed or quarantined ones) replicate from it; cascaded replicas stay under
/// their sources.
pub(super) fn new_master_in(
    conn: &Connection,
    current: &ReplicaSet,
    new_master: &InstanceId,
) -> Result<()> {
    let set = &current.id;
    if !current.members.iter().any(|m| {
        &m.instance == new_master && matches!(m.role, IntendedRole::Master | IntendedRole::Replica)
    }) {
        return Err(StoreError::NotFound(format!(
            "{new_master} is not a replicating member of set {set}"
        )));
    }
    conn.execute(
        "UPDATE members SET role = 'replica', replicates_from = ?2, writable = 0 \
         WHERE set_id = ?1 AND (role = 'master' \
            OR (role = 'replica' AND (replicates_from = ?3 OR replicates_from IS NULL)))",
        params![set.as_str(), new_master.as_str(), current.master.as_str()],
    )?;
    crown(conn, set, new_master)
}

/// `new_master` is the set's writable master. A master has no replica options (one
/// promoted by force loses its pause or delay).
fn crown(conn: &Connection, set: &ReplicaSetId, new_master: &InstanceId) -> Result<()> {
    conn.execute(
        "UPDATE members SET role = 'master', replicates_from = NULL, writable = 1, \
         options = '{}' WHERE instance = ?1",
        [new_master.as_str()],
    )?;
    conn.execute(
        "UPDATE replica_sets SET master = ?2 WHERE id = ?1",
        params![set.as_str(), new_master.as_str()],
    )?;
    Ok(())
}

/// `new_master` becomes the master; the old master replicates from it; every other
/// member keeps its source.
fn site_switch_in(conn: &Connection, current: &ReplicaSet, new_master: &InstanceId) -> Result<()> {
    let set = &current.id;
    if current.member(new_master).map(|m| m.role) != Some(IntendedRole::Replica) {
        return Err(StoreError::NotFound(format!(
            "{new_master} is not a replica of set {set}"
        )));
    }
    conn.execute(
        "UPDATE members SET role = 'replica', replicates_from = ?2, writable = 0 \
         WHERE set_id = ?1 AND role = 'master'",
        params![set.as_str(), new_master.as_str()],
    )?;
    crown(conn, set, new_master)
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
