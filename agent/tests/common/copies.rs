//! Copies through the agent: long commands awaited as the conductor awaits them, a
//! master with rows, a marker that proves a target was left as it was.

use tandem_proto::{BackupInfo, BackupKind, BackupRequest, Position, RestoreRequest};

use super::*;

/// Sends a long command and waits for its result the way the conductor does: by
/// re-sending the same message until the answer is no longer "accepted".
pub async fn long(
    h: &Harness,
    target: &str,
    epoch: u64,
    body: Command,
) -> Result<ReplyBody, CommandError> {
    let env = envelope(target, Epoch::new(epoch), body);
    let first = h.send(&env).await?;
    assert_eq!(
        first,
        ReplyBody::Accepted {
            operation: env.message_id
        }
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match h.send(&env).await {
            Ok(ReplyBody::Accepted { .. }) => {}
            other => return other,
        }
        assert!(
            Instant::now() < deadline,
            "{} on {target} never finished",
            env.body.name()
        );
    }
}

pub async fn backup(h: &Harness, target: &str, id: &str, kind: BackupKind) -> BackupInfo {
    let request = BackupRequest {
        backup_id: id.parse().unwrap(),
        kind,
        time_limit_s: None,
    };
    match long(h, target, 1, Command::TakeBackup(request)).await {
        Ok(ReplyBody::Backup { backup }) => *backup,
        other => panic!("backup {id} on {target}: {other:?}"),
    }
}

pub async fn restore(h: &Harness, target: &str, id: &str) -> Result<Position, CommandError> {
    let request = RestoreRequest {
        backup_id: id.parse().unwrap(),
        time_limit_s: None,
    };
    long(h, target, 1, Command::Restore(request))
        .await
        .map(|r| match r {
            ReplyBody::Position { position } => position,
            other => panic!("restore answered {other:?}"),
        })
}

pub fn gtid(db: &MariaDb) -> Position {
    Position::Gtid(
        db.sql("SELECT @@gtid_current_pos")
            .unwrap()
            .parse()
            .unwrap(),
    )
}

/// Makes `master` a writable master with `app.t` holding rows 1..=n.
pub async fn master_with_rows(h: &Harness, master: &str, n: u32) {
    h.ok(master, 1, Command::EnableAsMaster { semi_sync: None })
        .await;
    h.ok(master, 1, Command::SetWritable).await;
    let db = &h.node(master).db;
    db.sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY)")
        .unwrap();
    insert(db, 1..=n);
}

pub fn insert(db: &MariaDb, ids: std::ops::RangeInclusive<u32>) {
    let values: Vec<String> = ids.map(|i| format!("({i})")).collect();
    db.sql(&format!("INSERT INTO app.t VALUES {}", values.join(",")))
        .unwrap();
}

pub fn count(db: &MariaDb) -> String {
    db.sql("SELECT COUNT(*) FROM app.t")
        .unwrap_or_else(|e| format!("{e}"))
}

/// A marker only the untouched target has: proves a refused restore changed nothing.
pub fn mark(db: &MariaDb) {
    db.sql("CREATE DATABASE untouched; CREATE TABLE untouched.m (x INT); INSERT INTO untouched.m VALUES (42)")
        .unwrap();
}

pub fn still_marked(db: &MariaDb) -> bool {
    db.sql("SELECT x FROM untouched.m").is_ok_and(|v| v == "42")
}

/// Replicates `replica` from `master`, starting at `position`.
pub async fn attach_at(h: &Harness, master: &str, replica: &str, position: Position) {
    let credentials = match h
        .ok(
            master,
            1,
            Command::CreateReplicationUser {
                replica: id(replica),
                from: None,
                seal_to: h.key_of(replica),
            },
        )
        .await
    {
        ReplyBody::Credentials { credentials } => credentials,
        other => panic!("{other:?}"),
    };
    h.ok(
        replica,
        1,
        Command::AttachToSource {
            source: h.endpoint(master),
            credentials,
            position: Some(position),
            semi_sync: false,
            delay_s: 0,
            paused: None,
            filter: None,
            peer: false,
        },
    )
    .await;
}

pub fn local_store(dir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("TANDEM_AGENT_BACKUP_STORE__KIND".into(), "local".into()),
        (
            "TANDEM_AGENT_BACKUP_STORE__PATH".into(),
            dir.display().to_string(),
        ),
    ]
}
