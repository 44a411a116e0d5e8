//! The PostgreSQL store: one database that several conductors share, one of them acting
//! at a time. Its tables are the SQLite store's (`schema`); what a topology change means
//! is decided once for both (`ReplicaSet::after`).
//!
//! **Fencing.** The acting conductor takes a term (`begin_term`: the next value of the
//! `conductor_term` counter). Every write transaction first reads the counter `FOR
//! SHARE` and fails with [`StoreError::Fenced`] when it is no longer this conductor's
//! term: a conductor that was deposed while it was frozen cannot land a write after a
//! newer one began, and a new term waits for the writes of the old one in flight (the
//! row lock) rather than overtaking them. A store that never began a term (the token
//! subcommands, tests) writes unfenced.
//!
//! The hot reads (sets, which set an instance is in, active workflows) come from the
//! same in-memory copy as SQLite's (`super::cache`), read afresh when a term begins.

mod lease;
mod link;
mod placement;
mod rows;
mod schema;
mod topology;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tandem_proto::{Epoch, InstanceId, ReplicaSetId, Timestamp};
use tokio_postgres::Client;

use super::cache::Cache;
use super::*;
pub use lease::{Holder, Lease};
use link::Tx;
use rows::*;
use topology::*;

pub struct PgStore {
    url: String,
    client: Mutex<Option<Client>>,
    /// Taken after `client`, never before.
    cache: Mutex<Cache>,
    /// The term this conductor acts in; 0 before `begin_term`.
    term: AtomicU64,
}

impl PgStore {
    /// Connects to the database at `url`, makes or checks its schema and reads what the
    /// hot paths need.
    pub fn open(url: &str) -> anyhow::Result<PgStore> {
        let store = PgStore {
            url: url.to_owned(),
            client: Mutex::new(None),
            cache: Mutex::new(Cache::default()),
            term: AtomicU64::new(0),
        };
        store
            .with(|c| {
                let tx = Tx::begin(c)?;
                schema::migrate(&tx)?;
                tx.commit()
            })
            .map_err(|e| anyhow::anyhow!("the PostgreSQL store: {e}"))?;
        store
            .reload()
            .map_err(|e| anyhow::anyhow!("the PostgreSQL store: cannot read its sets: {e}"))?;
        Ok(store)
    }

    /// Runs `f` on the connection, connecting again first if it was lost (a restarted
    /// server): the next call after an outage works without restarting the conductor.
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut held = self.client.lock().expect("poisoned");
        if held.as_ref().is_none_or(|c| c.is_closed()) {
            *held = Some(link::connect(&self.url)?);
        }
        f(held.as_mut().expect("connected"))
    }

    fn read<T>(&self, f: impl FnOnce(&Client) -> Result<T>) -> Result<T> {
        self.with(|c| f(c))
    }

    /// Runs `f` in a transaction that commits only while this conductor's term is the
    /// store's (see the module's documentation).
    fn write<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            self.fence(&tx)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn fence(&self, tx: &Tx<'_>) -> Result<()> {
        let mine = self.term.load(Ordering::SeqCst);
        if mine == 0 {
            return Ok(());
        }
        let row = tx.one(
            "SELECT value FROM counters WHERE name = 'conductor_term' FOR SHARE",
            &[],
        )?;
        let now = get::<i64>(&row, 0)? as u64;
        if now != mine {
            return Err(StoreError::Fenced { mine, now });
        }
        Ok(())
    }

    /// Acts in `term` from now on (taken with the lease, `Lease::try_take`): every write
    /// is fenced by it, and what the conductor before wrote is read afresh.
    pub fn act_in(&self, term: u64) -> Result<()> {
        self.term.store(term, Ordering::SeqCst);
        self.reload()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().expect("poisoned")
    }

    /// Reads the in-memory copy afresh from the database.
    fn reload(&self) -> Result<()> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            let ids = tx.query("SELECT id FROM replica_sets", &[])?;
            let mut sets = Vec::with_capacity(ids.len());
            for row in &ids {
                sets.extend(load_set(&tx, &get_id(row, 0)?, false)?);
            }
            let active = tx.query(
                &format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows \
                     WHERE state IN ('running', 'rolling_back')"
                ),
                &[],
            )?;
            let active = rows(active, workflow_row)?;
            tx.commit()?;
            *self.cache() = Cache::of(sets, active);
            Ok(())
        })
    }

    fn enrolment_write(
        &self,
        instance: &InstanceId,
        change: impl FnOnce(&Enrolment) -> Result<Enrolment>,
    ) -> Result<Enrolment> {
        self.write(|tx| {
            let row = tx.opt(
                "SELECT public_key, generation FROM enrolments WHERE instance = $1 FOR UPDATE",
                &[&instance.as_str()],
            )?;
            let (key, generation): (Option<String>, i64) = match &row {
                Some(r) => (get(r, 0)?, get(r, 1)?),
                None => (None, 0),
            };
            let now = Enrolment {
                instance: instance.clone(),
                key: key
                    .map(|k| PublicKey::from_hex(&k).map_err(StoreError::Internal))
                    .transpose()?,
                generation: generation as u64,
            };
            let next = change(&now)?;
            tx.execute(
                "INSERT INTO enrolments (instance, public_key, generation, changed_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (instance) DO UPDATE SET \
                 public_key = EXCLUDED.public_key, generation = EXCLUDED.generation, \
                 changed_at = EXCLUDED.changed_at",
                &[
                    &instance.as_str(),
                    &next.key.map(|k| k.to_hex()),
                    &(next.generation as i64),
                    &(Timestamp::now().0 as i64),
                ],
            )?;
            Ok(next)
        })
    }
}

impl Store for PgStore {
    fn upsert_instance(&self, r: &InstanceRecord) -> Result<()> {
        self.upsert_instances(std::slice::from_ref(r))
    }

    fn upsert_instances(&self, records: &[InstanceRecord]) -> Result<()> {
        self.write(|tx| {
            for r in records {
                // An unchanged row is not written.
                tx.execute(
                    "INSERT INTO instances (id, zone, engine, host, port, host_id) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE \
                     SET zone = $2, engine = $3, host = $4, port = $5, host_id = $6 \
                     WHERE instances.zone IS DISTINCT FROM $2 \
                        OR instances.engine IS DISTINCT FROM $3 \
                        OR instances.host IS DISTINCT FROM $4 \
                        OR instances.port IS DISTINCT FROM $5 \
                        OR instances.host_id IS DISTINCT FROM $6",
                    &[
                        &r.id.as_str(),
                        &r.zone,
                        &r.engine,
                        &r.host,
                        &r.port.map(i32::from),
                        &r.host_id.as_ref().map(|h| h.as_str()),
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn instance(&self, instance: &InstanceId) -> Result<Option<InstanceRecord>> {
        self.read(|c| {
            let Some(r) = link::opt(
                c,
                "SELECT zone, engine, host, port, host_id FROM instances WHERE id = $1",
                &[&instance.as_str()],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(InstanceRecord {
                id: instance.clone(),
                zone: get(&r, 0)?,
                engine: get(&r, 1)?,
                host: get(&r, 2)?,
                port: get::<Option<i32>>(&r, 3)?.and_then(|p| u16::try_from(p).ok()),
                host_id: get::<Option<String>>(&r, 4)?
                    .and_then(|h| tandem_proto::HostId::new(h).ok()),
            }))
        })
    }

    fn metadata(&self, instance: &InstanceId) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT key, value FROM metadata WHERE instance = $1 ORDER BY key",
                &[&instance.as_str()],
            )?;
            rows(found, |r| Ok((get(r, 0)?, get(r, 1)?)))
        })
    }

    fn set_metadata(&self, instance: &InstanceId, key: &str, value: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO metadata (instance, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (instance, key) DO UPDATE SET value = EXCLUDED.value",
                &[&instance.as_str(), &key, &value],
            )?;
            Ok(())
        })
    }

    fn delete_metadata(&self, instance: &InstanceId, key: &str) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM metadata WHERE instance = $1 AND key = $2",
                &[&instance.as_str(), &key],
            )? > 0)
        })
    }

    fn create_set(&self, set: &ReplicaSetId, master: &InstanceId) -> Result<ReplicaSet> {
        let created = self.write(|tx| {
            if load_set(tx, set, false)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "replica set {set} already exists"
                )));
            }
            if let Some(row) = tx.opt(
                "SELECT set_id FROM members WHERE instance = $1",
                &[&master.as_str()],
            )? {
                let other: String = get(&row, 0)?;
                return Err(StoreError::Conflict(format!(
                    "{master} is already a member of replica set {other}"
                )));
            }
            let epoch = next_epoch(tx)?;
            tx.execute(
                "INSERT INTO replica_sets (id, epoch, master, created_at) VALUES ($1, $2, $3, $4)",
                &[
                    &set.as_str(),
                    &(epoch.get() as i64),
                    &master.as_str(),
                    &(Timestamp::now().0 as i64),
                ],
            )?;
            tx.execute(
                "INSERT INTO members (instance, set_id, role, replicates_from, writable) \
                 VALUES ($1, $2, 'master', NULL, TRUE)",
                &[&master.as_str(), &set.as_str()],
            )?;
            tx.execute("DELETE FROM pool WHERE instance = $1", &[&master.as_str()])?;
            Ok(load_set(tx, set, false)?.expect("just inserted"))
        })?;
        self.cache().put(created.clone());
        Ok(created)
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
        // The copy is changed under the connection's lock, as SQLite's is: `with`
        // holds it for the whole closure.
        self.with(|c| {
            let tx = Tx::begin(c)?;
            self.fence(&tx)?;
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
            let tx = Tx::begin(c)?;
            self.fence(&tx)?;
            let done = tx
                .opt(
                    "SELECT 1 FROM journal WHERE workflow_id = $1 AND seq = $2",
                    &[&workflow_id, &i64::from(seq)],
                )?
                .is_some();
            let after = if done {
                load_set(&tx, set, false)?
                    .ok_or_else(|| StoreError::NotFound(format!("no replica set {set}")))?
            } else {
                let after = apply_in(&tx, set, change)?;
                tx.execute(
                    &format!(
                        "INSERT INTO journal ({JOURNAL_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                    ),
                    &[
                        &workflow_id,
                        &i64::from(seq),
                        &step,
                        &after.master.as_str(),
                        &change.to_string(),
                        &tandem_proto::MessageId::random().to_string(),
                        &(after.epoch.get() as i64),
                        &serde_json::json!({"epoch": after.epoch}).to_string(),
                        &(Timestamp::now().0 as i64),
                    ],
                )?;
                after
            };
            tx.commit()?;
            self.cache().put(after.clone());
            Ok(after)
        })
    }

    fn bump_epoch(&self, set: &ReplicaSetId) -> Result<Epoch> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            self.fence(&tx)?;
            let epoch = next_epoch(&tx)?;
            let n = tx.execute(
                "UPDATE replica_sets SET epoch = $2 WHERE id = $1",
                &[&set.as_str(), &(epoch.get() as i64)],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no replica set {set}")));
            }
            let after = load_set(&tx, set, false)?.expect("just updated");
            tx.commit()?;
            self.cache().put(after);
            Ok(epoch)
        })
    }

    fn delete_set(&self, set: &ReplicaSetId) -> Result<()> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            self.fence(&tx)?;
            for table in ["members", "set_rules", "set_dr", "set_pair"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE set_id = $1"),
                    &[&set.as_str()],
                )?;
            }
            tx.execute("DELETE FROM replica_sets WHERE id = $1", &[&set.as_str()])?;
            tx.commit()?;
            self.cache().remove(set);
            Ok(())
        })
    }

    fn start_workflow(&self, w: &WorkflowRow) -> Result<()> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            self.fence(&tx)?;
            let params = serde_json::to_string(&w.params)?;
            let inserted = tx.execute_raw(
                &format!(
                    "INSERT INTO workflows ({WORKFLOW_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ),
                &[
                    &w.id,
                    &w.kind.as_str(),
                    &w.set_id.as_str(),
                    &params,
                    &w.state.as_str(),
                    &w.requested_by,
                    &w.error,
                    &(w.created_at.0 as i64),
                    &(w.updated_at.0 as i64),
                ],
            );
            match inserted {
                Ok(_) => {
                    tx.commit()?;
                    self.cache().started(w);
                    Ok(())
                }
                Err(e) if link::is_unique_violation(&e) => {
                    drop(tx);
                    let active = link::opt(
                        c,
                        "SELECT id FROM workflows WHERE set_id = $1 \
                         AND state IN ('running', 'rolling_back')",
                        &[&w.set_id.as_str()],
                    )
                    .ok()
                    .flatten()
                    .and_then(|r| get::<String>(&r, 0).ok())
                    .unwrap_or_else(|| "unknown".into());
                    Err(StoreError::Busy {
                        set: w.set_id.clone(),
                        active,
                    })
                }
                Err(e) => Err(link::pg(e)),
            }
        })
    }

    fn workflow(&self, wid: &str) -> Result<Option<WorkflowRow>> {
        self.read(|c| {
            link::opt(
                c,
                &format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = $1"),
                &[&wid],
            )?
            .map(|r| workflow_row(&r))
            .transpose()
        })
    }

    fn workflows(&self, f: &WorkflowFilter) -> Result<Vec<WorkflowRow>> {
        let (after_at, after_id) = match &f.after {
            Some(c) => (Some(c.created_at.0 as i64), Some(c.id.as_str())),
            None => (None, None),
        };
        let set = f.set.as_ref().map(|s| s.as_str());
        let kind = f.kind.map(|k| k.as_str());
        let state = f.state.map(|s| s.as_str());
        self.read(|c| {
            let found = link::query(
                c,
                &format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows \
                     WHERE ($1::text IS NULL OR set_id = $1) AND ($2::text IS NULL OR kind = $2) \
                       AND ($3::text IS NULL OR state = $3) \
                       AND ($4::bigint IS NULL OR created_at < $4 \
                            OR (created_at = $4 AND id > $5::text)) \
                     ORDER BY created_at DESC, id LIMIT $6"
                ),
                &[&set, &kind, &state, &after_at, &after_id, &(f.limit as i64)],
            )?;
            rows(found, workflow_row)
        })
    }

    fn active_workflows(&self) -> Result<Vec<WorkflowRow>> {
        Ok(self.cache().active_workflows())
    }

    fn update_workflow(&self, wid: &str, state: WorkflowState, error: Option<&str>) -> Result<()> {
        let now = Timestamp::now();
        self.with(|c| {
            let tx = Tx::begin(c)?;
            self.fence(&tx)?;
            tx.execute(
                "UPDATE workflows SET state = $2, error = COALESCE($3, error), updated_at = $4 \
                 WHERE id = $1",
                &[&wid, &state.as_str(), &error, &(now.0 as i64)],
            )?;
            tx.commit()?;
            self.cache().changed(wid, state, error, now);
            Ok(())
        })
    }

    fn request_cancel(&self, wid: &str, by: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO workflow_cancels (workflow_id, requested_by, requested_at) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&wid, &by, &(Timestamp::now().0 as i64)],
            )?;
            Ok(())
        })
    }

    fn cancel_requested(&self, wid: &str) -> Result<Option<String>> {
        self.read(|c| {
            link::opt(
                c,
                "SELECT requested_by FROM workflow_cancels WHERE workflow_id = $1",
                &[&wid],
            )?
            .map(|r| get(&r, 0))
            .transpose()
        })
    }

    fn journal_entry(&self, wid: &str, seq: u32) -> Result<Option<JournalEntry>> {
        self.read(|c| {
            link::opt(
                c,
                &format!(
                    "SELECT {JOURNAL_COLUMNS} FROM journal WHERE workflow_id = $1 AND seq = $2"
                ),
                &[&wid, &i64::from(seq)],
            )?
            .map(|r| journal_row(&r))
            .transpose()
        })
    }

    fn journal_insert(&self, e: &JournalEntry) -> Result<()> {
        let result = e.result.as_ref().map(|r| r.to_string());
        self.write(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO journal ({JOURNAL_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ),
                &[
                    &e.workflow_id,
                    &i64::from(e.seq),
                    &e.step,
                    &e.target.as_str(),
                    &e.command,
                    &e.message_id.to_string(),
                    &(e.epoch.get() as i64),
                    &result,
                    &(e.sent_at.0 as i64),
                ],
            )?;
            Ok(())
        })
    }

    fn journal_result(&self, wid: &str, seq: u32, result: &serde_json::Value) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE journal SET result = $3 WHERE workflow_id = $1 AND seq = $2",
                &[&wid, &i64::from(seq), &result.to_string()],
            )?;
            Ok(())
        })
    }

    fn journal(&self, wid: &str) -> Result<Vec<JournalEntry>> {
        self.read(|c| {
            let found = link::query(
                c,
                &format!(
                    "SELECT {JOURNAL_COLUMNS} FROM journal WHERE workflow_id = $1 ORDER BY seq"
                ),
                &[&wid],
            )?;
            rows(found, journal_row)
        })
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
        let workflow = f.workflow.as_deref();
        let target = f.target.as_ref().map(|t| t.as_str());
        let set = f.set.as_ref().map(|s| s.as_str());
        self.read(|c| {
            let found = link::query(
                c,
                &format!(
                    "SELECT {JOURNAL_COLUMNS} FROM journal \
                     WHERE ($1::text IS NULL OR workflow_id = $1) \
                       AND ($2::text IS NULL OR target = $2) \
                       AND ($3::text IS NULL OR workflow_id IN \
                            (SELECT id FROM workflows WHERE set_id = $3)) \
                       AND ($4::bigint IS NULL OR sent_at < $4 OR (sent_at = $4 AND \
                            (workflow_id < $5::text OR (workflow_id = $5 AND seq < $6::bigint)))) \
                     ORDER BY sent_at DESC, workflow_id DESC, seq DESC LIMIT $7"
                ),
                &[
                    &workflow,
                    &target,
                    &set,
                    &after_at,
                    &after_wf,
                    &after_seq,
                    &(f.limit as i64),
                ],
            )?;
            rows(found, journal_row)
        })
    }

    fn failover_state(&self, set: &ReplicaSetId) -> Result<FailoverState> {
        self.read(|c| {
            Ok(
                match link::opt(
                    c,
                    "SELECT state FROM set_failover WHERE set_id = $1",
                    &[&set.as_str()],
                )? {
                    Some(r) => get_json(&r, 0)?,
                    None => FailoverState::default(),
                },
            )
        })
    }

    fn set_failover_state(&self, set: &ReplicaSetId, state: &FailoverState) -> Result<()> {
        let text = serde_json::to_string(state)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO set_failover (set_id, state) VALUES ($1, $2) \
                 ON CONFLICT (set_id) DO UPDATE SET state = EXCLUDED.state",
                &[&set.as_str(), &text],
            )?;
            Ok(())
        })
    }

    fn record_backup(&self, info: &tandem_proto::BackupInfo) -> Result<()> {
        let json = serde_json::to_string(info)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO backups (id, instance, created_at, info) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET info = EXCLUDED.info",
                &[
                    &info.backup_id.as_str(),
                    &info.instance.as_str(),
                    &(info.created_at.0 as i64),
                    &json,
                ],
            )?;
            Ok(())
        })
    }

    fn backups(&self, instance: Option<&InstanceId>) -> Result<Vec<tandem_proto::BackupInfo>> {
        let instance = instance.map(|i| i.as_str());
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT info FROM backups WHERE $1::text IS NULL OR instance = $1 \
                 ORDER BY created_at DESC, id DESC",
                &[&instance],
            )?;
            rows(found, |r| get_json(r, 0))
        })
    }

    fn forget_backup(&self, id: &tandem_proto::BackupId) -> Result<bool> {
        self.write(|tx| Ok(tx.execute("DELETE FROM backups WHERE id = $1", &[&id.as_str()])? > 0))
    }

    fn begin_term(&self) -> Result<u64> {
        // Not fenced: taking the next term is what deposes the conductor before.
        let term = self.with(|c| {
            let tx = Tx::begin(c)?;
            let row = tx.one(
                "UPDATE counters SET value = value + 1 WHERE name = 'conductor_term' \
                 RETURNING value",
                &[],
            )?;
            tx.commit()?;
            Ok(get::<i64>(&row, 0)? as u64)
        })?;
        self.act_in(term)?;
        Ok(term)
    }

    fn failsafe_secret(&self) -> Result<Vec<u8>> {
        let fresh: [u8; 32] = rand::random();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES ('failsafe', $1) ON CONFLICT DO NOTHING",
                &[&&fresh[..]],
            )?;
            get(
                &tx.one("SELECT value FROM secrets WHERE name = 'failsafe'", &[])?,
                0,
            )
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
        self.write(|tx| {
            tx.execute(
                "DELETE FROM failsafe_lists WHERE set_id = $1 AND (master != $2 OR epoch < $3)",
                &[
                    &set.as_str(),
                    &master.as_str(),
                    &(held.map(|e| e.get()).unwrap_or(0) as i64),
                ],
            )?;
            tx.execute(
                "INSERT INTO failsafe_lists (set_id, master, epoch, peers) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (set_id, master, epoch) \
                 DO UPDATE SET peers = EXCLUDED.peers",
                &[
                    &set.as_str(),
                    &master.as_str(),
                    &(epoch.get() as i64),
                    &peers,
                ],
            )?;
            Ok(())
        })
    }

    fn failsafe_lists(
        &self,
        set: &ReplicaSetId,
        master: &InstanceId,
    ) -> Result<Vec<(Epoch, Vec<InstanceId>)>> {
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT epoch, peers FROM failsafe_lists WHERE set_id = $1 AND master = $2 \
                 ORDER BY epoch",
                &[&set.as_str(), &master.as_str()],
            )?;
            rows(found, |r| {
                Ok((Epoch::new(get::<i64>(r, 0)? as u64), get_json(r, 1)?))
            })
        })
    }

    fn enrolments(&self) -> Result<Vec<Enrolment>> {
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT instance, public_key, generation FROM enrolments",
                &[],
            )?;
            rows(found, |r| {
                Ok(Enrolment {
                    instance: get_id(r, 0)?,
                    key: get::<Option<String>>(r, 1)?
                        .map(|k| PublicKey::from_hex(&k).map_err(StoreError::Internal))
                        .transpose()?,
                    generation: get::<i64>(r, 2)? as u64,
                })
            })
        })
    }

    fn pin_key(&self, instance: &InstanceId, key: &PublicKey) -> Result<Enrolment> {
        self.enrolment_write(instance, |now| now.pinned(key))
    }

    fn unpin_key(&self, instance: &InstanceId) -> Result<Enrolment> {
        self.enrolment_write(instance, |now| Ok(now.rekeyed()))
    }

    fn add_token(&self, name: &str, role: crate::access::Role, hash: &str) -> Result<()> {
        self.write(|tx| {
            let added = tx.execute(
                "INSERT INTO api_tokens (name, role, hash, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&name, &role.as_str(), &hash, &(Timestamp::now().0 as i64)],
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
        self.read(|c| {
            link::opt(
                c,
                "SELECT name, role FROM api_tokens WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| {
                Ok(crate::access::Caller {
                    name: get(&r, 0)?,
                    role: crate::access::Role::parse(&get::<String>(&r, 1)?)
                        .map_err(StoreError::Internal)?,
                })
            })
            .transpose()
        })
    }

    fn tokens(&self) -> Result<Vec<crate::access::TokenRecord>> {
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT name, role, created_at FROM api_tokens ORDER BY name",
                &[],
            )?;
            rows(found, |r| {
                Ok(crate::access::TokenRecord {
                    name: get(r, 0)?,
                    role: crate::access::Role::parse(&get::<String>(r, 1)?)
                        .map_err(StoreError::Internal)?,
                    created_at: get_time(r, 2)?,
                })
            })
        })
    }

    fn revoke_token(&self, name: &str) -> Result<bool> {
        self.write(|tx| Ok(tx.execute("DELETE FROM api_tokens WHERE name = $1", &[&name])? > 0))
    }

    fn record_request(&self, r: &ApiRequest) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO api_requests (at, who, method, path, status) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &(r.at.0 as i64),
                    &r.who,
                    &r.method,
                    &r.path,
                    &i32::from(r.status),
                ],
            )?;
            Ok(())
        })
    }

    fn requests(&self, limit: usize) -> Result<Vec<ApiRequest>> {
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT at, who, method, path, status FROM api_requests ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )?;
            rows(found, |r| {
                Ok(ApiRequest {
                    at: get_time(r, 0)?,
                    who: get(r, 1)?,
                    method: get(r, 2)?,
                    path: get(r, 3)?,
                    status: u16::try_from(get::<i32>(r, 4)?)
                        .map_err(|e| StoreError::Internal(e.to_string()))?,
                })
            })
        })
    }
}

#[cfg(test)]
mod tests;
