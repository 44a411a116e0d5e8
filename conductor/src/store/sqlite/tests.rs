use super::*;
use crate::store::suite::{store_suite, Opened};

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    (dir, s)
}

/// A store on a file of its own, for the suite.
struct OnFile {
    dir: tempfile::TempDir,
    store: SqliteStore,
}

fn on_file() -> OnFile {
    let (dir, store) = store();
    OnFile { dir, store }
}

impl Opened for OnFile {
    fn store(&self) -> &dyn Store {
        &self.store
    }
    fn reopen(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open(&self.dir.path().join("t.db")).unwrap())
    }
}

store_suite!(on_file);
fn i(s: &str) -> InstanceId {
    s.parse().unwrap()
}

#[test]
fn the_queries_of_a_fleet_use_an_index() {
    let (_d, s) = store();
    let plan = |sql: &str| -> String {
        s.with(|c| {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let rows: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(3))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows.join("; "))
        })
        .unwrap()
    };
    for (sql, index) in [
        (
            "SELECT instance FROM members WHERE set_id = 's1'",
            "members_by_set",
        ),
        (
            "SELECT id FROM workflows ORDER BY created_at DESC LIMIT 50",
            "workflows_by_created",
        ),
        (
            "SELECT seq FROM journal ORDER BY sent_at DESC LIMIT 50",
            "journal_by_sent",
        ),
    ] {
        let plan = plan(sql);
        assert!(plan.contains(index), "{sql}: {plan}");
    }
}

#[test]
fn a_cursor_reads_back_what_it_wrote() {
    let w = WorkflowCursor {
        created_at: Timestamp(1_700_000_000_123),
        id: "wf-1a2b~odd".into(),
    };
    let back: WorkflowCursor = w.to_string().parse().unwrap();
    assert_eq!(back.created_at, w.created_at);
    let j = JournalCursor {
        sent_at: Timestamp(5),
        workflow_id: "wf~x".into(),
        seq: 7,
    };
    assert_eq!(j.to_string().parse::<JournalCursor>().unwrap(), j);
    for bad in ["", "nonsense", "1~w", "x~w~1", "1~w~x"] {
        assert!(bad.parse::<JournalCursor>().is_err(), "{bad}");
    }
    assert!("12".parse::<WorkflowCursor>().is_err());
}

#[test]
fn instances_are_recorded_many_at_once_and_an_unchanged_one_is_not_written() {
    let (_d, s) = store();
    let record = |id: &str, zone: &str| InstanceRecord {
        id: i(id),
        zone: zone.into(),
        engine: "mariadb".into(),
        host: Some("10.0.0.1".into()),
        port: Some(3306),
        host_id: None,
    };
    s.upsert_instances(&[record("db-1", "a"), record("db-2", "a")])
        .unwrap();
    let changes = |s: &SqliteStore| s.with(|c| Ok(c.total_changes())).unwrap();
    let before = changes(&s);
    // The same records again: nothing written.
    s.upsert_instances(&[record("db-1", "a"), record("db-2", "a")])
        .unwrap();
    assert_eq!(changes(&s), before);
    // One moved: only it.
    s.upsert_instances(&[record("db-1", "a"), record("db-2", "b")])
        .unwrap();
    assert_eq!(changes(&s), before + 1);
    assert_eq!(s.instance(&i("db-2")).unwrap().unwrap().zone, "b");
    assert_eq!(s.instance(&i("db-1")).unwrap().unwrap().zone, "a");
}
