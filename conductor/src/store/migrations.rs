//! The store's schema, as numbered migrations. Each runs once, in its own transaction
//! with the row that records it in `schema_version`; a store is at the highest version
//! recorded there. A conductor refuses a store newer than it knows (it would misread
//! it) and brings an older one up to date at start. Migrations are only ever appended:
//! a released one never changes.
//!
//! Migration 1 is the schema as it stood when versioning began; it creates only what
//! is missing, so a store from before versioning (all of it there, no version row)
//! adopts version 1 unchanged.

use rusqlite::{Connection, TransactionBehavior};

/// One step of the schema.
pub struct Migration {
    pub version: u32,
    /// What it does, in a few words (kept in `schema_version`).
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "the schema when versioning began",
        sql: "
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    engine TEXT NOT NULL,
    host TEXT,
    port INTEGER
);
CREATE TABLE IF NOT EXISTS metadata (
    instance TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (instance, key)
);
CREATE TABLE IF NOT EXISTS replica_sets (
    id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    master TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    instance TEXT PRIMARY KEY,          -- an instance is in at most one set
    set_id TEXT NOT NULL REFERENCES replica_sets(id),
    role TEXT NOT NULL CHECK (role IN ('master', 'replica', 'failed', 'quarantined')),
    replicates_from TEXT,
    writable INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    set_id TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- An operator's request to stop a running workflow, kept so that a conductor that
-- resumes the workflow after a restart still honours it.
CREATE TABLE IF NOT EXISTS workflow_cancels (
    workflow_id TEXT PRIMARY KEY,
    requested_by TEXT NOT NULL,
    requested_at INTEGER NOT NULL
);
-- At most one active workflow per set, enforced here rather than checked-then-set.
CREATE UNIQUE INDEX IF NOT EXISTS one_active_workflow_per_set
    ON workflows (set_id) WHERE state IN ('running', 'rolling_back');
-- Epochs come from one sequence for all sets: an agent keeps a single highest epoch, and
-- a server that leaves one set and joins another must never see a lower number.
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('epoch', 0);
INSERT OR IGNORE INTO counters (name, value) VALUES ('conductor_term', 0);
-- Per set: automatic failover paused, semi-sync wanted, anti-flapping memory.
CREATE TABLE IF NOT EXISTS set_failover (
    set_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
-- Backups the agents reported finished, as their BackupInfo (JSON).
CREATE TABLE IF NOT EXISTS backups (
    id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    info TEXT NOT NULL
);
-- The conductor's own secrets (the failsafe's, from which each replica's key is derived).
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
-- Failsafe lists sent to a set's master, recorded before they leave: a failover must
-- know every list the old master may hold.
CREATE TABLE IF NOT EXISTS failsafe_lists (
    set_id TEXT NOT NULL,
    master TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    peers TEXT NOT NULL,
    PRIMARY KEY (set_id, master, epoch)
);
-- The key each instance's agent signs with, pinned at enrolment; NULL after a re-key.
CREATE TABLE IF NOT EXISTS enrolments (
    instance TEXT PRIMARY KEY,
    public_key TEXT,
    generation INTEGER NOT NULL,
    changed_at INTEGER NOT NULL
);
-- API tokens: their SHA-256 only.
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
-- Every request that changed something, and who made it.
CREATE TABLE IF NOT EXISTS api_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    who TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    workflow_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,
    target TEXT NOT NULL,
    command TEXT NOT NULL,
    message_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    result TEXT,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);
",
    },
    Migration {
        version: 2,
        name: "replica options (delay, pause) on members; the delay out of metadata",
        sql: "
ALTER TABLE members ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
-- The metadata marker `replication_delay_s` was the intended delay: it becomes the
-- replica's option, and metadata shows the option from now on.
UPDATE members SET options = json_object('delay_s', (
    SELECT CAST(value AS INTEGER) FROM metadata
    WHERE metadata.instance = members.instance AND key = 'replication_delay_s'))
WHERE role = 'replica' AND EXISTS (
    SELECT 1 FROM metadata WHERE metadata.instance = members.instance
    AND key = 'replication_delay_s' AND CAST(value AS INTEGER) > 0);
DELETE FROM metadata WHERE key = 'replication_delay_s';
",
    },
    Migration {
        version: 3,
        name: "placement: hosts of instances, the free pool, placement rules, DR sets",
        sql: "
ALTER TABLE instances ADD COLUMN host_id TEXT;
-- Registered servers in no set that workflows may take (`tandem instance pool`).
CREATE TABLE pool (
    instance TEXT PRIMARY KEY,
    added_at INTEGER NOT NULL
);
CREATE TABLE placement_rules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    policy TEXT NOT NULL,
    scope TEXT NOT NULL,
    max_per_domain INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE set_rules (
    set_id TEXT NOT NULL REFERENCES replica_sets(id),
    rule_id TEXT NOT NULL REFERENCES placement_rules(id),
    PRIMARY KEY (set_id, rule_id)
);
-- A multi-zone DR set's zones (DrSettings, JSON); a DR switch swaps them in the
-- transaction that records the new master.
CREATE TABLE set_dr (
    set_id TEXT PRIMARY KEY REFERENCES replica_sets(id),
    settings TEXT NOT NULL
);
",
    },
    Migration {
        version: 4,
        name: "master-master pairs",
        sql: "
-- A master-master pair's sides and ledger (PairRecord, JSON), written with the
-- topology change that makes or switches it.
CREATE TABLE set_pair (
    set_id TEXT PRIMARY KEY REFERENCES replica_sets(id),
    pair TEXT NOT NULL
);
",
    },
    Migration {
        version: 5,
        name: "indexes for the queries of a fleet",
        sql: "
-- A set's members (every topology change reads its set back), the newest workflows
-- and audit entries (the list endpoints): without these each is a scan of the table,
-- thousands of rows at fleet scale.
CREATE INDEX members_by_set ON members (set_id);
CREATE INDEX workflows_by_created ON workflows (created_at);
CREATE INDEX journal_by_sent ON journal (sent_at);
",
    },
];

/// The newest schema this conductor knows.
pub fn newest() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The version a store is at (0: empty, or from before versioning).
pub fn current(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
}

/// Brings the store to [`newest`]; returns the version it was at.
pub fn migrate(conn: &mut Connection) -> Result<u32, String> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at INTEGER NOT NULL
        );",
    )
    .map_err(|e| format!("cannot read its schema version: {e}"))?;
    let was = current(conn).map_err(|e| format!("cannot read its schema version: {e}"))?;
    if was > newest() {
        return Err(format!(
            "it is at schema version {was}, newer than this conductor knows ({}): run the \
             conductor that wrote it (or a newer one), or restore a backup of the store",
            newest()
        ));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > was) {
        let mut run = || -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(m.sql)?;
            tx.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![m.version, m.name, tandem_proto::Timestamp::now().0 as i64],
            )?;
            tx.commit()
        };
        run().map_err(|e| format!("migration {} ({}) failed: {e}", m.version, m.name))?;
        tracing::info!(version = m.version, name = m.name, "store schema migrated");
    }
    Ok(was)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_after_the_other_from_one() {
        for (n, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, n + 1, "{}", m.name);
        }
    }

    #[test]
    fn a_fresh_store_is_brought_to_the_newest_version_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(current(&conn).unwrap(), newest());
        // Again: nothing to do.
        assert_eq!(migrate(&mut conn).unwrap(), newest());
        let rows: u32 = conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, newest());
    }

    #[test]
    fn a_store_from_before_versioning_adopts_version_one_and_keeps_its_data() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.execute(
            "INSERT INTO replica_sets (id, epoch, master, created_at) VALUES ('s1', 7, 'db-1', 1)",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(current(&conn).unwrap(), newest());
        let epoch: i64 = conn
            .query_row("SELECT epoch FROM replica_sets WHERE id = 's1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(epoch, 7);
    }

    #[test]
    fn a_delay_kept_as_metadata_becomes_the_replicas_option() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.execute_batch(
            "INSERT INTO replica_sets (id, epoch, master, created_at) VALUES ('s1', 7, 'db-1', 1);
             INSERT INTO members VALUES ('db-1', 's1', 'master', NULL, 1);
             INSERT INTO members VALUES ('db-2', 's1', 'replica', 'db-1', 0);
             INSERT INTO members VALUES ('db-3', 's1', 'replica', 'db-1', 0);
             INSERT INTO metadata VALUES ('db-2', 'replication_delay_s', '3600');
             INSERT INTO metadata VALUES ('db-2', 'promotion_rule', 'prefer');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let options = |i: &str| -> String {
            conn.query_row(
                "SELECT options FROM members WHERE instance = ?1",
                [i],
                |r| r.get(0),
            )
            .unwrap()
        };
        let db2: tandem_api::ReplicaOptions = serde_json::from_str(&options("db-2")).unwrap();
        assert_eq!(db2.delay_s, 3600);
        assert_eq!(options("db-3"), "{}");
        let left: Vec<String> = conn
            .prepare("SELECT key FROM metadata")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(left, ["promotion_rule"]);
    }

    #[test]
    fn a_store_newer_than_this_conductor_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, 'from the future', 0)",
            [newest() + 1],
        )
        .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(err.contains("newer than this conductor knows"), "{err}");
    }
}
