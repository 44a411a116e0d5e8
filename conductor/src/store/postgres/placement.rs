//! The PostgreSQL side of [`PlacementStore`] and [`PairStore`]: the pool, placement
//! rules, DR zones and pairs.

use std::collections::HashMap;

use tandem_api::{DrSettings, PlacementRule, RuleId};
use tandem_proto::{InstanceId, ReplicaSetId, Timestamp};

use super::link::{self, Tx};
use super::rows::*;
use super::PgStore;
use crate::store::{PairRecord, PairStore, PlacementStore, Result, StoreError};

/// A rule from the row's columns `at`.. (`id, name, policy, scope, max_per_domain,
/// created_at`, in order).
fn rule_at(r: &tokio_postgres::Row, at: usize) -> Result<PlacementRule> {
    let id: String = get(r, at)?;
    Ok(PlacementRule {
        id: id.parse().map_err(StoreError::Internal)?,
        name: get(r, at + 1)?,
        policy: get_word(r, at + 2)?,
        scope: get_word(r, at + 3)?,
        max_per_domain: get::<Option<i64>>(r, at + 4)?
            .map(|n| u32::try_from(n).map_err(|e| StoreError::Internal(e.to_string())))
            .transpose()?,
        created_at: get_time(r, at + 5)?,
    })
}

impl PlacementStore for PgStore {
    fn pool_add(&self, instances: &[InstanceId]) -> Result<()> {
        self.write(|tx| {
            for i in instances {
                if let Some(row) = tx.opt(
                    "SELECT set_id FROM members WHERE instance = $1",
                    &[&i.as_str()],
                )? {
                    let set: String = get(&row, 0)?;
                    return Err(StoreError::Conflict(format!(
                        "{i} is a member of replica set {set}: only a server in no set can \
                         be in the pool"
                    )));
                }
                tx.execute(
                    "INSERT INTO pool (instance, added_at) VALUES ($1, $2) \
                     ON CONFLICT (instance) DO NOTHING",
                    &[&i.as_str(), &(Timestamp::now().0 as i64)],
                )?;
            }
            Ok(())
        })
    }

    fn pool_remove(&self, instances: &[InstanceId]) -> Result<usize> {
        self.write(|tx| {
            let mut n = 0;
            for i in instances {
                n += tx.execute("DELETE FROM pool WHERE instance = $1", &[&i.as_str()])?;
            }
            Ok(n as usize)
        })
    }

    fn pool(&self) -> Result<Vec<(InstanceId, Timestamp)>> {
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT instance, added_at FROM pool ORDER BY added_at, instance",
                &[],
            )?;
            rows(found, |r| Ok((get_id(r, 0)?, get_time(r, 1)?)))
        })
    }

    fn create_rule(&self, rule: &PlacementRule) -> Result<()> {
        let max = rule.max_per_domain.map(i64::from);
        self.write(|tx| {
            let n = tx.execute(
                "INSERT INTO placement_rules (id, name, policy, scope, max_per_domain, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &rule.id.as_str(),
                    &rule.name,
                    &rule.policy.as_str(),
                    &rule.scope.as_str(),
                    &max,
                    &(rule.created_at.0 as i64),
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
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT id, name, policy, scope, max_per_domain, created_at FROM placement_rules \
                 ORDER BY created_at, id",
                &[],
            )?;
            rows(found, |r| rule_at(r, 0))
        })
    }

    fn delete_rule(&self, rule: &RuleId) -> Result<bool> {
        self.write(|tx| {
            let sets = tx.query(
                "SELECT set_id FROM set_rules WHERE rule_id = $1 ORDER BY set_id",
                &[&rule.as_str()],
            )?;
            let sets: Vec<String> = rows(sets, |r| get(r, 0))?;
            if !sets.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "placement rule {rule} is kept by set(s) {}: take it off them first \
                     (`tandem rule remove SET {rule}`)",
                    sets.join(", ")
                )));
            }
            Ok(tx.execute(
                "DELETE FROM placement_rules WHERE id = $1",
                &[&rule.as_str()],
            )? > 0)
        })
    }

    fn set_rules(&self, set: &ReplicaSetId) -> Result<Vec<PlacementRule>> {
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT r.id, r.name, r.policy, r.scope, r.max_per_domain, r.created_at \
                 FROM placement_rules r JOIN set_rules s ON s.rule_id = r.id \
                 WHERE s.set_id = $1 ORDER BY r.created_at, r.id",
                &[&set.as_str()],
            )?;
            rows(found, |r| rule_at(r, 0))
        })
    }

    fn all_set_rules(&self) -> Result<HashMap<ReplicaSetId, Vec<PlacementRule>>> {
        self.read(|c| {
            let found = link::query(
                c,
                "SELECT s.set_id, r.id, r.name, r.policy, r.scope, r.max_per_domain, \
                 r.created_at FROM placement_rules r JOIN set_rules s ON s.rule_id = r.id \
                 ORDER BY r.created_at, r.id",
                &[],
            )?;
            let mut all: HashMap<ReplicaSetId, Vec<PlacementRule>> = HashMap::new();
            for row in &found {
                all.entry(get_id(row, 0)?)
                    .or_default()
                    .push(rule_at(row, 1)?);
            }
            Ok(all)
        })
    }

    fn add_set_rules(&self, set: &ReplicaSetId, rules: &[RuleId]) -> Result<()> {
        self.write(|tx| {
            if tx
                .opt(
                    "SELECT id FROM replica_sets WHERE id = $1",
                    &[&set.as_str()],
                )?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("no replica set {set}")));
            }
            for rule in rules {
                if tx
                    .opt(
                        "SELECT id FROM placement_rules WHERE id = $1",
                        &[&rule.as_str()],
                    )?
                    .is_none()
                {
                    return Err(StoreError::NotFound(format!("no placement rule {rule}")));
                }
                tx.execute(
                    "INSERT INTO set_rules (set_id, rule_id) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                    &[&set.as_str(), &rule.as_str()],
                )?;
            }
            Ok(())
        })
    }

    fn remove_set_rule(&self, set: &ReplicaSetId, rule: &RuleId) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM set_rules WHERE set_id = $1 AND rule_id = $2",
                &[&set.as_str(), &rule.as_str()],
            )? > 0)
        })
    }

    fn dr_settings(&self, set: &ReplicaSetId) -> Result<Option<DrSettings>> {
        self.read(|c| {
            link::opt(
                c,
                "SELECT settings FROM set_dr WHERE set_id = $1",
                &[&set.as_str()],
            )?
            .map(|r| get_json(&r, 0))
            .transpose()
        })
    }

    fn set_dr_settings(&self, set: &ReplicaSetId, settings: &DrSettings) -> Result<()> {
        self.write(|tx| write_dr(tx, set, settings))
    }
}

impl PairStore for PgStore {
    fn pair(&self, set: &ReplicaSetId) -> Result<Option<PairRecord>> {
        self.read(|c| {
            link::opt(
                c,
                "SELECT pair FROM set_pair WHERE set_id = $1",
                &[&set.as_str()],
            )?
            .map(|r| get_json(&r, 0))
            .transpose()
        })
    }
}

/// Records a DR set's zones (in the caller's transaction).
pub(super) fn write_dr(tx: &Tx<'_>, set: &ReplicaSetId, settings: &DrSettings) -> Result<()> {
    tx.execute(
        "INSERT INTO set_dr (set_id, settings) VALUES ($1, $2) \
         ON CONFLICT (set_id) DO UPDATE SET settings = EXCLUDED.settings",
        &[&set.as_str(), &serde_json::to_string(settings)?],
    )?;
    Ok(())
}

/// Records a pair (in the caller's transaction: the topology change's).
pub(super) fn write_pair(tx: &Tx<'_>, set: &ReplicaSetId, pair: &PairRecord) -> Result<()> {
    tx.execute(
        "INSERT INTO set_pair (set_id, pair) VALUES ($1, $2) \
         ON CONFLICT (set_id) DO UPDATE SET pair = EXCLUDED.pair",
        &[&set.as_str(), &serde_json::to_string(pair)?],
    )?;
    Ok(())
}
