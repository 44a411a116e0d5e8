//! The SQLite store: one file under the conductor's data directory, WAL mode, every
//! change in a transaction, the schema in numbered migrations (`super::migrations`).
//!
//! This file holds one cohesive thing, the `Store` trait's implementation (one method
//! after the other, each a transaction); how rows read back is in [`rows`], a set's
//! topology changes in [`topology`], the in-memory copy the hot paths read in
//! [`cache`].

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tandem_proto::{Epoch, InstanceId, ReplicaSetId, Timestamp};

use super::*;

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Taken after `conn`, never before.
    cache: Mutex<Cache>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("field `data_dir`: cannot create {}: {e}", dir.display())
            })?;
        }
        let conn = Connection::open(path).map_err(|e| {
            anyhow::anyhow!(
                "field `data_dir`: cannot open the store {}: {e}",
                path.display()
            )
        })?;
        // Every hot read is a cached statement (the sets view reads several per set).
        conn.set_prepared_statement_cache_capacity(128);
        // Private to the conductor's user: the journal holds what commands carried. The
        // WAL and shared-memory files SQLite makes take the database's mode.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| {
                    anyhow::anyhow!(
                        "field `data_dir`: cannot make {} private: {e}",
                        path.display()
                    )
                },
            )?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a step recorded is a step on disk, before its command leaves.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut conn = conn;
        super::migrations::migrate(&mut conn)
            .map_err(|e| anyhow::anyhow!("the store {}: {e}", path.display()))?;
        let cache = load_cache(&conn).map_err(|e| {
            anyhow::anyhow!("the store {}: cannot read its sets: {e}", path.display())
        })?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            cache: Mutex::new(cache),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().expect("poisoned");
        f(&mut conn)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().expect("poisoned")
    }
}

/// What the hot paths read, as the database holds it.
fn load_cache(c: &Connection) -> Result<Cache> {
    let ids: Vec<String> = c
        .prepare("SELECT id FROM replica_sets")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut sets = Vec::with_capacity(ids.len());
    for set in ids {
        sets.extend(load_set(c, &id(set)?)?);
    }
    let active = c
        .prepare(&format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE state IN ('running', \
             'rolling_back')"
        ))?
        .query_map([], workflow_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Cache::of(sets, active))
}

mod pair;
mod placement;
mod rows;
mod topology;

use super::cache::Cache;
use rows::*;
use topology::*;

impl Store for SqliteStore {
    fn upsert_instance(&self, r: &InstanceRecord) -> Result<()> {
        self.upsert_instances(std::slice::from_ref(r))
    }

    fn upsert_instances(&self, records: &[InstanceRecord]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                // An unchanged row is not written: a transaction that writes nothing
                // commits without touching the disk.
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO instances (id, zone, engine, host, port, host_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE \
                     SET zone = ?2, engine = ?3, host = ?4, port = ?5, host_id = ?6 \
                     WHERE zone IS NOT ?2 OR engine IS NOT ?3 OR host IS NOT ?4 \
                     OR port IS NOT ?5 OR host_id IS NOT ?6",
                )?;
                for r in records {
                    upsert.execute(params![
                        r.id.as_str(),
                        r.zone,
                        r.engine,
                        r.host,
                        r.port,
                        r.host_id.as_ref().map(|h| h.as_str())
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn instance(&self, instance: &InstanceId) -> Result<Option<InstanceRecord>> {
        self.with(|c| {
            c.query_row(
                "SELECT zone, engine, host, port, host_id FROM instances WHERE id = ?1",
                [instance.as_str()],
                |r| {
                    Ok(InstanceRecord {
                        id: instance.clone(),
                        zone: r.get(0)?,
                        engine: r.get(1)?,
                        host: r.get(2)?,
                        port: r.get(3)?,
                        host_id: r
                            .get::<_, Option<String>>(4)?
                            .and_then(|h| tandem_proto::HostId::new(h).ok()),
                    })
                },
            )
            .optional()
            .map_err(Into::into)
        })
    }

    fn metadata(&self, instance: &InstanceId) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT key, value FROM metadata WHERE instance = ?1 ORDER BY key")?;
            let rows = stmt
                .query_map([instance.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn set_metadata(&self, instance: &InstanceId, key: &str, value: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO metadata (instance, key, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (instance, key) DO UPDATE SET value = ?3",
                params![instance.as_str(), key, value],
            )?;
            Ok(())
        })
    }

    fn delete_metadata(&self, instance: &InstanceId, key: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM metadata WHERE instance = ?1 AND key = ?2",
                params![instance.as_str(), key],
            )? > 0)
        })
    }

    fn create_set(&self, set: &ReplicaSetId, master: &InstanceId) -> Result<ReplicaSet> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if load_set(&tx, set)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "replica set {set} already exists"
                )));
            }
            let existing: Option<String> = tx
                .query_row(
                    "SELECT set_id FROM members WHERE instance = ?1",
                    [master.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(other) = existing {
                return Err(StoreError::Conflict(format!(
                    "{master} is already a member of replica set {other}"
                )));
            }
            let epoch = next_epoch(&tx)?;
            tx.execute(
                "INSERT INTO replica_sets (id, epoch, master, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    set.as_str(),
                    epoch.get() as i64,
                    master.as_str(),
                    Timestamp::now().0 as i64
                ],
            )?;
            tx.execute(
                "INSERT INTO members (instance, set_id, role, replicates_from, writable) \
                 VALUES (?1, ?2, 'master', NULL, 1)",
                params![master.as_str(), set.as_str()],
            )?;
            tx.execute("DELETE FROM pool WHERE instance = ?1", [master.as_str()])?;
            let created = load_set(&tx, set)?.expect("just inserted");
            tx.commit()?;
            self.cache().put(created.clone());
            Ok(created)
        })
    }

    fn set(&self, set: &ReplicaSetId) -> Result<Option<ReplicaSet>> {
        Ok(self.cache().set(set))
    }

    fn sets(&self) -> Result<Vec<ReplicaSet>> {
        Ok(self.cache().sets())
    }

    fn set_of(&self, instance: &InstanceId) -> Result<Option<ReplicaSetId>> {
        Ok(self.cache().set_of(instance))
    }

    fn sets_generation(&self) -> Option<u64> {
        Some(self.cache().generation())
    }

    fn apply(&self, set: &ReplicaSetId, change: &TopologyChange) -> Result<ReplicaSet> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let after = apply_in(&tx, set, change)?;
            tx.commit()?;
            self.cache().put(after.clone());
            Ok(after)
        })
    }

    fn apply_step(
        &self,
        workflow_id: &str,
        seq: u32,
        step: &str,
        set: &ReplicaSetId,
        change: &TopologyChange,
    ) -> Result<ReplicaSet> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let done: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM journal WHERE workflow_id = ?1 AND seq = ?2",
                    params![workflow_id, seq],
                    |r| r.get(0),
                )
                .optional()?;
            let after = if done.is_some() {
                load_set(&tx, set)?.ok_or_else(|| StoreError::NotFound(format!("no replica set {set}")))?
            } else {
                let after = apply_in(&tx, set, change)?;
                tx.execute(
                    &format!("INSERT INTO journal ({JOURNAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                    params![
                        workflow_id,
                        seq,
                        step,
                        after.master.as_str(),
                        change.to_string(),
                        tandem_proto::MessageId::random().to_string(),
                        after.epoch.get() as i64,
                        serde_json::json!({"epoch": after.epoch}).to_string(),
                        Timestamp::now().0 as i64
                    ],
                )?;
                after
            };
            tx.commit()?;
            self.cache().put(after.clone());
            Ok(after)
        })
    }

    fn delete_set(&self, set: &ReplicaSetId) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM members WHERE set_id = ?1", [set.as_str()])?;
            tx.execute("DELETE FROM set_rules WHERE set_id = ?1", [set.as_str()])?;
            tx.execute("DELETE FROM set_dr WHERE set_id = ?1", [set.as_str()])?;
            tx.execute("DELETE FROM set_pair WHERE set_id = ?1", [set.as_str()])?;
            tx.execute("DELETE FROM replica_sets WHERE id = ?1", [set.as_str()])?;
            tx.commit()?;
            self.cache().remove(set);
            Ok(())
        })
    }

    fn bump_epoch(&self, set: &ReplicaSetId) -> Result<Epoch> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let epoch = next_epoch(&tx)?;
            let n = tx.execute(
                "UPDATE replica_sets SET epoch = ?2 WHERE id = ?1",
                params![set.as_str(), epoch.get() as i64],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no replica set {set}")));
            }
            let after = load_set(&tx, set)?.expect("just updated");
            tx.commit()?;
            self.cache().put(after);
            Ok(epoch)
        })
    }

    fn start_workflow(&self, w: &WorkflowRow) -> Result<()> {
        self.with(|c| {
            let inserted = c.execute(
                &format!("INSERT INTO workflows ({WORKFLOW_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    w.id,
                    w.kind.as_str(),
                    w.set_id.as_str(),
                    serde_json::to_string(&w.params)?,
                    w.state.as_str(),
                    w.requested_by,
                    w.error,
                    w.created_at.0 as i64,
                    w.updated_at.0 as i64
                ],
            );
            match inserted {
                Ok(_) => {
                    self.cache().started(w);
                    Ok(())
                }
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    let active: String = c
                        .query_row(
                            "SELECT id FROM workflows WHERE set_id = ?1 AND state IN ('running', 'rolling_back')",
                            [w.set_id.as_str()],
                            |r| r.get(0),
                        )
                        .unwrap_or_else(|_| "unknown".into());
                    Err(StoreError::Busy {
                        set: w.set_id.clone(),
                        active,
                    })
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn workflow(&self, wid: &str) -> Result<Option<WorkflowRow>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = ?1"),
                [wid],
                workflow_row,
            )
            .optional()
            .map_err(Into::into)
        })
    }

    fn workflows(&self, f: &WorkflowFilter) -> Result<Vec<WorkflowRow>> {
        let (after_at, after_id) = match &f.after {
            Some(c) => (Some(c.created_at.0 as i64), Some(c.id.as_str())),
            None => (None, None),
        };
        self.with(|c| {
            c.prepare(&format!(
                "SELECT {WORKFLOW_COLUMNS} FROM workflows \
                 WHERE (?1 IS NULL OR set_id = ?1) AND (?2 IS NULL OR kind = ?2) \
                   AND (?3 IS NULL OR state = ?3) \
                   AND (?4 IS NULL OR created_at < ?4 OR (created_at = ?4 AND id > ?5)) \
                 ORDER BY created_at DESC, id LIMIT ?6"
            ))?
            .query_map(
                params![
                    f.set.as_ref().map(|s| s.as_str()),
                    f.kind.map(|k| k.as_str()),
                    f.state.map(|s| s.as_str()),
                    after_at,
                    after_id,
                    f.limit as i64
                ],
                workflow_row,
            )?
            .collect::<rusqlite::Result<_>>()
            .map_err(Into::into)
        })
    }

    fn active_workflows(&self) -> Result<Vec<WorkflowRow>> {
        Ok(self.cache().active_workflows())
    }

    fn update_workflow(&self, wid: &str, state: WorkflowState, error: Option<&str>) -> Result<()> {
        let now = Timestamp::now();
        self.with(|c| {
            c.execute(
                "UPDATE workflows SET state = ?2, error = COALESCE(?3, error), updated_at = ?4 WHERE id = ?1",
                params![wid, state.as_str(), error, now.0 as i64],
            )?;
            self.cache().changed(wid, state, error, now);
            Ok(())
        })
    }

    fn request_cancel(&self, wid: &str, by: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO workflow_cancels (workflow_id, requested_by, requested_at) VALUES (?1, ?2, ?3)",
                params![wid, by, Timestamp::now().0 as i64],
            )?;
            Ok(())
        })
    }

    fn cancel_requested(&self, wid: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row(
                "SELECT requested_by FROM workflow_cancels WHERE workflow_id = ?1",
                [wid],
                |r| r.get(0),
            )
            .optional()
            .map_err(Into::into)
        })
    }

    fn journal_entry(&self, wid: &str, seq: u32) -> Result<Option<JournalEntry>> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {JOURNAL_COLUMNS} FROM journal WHERE workflow_id = ?1 AND seq = ?2"
                ),
                params![wid, seq],
                journal_row,
            )
            .optional()
            .map_err(Into::into)
        })
    }

    fn journal_insert(&self, e: &JournalEntry) -> Result<()> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO journal ({JOURNAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    e.workflow_id,
                    e.seq,
                    e.step,
                    e.target.as_str(),
                    e.command,
                    e.message_id.to_string(),
                    e.epoch.get() as i64,
                    e.result.as_ref().map(|r| r.to_string()),
                    e.sent_at.0 as i64
                ],
            )?;
            Ok(())
        })
    }

    fn journal_result(&self, wid: &str, seq: u32, result: &serde_json::Value) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE journal SET result = ?3 WHERE workflow_id = ?1 AND seq = ?2",
                params![wid, seq, result.to_string()],
            )?;
            Ok(())
        })
    }

    fn journal(&self, wid: &str) -> Result<Vec<JournalEntry>> {
        self.with(|c| {
            c.prepare(&format!(
                "SELECT {JOURNAL_COLUMNS} FROM journal WHERE workflow_id = ?1 ORDER BY seq"
            ))?
            .query_map([wid], journal_row)?
            .collect::<rusqlite::Result<_>>()
            .map_err(Into::into)
        })
    }

    fn failover_state(&self, set: &ReplicaSetId) -> Result<FailoverState> {
        self.with(|c| {
            let text: Option<String> = c
                .prepare_cached("SELECT state FROM set_failover WHERE set_id = ?1")?
                .query_row([set.as_str()], |r| r.get(0))
                .optional()?;
            Ok(match text {
                Some(t) => serde_json::from_str(&t)?,
                None => FailoverState::default(),
            })
        })
    }

    fn set_failover_state(&self, set: &ReplicaSetId, state: &FailoverState) -> Result<()> {
        let text = serde_json::to_string(state)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO set_failover (set_id, state) VALUES (?1, ?2) \
                 ON CONFLICT (set_id) DO UPDATE SET state = ?2",
                params![set.as_str(), text],
            )?;
            Ok(())
        })
    }

    fn record_backup(&self, info: &tandem_proto::BackupInfo) -> Result<()> {
        let json = serde_json::to_string(info)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO backups (id, instance, created_at, info) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET info = ?4",
                params![
                    info.backup_id.as_str(),
                    info.instance.as_str(),
                    info.created_at.0 as i64,
                    json
                ],
            )?;
            Ok(())
        })
    }

    fn backups(&self, instance: Option<&InstanceId>) -> Result<Vec<tandem_proto::BackupInfo>> {
        let rows: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT info FROM backups WHERE ?1 IS NULL OR instance = ?1 \
                 ORDER BY created_at DESC, id DESC",
            )?;
            let rows = stmt
                .query_map([instance.map(|i| i.as_str())], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        rows.iter()
            .map(|j| serde_json::from_str(j).map_err(Into::into))
            .collect()
    }

    fn forget_backup(&self, id: &tandem_proto::BackupId) -> Result<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM backups WHERE id = ?1", [id.as_str()])? > 0))
    }

    fn journal_recent(&self, f: &JournalFilter) -> Result<Vec<JournalEntry>> {
        let (after_at, after_wf, after_seq) = match &f.after {
            Some(c) => (
                Some(c.sent_at.0 as i64),
                Some(c.workflow_id.as_str()),
                Some(i64::from(c.seq)),
            ),
            None => (None, None, None),
        };
        self.with(|c| {
            c.prepare(&format!(
                "SELECT {JOURNAL_COLUMNS} FROM journal \
                 WHERE (?1 IS NULL OR workflow_id = ?1) AND (?2 IS NULL OR target = ?2) \
                   AND (?3 IS NULL OR workflow_id IN (SELECT id FROM workflows WHERE set_id = ?3)) \
                   AND (?4 IS NULL OR sent_at < ?4 OR (sent_at = ?4 AND \
                        (workflow_id < ?5 OR (workflow_id = ?5 AND seq < ?6)))) \
                 ORDER BY sent_at DESC, workflow_id DESC, seq DESC LIMIT ?7"
            ))?
            .query_map(
                params![
                    f.workflow.as_deref(),
                    f.target.as_ref().map(|t| t.as_str()),
                    f.set.as_ref().map(|s| s.as_str()),
                    after_at,
                    after_wf,
                    after_seq,
                    f.limit as i64
                ],
                journal_row,
            )?
            .collect::<rusqlite::Result<_>>()
            .map_err(Into::into)
        })
    }

    fn begin_term(&self) -> Result<u64> {
        self.with(|c| {
            let v: i64 = c.query_row(
                "UPDATE counters SET value = value + 1 WHERE name = 'conductor_term' RETURNING value",
                [],
                |r| r.get(0),
            )?;
            Ok(v as u64)
        })
    }

    fn failsafe_secret(&self) -> Result<Vec<u8>> {
        self.with(|c| {
            let fresh: [u8; 32] = rand::random();
            c.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES ('failsafe', ?1)",
                [&fresh[..]],
            )?;
            Ok(c.query_row(
                "SELECT value FROM secrets WHERE name = 'failsafe'",
                [],
                |r| r.get(0),
            )?)
        })
    }

    fn record_failsafe_list(
        &self,
        set: &ReplicaSetId,
        master: &InstanceId,
        epoch: Epoch,
        peers: &[InstanceId],
        held: Option<Epoch>,
    ) -> Result<()> {
        let peers = serde_json::to_string(peers)?;
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM failsafe_lists WHERE set_id = ?1 AND (master != ?2 OR epoch < ?3)",
                params![
                    set.as_str(),
                    master.as_str(),
                    held.map(|e| e.get()).unwrap_or(0) as i64
                ],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO failsafe_lists (set_id, master, epoch, peers) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![set.as_str(), master.as_str(), epoch.get() as i64, peers],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn add_token(&self, name: &str, role: crate::access::Role, hash: &str) -> Result<()> {
        self.with(|c| {
            let added = c.execute(
                "INSERT OR IGNORE INTO api_tokens (name, role, hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![name, role.as_str(), hash, Timestamp::now().0 as i64],
            )?;
            if added == 0 {
                return Err(StoreError::Conflict(format!(
                    "a token named {name:?} exists; revoke it first or choose another name"
                )));
            }
            Ok(())
        })
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<crate::access::Caller>> {
        self.with(|c| {
            let row: Option<(String, String)> = c
                .query_row(
                    "SELECT name, role FROM api_tokens WHERE hash = ?1",
                    [hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            row.map(|(name, role)| {
                Ok(crate::access::Caller {
                    name,
                    role: crate::access::Role::parse(&role).map_err(StoreError::Internal)?,
                })
            })
            .transpose()
        })
    }

    fn tokens(&self) -> Result<Vec<crate::access::TokenRecord>> {
        self.with(|c| {
            let rows: Vec<(String, String, i64)> = c
                .prepare("SELECT name, role, created_at FROM api_tokens ORDER BY name")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter()
                .map(|(name, role, at)| {
                    Ok(crate::access::TokenRecord {
                        name,
                        role: crate::access::Role::parse(&role).map_err(StoreError::Internal)?,
                        created_at: Timestamp(at as u64),
                    })
                })
                .collect()
        })
    }

    fn revoke_token(&self, name: &str) -> Result<bool> {
        self.with(|c| Ok(c.execute("DELETE FROM api_tokens WHERE name = ?1", [name])? > 0))
    }

    fn record_request(&self, r: &ApiRequest) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO api_requests (at, who, method, path, status) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.at.0 as i64, r.who, r.method, r.path, r.status],
            )?;
            Ok(())
        })
    }

    fn requests(&self, limit: usize) -> Result<Vec<ApiRequest>> {
        self.with(|c| {
            let rows = c
                .prepare(
                    "SELECT at, who, method, path, status FROM api_requests \
                     ORDER BY id DESC LIMIT ?1",
                )?
                .query_map([limit as i64], |r| {
                    Ok(ApiRequest {
                        at: Timestamp(r.get::<_, i64>(0)? as u64),
                        who: r.get(1)?,
                        method: r.get(2)?,
                        path: r.get(3)?,
                        status: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    fn enrolments(&self) -> Result<Vec<Enrolment>> {
        self.with(|c| {
            let rows: Vec<(String, Option<String>, i64)> = c
                .prepare("SELECT instance, public_key, generation FROM enrolments")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter()
                .map(|(i, k, g)| {
                    Ok(Enrolment {
                        instance: id(i)?,
                        key: k
                            .map(|k| PublicKey::from_hex(&k).map_err(StoreError::Internal))
                            .transpose()?,
                        generation: g as u64,
                    })
                })
                .collect()
        })
    }

    fn pin_key(&self, instance: &InstanceId, key: &PublicKey) -> Result<Enrolment> {
        self.enrolment_write(instance, |now| now.pinned(key))
    }

    fn unpin_key(&self, instance: &InstanceId) -> Result<Enrolment> {
        self.enrolment_write(instance, |now| Ok(now.rekeyed()))
    }

    fn failsafe_lists(
        &self,
        set: &ReplicaSetId,
        master: &InstanceId,
    ) -> Result<Vec<(Epoch, Vec<InstanceId>)>> {
        self.with(|c| {
            let rows: Vec<(i64, String)> = c
                .prepare(
                    "SELECT epoch, peers FROM failsafe_lists WHERE set_id = ?1 AND master = ?2 \
                     ORDER BY epoch",
                )?
                .query_map(params![set.as_str(), master.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter()
                .map(|(e, p)| Ok((Epoch::new(e as u64), serde_json::from_str(&p)?)))
                .collect()
        })
    }
}

fn enrolment_of(tx: &rusqlite::Transaction<'_>, instance: &InstanceId) -> Result<Enrolment> {
    let row: Option<(Option<String>, i64)> = tx
        .query_row(
            "SELECT public_key, generation FROM enrolments WHERE instance = ?1",
            [instance.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (key, generation) = row.unwrap_or((None, 0));
    Ok(Enrolment {
        instance: instance.clone(),
        key: key
            .map(|k| PublicKey::from_hex(&k).map_err(StoreError::Internal))
            .transpose()?,
        generation: generation as u64,
    })
}

impl SqliteStore {
    fn enrolment_write(
        &self,
        instance: &InstanceId,
        change: impl FnOnce(&Enrolment) -> Result<Enrolment>,
    ) -> Result<Enrolment> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = enrolment_of(&tx, instance)?;
            let next = change(&now)?;
            tx.execute(
                "INSERT OR REPLACE INTO enrolments (instance, public_key, generation, changed_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    instance.as_str(),
                    next.key.map(|k| k.to_hex()),
                    next.generation as i64,
                    Timestamp::now().0 as i64
                ],
            )?;
            tx.commit()?;
            Ok(next)
        })
    }
}

#[cfg(test)]
mod tests;
