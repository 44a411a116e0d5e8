//! The PostgreSQL store's schema: the SQLite store's tables at its newest version
//! (`super::super::migrations`), in PostgreSQL's types. Made at first use in one
//! transaction; a store holding a newer version than this conductor knows is refused,
//! as with SQLite. Later changes are appended as numbered steps, never edited.
//!
//! Text that lists are ordered or paged by is `COLLATE "C"`: byte order, as SQLite's
//! and Rust's, whatever the database's locale (a locale's order skips punctuation, and
//! a cursor would then not find its place).

use super::link::Tx;
use crate::store::Result;

/// The schema version this conductor writes and reads.
pub(super) const VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS instances (
    id TEXT COLLATE "C" PRIMARY KEY,
    zone TEXT NOT NULL,
    engine TEXT NOT NULL,
    host TEXT,
    port INTEGER,
    host_id TEXT
);
CREATE TABLE IF NOT EXISTS metadata (
    instance TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (instance, key)
);
CREATE TABLE IF NOT EXISTS replica_sets (
    id TEXT COLLATE "C" PRIMARY KEY,
    epoch BIGINT NOT NULL,
    master TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    instance TEXT COLLATE "C" PRIMARY KEY,
    set_id TEXT COLLATE "C" NOT NULL REFERENCES replica_sets(id),
    role TEXT NOT NULL CHECK (role IN ('master', 'replica', 'failed', 'quarantined')),
    replicates_from TEXT COLLATE "C",
    writable BOOLEAN NOT NULL,
    options TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS members_by_set ON members (set_id);
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT COLLATE "C" PRIMARY KEY,
    kind TEXT NOT NULL,
    set_id TEXT COLLATE "C" NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS workflows_by_created ON workflows (created_at);
CREATE TABLE IF NOT EXISTS workflow_cancels (
    workflow_id TEXT PRIMARY KEY,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_workflow_per_set
    ON workflows (set_id) WHERE state IN ('running', 'rolling_back');
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('epoch', 0), ('conductor_term', 0)
    ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS set_failover (
    set_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS backups (
    id TEXT COLLATE "C" PRIMARY KEY,
    instance TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS failsafe_lists (
    set_id TEXT NOT NULL,
    master TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    peers TEXT NOT NULL,
    PRIMARY KEY (set_id, master, epoch)
);
CREATE TABLE IF NOT EXISTS enrolments (
    instance TEXT PRIMARY KEY,
    public_key TEXT,
    generation BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT COLLATE "C" PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_requests (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    who TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    workflow_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    step TEXT NOT NULL,
    target TEXT COLLATE "C" NOT NULL,
    command TEXT NOT NULL,
    message_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    result TEXT,
    sent_at BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);
CREATE INDEX IF NOT EXISTS journal_by_sent ON journal (sent_at);
CREATE TABLE IF NOT EXISTS pool (
    instance TEXT COLLATE "C" PRIMARY KEY,
    added_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS placement_rules (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    policy TEXT NOT NULL,
    scope TEXT NOT NULL,
    max_per_domain BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS set_rules (
    set_id TEXT COLLATE "C" NOT NULL REFERENCES replica_sets(id),
    rule_id TEXT COLLATE "C" NOT NULL REFERENCES placement_rules(id),
    PRIMARY KEY (set_id, rule_id)
);
CREATE TABLE IF NOT EXISTS set_dr (
    set_id TEXT PRIMARY KEY REFERENCES replica_sets(id),
    settings TEXT NOT NULL
);
-- Which conductor acts on the store, in which term, until when (the database's clock,
-- so that conductors on machines whose clocks differ agree). One row at most.
CREATE TABLE IF NOT EXISTS leader (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    holder TEXT NOT NULL,
    term BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS set_pair (
    set_id TEXT PRIMARY KEY REFERENCES replica_sets(id),
    pair TEXT NOT NULL
);
"#;

/// Brings the database to [`VERSION`], or refuses one newer than it.
pub(super) fn migrate(tx: &Tx<'_>) -> Result<i64> {
    // Two conductors starting at once on an empty database: one makes the schema, the
    // other waits here and then finds it made.
    tx.execute("SELECT pg_advisory_xact_lock(7447)", &[])?;
    tx.batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at BIGINT NOT NULL
        )",
    )?;
    let at: Option<i64> = tx
        .opt("SELECT max(version) FROM schema_version", &[])?
        .and_then(|r| r.get(0));
    match at {
        Some(v) if v > VERSION => Err(crate::store::StoreError::Internal(format!(
            "the store is at schema version {v}, newer than this conductor knows ({VERSION}): \
             run the conductor that wrote it, or a newer one"
        ))),
        Some(v) => Ok(v),
        None => {
            tx.batch(SCHEMA)?;
            tx.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                &[
                    &VERSION,
                    &"the schema of the SQLite store at its version 5",
                    &(tandem_proto::Timestamp::now().0 as i64),
                ],
            )?;
            Ok(VERSION)
        }
    }
}
