//! The SQLite side of [`PlacementStore`]: the pool and placement rules.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use tandem_api::{DrSettings, PlacementRule, RuleId};
use tandem_proto::{InstanceId, ReplicaSetId, Timestamp};

use super::rows::{col_id, col_word};
use super::SqliteStore;
use crate::store::{PlacementStore, Result, StoreError};

const RULE_COLUMNS: &str = "id, name, policy, scope, max_per_domain, created_at";

fn rule_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PlacementRule> {
    rule_row_at(r, 0)
}

/// A rule from the row's columns `at`.. (`RULE_COLUMNS`, in order).
fn rule_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<PlacementRule> {
    Ok(PlacementRule {
        id: {
            let text: String = r.get(at)?;
            text.parse().map_err(|e: String| {
                rusqlite::Error::FromSqlConversionFailure(at, rusqlite::types::Type::Text, e.into())
            })?
        },
        name: r.get(at + 1)?,
        policy: col_word(r, at + 2)?,
        scope: col_word(r, at + 3)?,
        max_per_domain: r.get(at + 4)?,
        created_at: Timestamp(r.get::<_, i64>(at + 5)? as u64),
    })
}

impl PlacementStore for SqliteStore {
    fn pool_add(&self, instances: &[InstanceId]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for i in instances {
                let set: Option<String> = tx
                    .query_row(
                        "SELECT set_id FROM members WHERE instance = ?1",
                        [i.as_str()],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(set) = set {
                    return Err(StoreError::Conflict(format!(
                        "{i} is a member of replica set {set}: only a server in no set can \
                         be in the pool"
                    )));
                }
                tx.execute(
                    "INSERT INTO pool (instance, added_at) VALUES (?1, ?2) \
                     ON CONFLICT (instance) DO NOTHING",
                    params![i.as_str(), Timestamp::now().0 as i64],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn pool_remove(&self, instances: &[InstanceId]) -> Result<usize> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut n = 0;
            for i in instances {
                n += tx.execute("DELETE FROM pool WHERE instance = ?1", [i.as_str()])?;
            }
            tx.commit()?;
            Ok(n)
        })
    }

    fn pool(&self) -> Result<Vec<(InstanceId, Timestamp)>> {
        self.with(|c| {
            let rows = c
                .prepare("SELECT instance, added_at FROM pool ORDER BY added_at, instance")?
                .query_map([], |r| {
                    Ok((col_id(r, 0)?, Timestamp(r.get::<_, i64>(1)? as u64)))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn create_rule(&self, rule: &PlacementRule) -> Result<()> {
        self.with(|c| {
            let n = c.execute(
                "INSERT INTO placement_rules (id, name, policy, scope, max_per_domain, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![
                    rule.id.as_str(),
                    rule.name,
                    rule.policy.as_str(),
                    rule.scope.as_str(),
                    rule.max_per_domain,
                    rule.created_at.0 as i64
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "a placement rule named {:?} (or with id {}) exists already",
                    rule.name, rule.id
                )));
            }
            Ok(())
        })
    }

    fn rules(&self) -> Result<Vec<PlacementRule>> {
        self.with(|c| {
            let rows = c
                .prepare(&format!(
                    "SELECT {RULE_COLUMNS} FROM placement_rules ORDER BY created_at, id"
                ))?
                .query_map([], rule_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn delete_rule(&self, rule: &RuleId) -> Result<bool> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let sets: Vec<String> = tx
                .prepare("SELECT set_id FROM set_rules WHERE rule_id = ?1 ORDER BY set_id")?
                .query_map([rule.as_str()], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if !sets.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "placement rule {rule} is kept by set(s) {}: take it off them first \
                     (`tandem rule remove SET {rule}`)",
                    sets.join(", ")
                )));
            }
            let n = tx.execute("DELETE FROM placement_rules WHERE id = ?1", [rule.as_str()])?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    fn set_rules(&self, set: &ReplicaSetId) -> Result<Vec<PlacementRule>> {
        self.with(|c| {
            let rows = c
                .prepare_cached(
                    "SELECT r.id, r.name, r.policy, r.scope, r.max_per_domain, r.created_at \
                     FROM placement_rules r JOIN set_rules s ON s.rule_id = r.id \
                     WHERE s.set_id = ?1 ORDER BY r.created_at, r.id",
                )?
                .query_map([set.as_str()], rule_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn all_set_rules(&self) -> Result<std::collections::HashMap<ReplicaSetId, Vec<PlacementRule>>> {
        self.with(|c| {
            let mut all: std::collections::HashMap<ReplicaSetId, Vec<PlacementRule>> =
                Default::default();
            let mut statement = c.prepare_cached(
                "SELECT s.set_id, r.id, r.name, r.policy, r.scope, r.max_per_domain, \
                 r.created_at FROM placement_rules r JOIN set_rules s ON s.rule_id = r.id \
                 ORDER BY r.created_at, r.id",
            )?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                let set: String = row.get(0)?;
                let rule = rule_row_at(row, 1)?;
                all.entry(super::rows::id(set)?).or_default().push(rule);
            }
            Ok(all)
        })
    }

    fn add_set_rules(&self, set: &ReplicaSetId, rules: &[RuleId]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: Option<String> = tx
                .query_row(
                    "SELECT id FROM replica_sets WHERE id = ?1",
                    [set.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("no replica set {set}")));
            }
            for rule in rules {
                let known: Option<String> = tx
                    .query_row(
                        "SELECT id FROM placement_rules WHERE id = ?1",
                        [rule.as_str()],
                        |r| r.get(0),
                    )
                    .optional()?;
                if known.is_none() {
                    return Err(StoreError::NotFound(format!("no placement rule {rule}")));
                }
                tx.execute(
                    "INSERT INTO set_rules (set_id, rule_id) VALUES (?1, ?2) \
                     ON CONFLICT DO NOTHING",
                    params![set.as_str(), rule.as_str()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn remove_set_rule(&self, set: &ReplicaSetId, rule: &RuleId) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM set_rules WHERE set_id = ?1 AND rule_id = ?2",
                params![set.as_str(), rule.as_str()],
            )? > 0)
        })
    }

    fn dr_settings(&self, set: &ReplicaSetId) -> Result<Option<DrSettings>> {
        self.with(|c| {
            let text: Option<String> = c
                .prepare_cached("SELECT settings FROM set_dr WHERE set_id = ?1")?
                .query_row([set.as_str()], |r| r.get(0))
                .optional()?;
            Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
        })
    }

    fn set_dr_settings(&self, set: &ReplicaSetId, settings: &DrSettings) -> Result<()> {
        self.with(|c| {
            write_dr(c, set, settings)?;
            Ok(())
        })
    }
}

/// Records a DR set's zones (in the caller's transaction, when it has one).
pub(super) fn write_dr(
    c: &rusqlite::Connection,
    set: &ReplicaSetId,
    settings: &DrSettings,
) -> Result<()> {
    c.execute(
        "INSERT INTO set_dr (set_id, settings) VALUES (?1, ?2) \
         ON CONFLICT (set_id) DO UPDATE SET settings = ?2",
        params![set.as_str(), serde_json::to_string(settings)?],
    )?;
    Ok(())
}
