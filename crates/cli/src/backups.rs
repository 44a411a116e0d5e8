//! `tandem backup`: take (and follow), list, delete and cancel backups.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use tandem_api::client::Client;
use tandem_api::{BackupStatus, TakeBackup, TakeBackupKind};

use crate::workflows::Progress;
use crate::{instance_id, print, render, BackupCmd};

pub fn run(client: &Client, cmd: BackupCmd, json: bool, out: &mut dyn Write) -> Result<()> {
    match cmd {
        BackupCmd::Create {
            instance,
            incremental,
            parent,
            wait,
        } => {
            let id = instance_id(&instance)?;
            let request = TakeBackup {
                kind: if incremental {
                    TakeBackupKind::Incremental
                } else {
                    TakeBackupKind::Full
                },
                parent,
            };
            let started = client.take_backup(&id, &request)?;
            if !wait {
                return print(out, json, &started, |s| {
                    format!("backup {} of {instance} started\n", s.backup_id)
                });
            }
            follow(client, &started.backup_id, id, json, out)
        }
        BackupCmd::List { instance } => {
            let instance = instance.as_deref().map(instance_id).transpose()?;
            let list = client.backups(instance.as_ref())?;
            print(out, json, &list, |list| {
                let mut text = String::new();
                for b in &list.backups {
                    text.push_str(&render::backup_line(b));
                    text.push('\n');
                }
                for (id, r) in &list.running {
                    text.push_str(&render::running_line(id.as_str(), r));
                    text.push('\n');
                }
                text
            })
        }
        BackupCmd::Delete { backup } => {
            let deleted = client.delete_backup(&backup)?;
            print(out, json, &deleted, |_| {
                format!("backup {backup} deleted\n")
            })
        }
        BackupCmd::Cancel { backup } => {
            let asked = client.cancel_backup(&backup)?;
            print(out, json, &asked, |_| {
                format!("backup {backup}: cancel requested\n")
            })
        }
    }
}

/// Follows a backup to its end, with a progress bar; fails unless it is stored.
fn follow(
    client: &Client,
    id: &tandem_proto::BackupId,
    instance: tandem_proto::InstanceId,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let mut progress = Progress::new(vec![instance]);
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        progress.update(client);
        match client.backup(id)? {
            BackupStatus::Done { backup } => {
                progress.finish();
                return print(out, json, &*backup, |b| render::backup_line(b) + "\n");
            }
            BackupStatus::Failed { error, .. } => {
                progress.finish();
                anyhow::bail!(
                    "backup {id} failed: {}",
                    error.as_deref().unwrap_or("no reason given")
                );
            }
            BackupStatus::Running { .. } => {}
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "backup {id} still running after an hour"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
