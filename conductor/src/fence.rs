//! The infrastructure fence (STONITH): the operator's command that makes a host unable
//! to serve anyone, run before a master that cannot be heard is replaced.
//!
//! The agent's lease makes a cut-off master read-only on its own, but a host that was
//! frozen (a paused VM, a stalled hypervisor) thaws with its engine answering clients
//! before its agent has run a single instruction: for that moment it is writable next
//! to the new master. Only something outside the host can close that window, by
//! stopping the VM or downing its port while it is still frozen.
//!
//! The contract: the command gets the instance id as its argument (and the set and
//! engine address in its environment); exit status 0 means the host can no longer
//! serve a client. Anything else, or no answer within the timeout, is a failed fence:
//! the failover then falls back to waiting out the master's lease.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tandem_proto::{InstanceId, ReplicaSetId};

#[derive(Debug, Clone)]
pub struct FenceCommand {
    pub program: PathBuf,
    pub timeout: Duration,
}

/// Where the fenced instance's engine was last seen, for the command's environment.
pub struct Target<'a> {
    pub instance: &'a InstanceId,
    pub set: &'a ReplicaSetId,
    pub engine: Option<(String, u16)>,
}

impl FenceCommand {
    /// Runs the command for `target`; `Ok` with what it printed when it fenced the host,
    /// `Err` with why not.
    pub async fn run(&self, target: &Target<'_>) -> Result<String, String> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg(target.instance.as_str())
            .env("TANDEM_INSTANCE", target.instance.as_str())
            .env("TANDEM_SET", target.set.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((host, port)) = &target.engine {
            command
                .env("TANDEM_ENGINE_HOST", host)
                .env("TANDEM_ENGINE_PORT", port.to_string());
        }
        let program = self.program.display();
        let child = command
            .spawn()
            .map_err(|e| format!("fence command {program} could not start: {e}"))?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(format!(
                    "fence command {program} did not finish within {:?}",
                    self.timeout
                ))
            }
            Ok(Err(e)) => return Err(format!("fence command {program}: {e}")),
            Ok(Ok(output)) => output,
        };
        let said = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
        if output.status.success() {
            Ok(said(&output.stdout))
        } else {
            Err(format!(
                "fence command {program} failed ({}): {}",
                output.status,
                said(&output.stderr)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        let path = dir.path().join("fence");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn a_fence_succeeds_only_on_exit_zero_within_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let instance: InstanceId = "db-1".parse().unwrap();
        let set: ReplicaSetId = "s1".parse().unwrap();
        let target = Target {
            instance: &instance,
            set: &set,
            engine: Some(("10.0.0.1".into(), 3306)),
        };
        let fence = |body: &str, ms| FenceCommand {
            program: script(&dir, body),
            timeout: Duration::from_millis(ms),
        };
        let ok = fence(
            "echo \"off $1 $TANDEM_SET $TANDEM_ENGINE_HOST:$TANDEM_ENGINE_PORT\"",
            5000,
        );
        assert_eq!(ok.run(&target).await.unwrap(), "off db-1 s1 10.0.0.1:3306");
        let refused = fence("echo 'no such VM' >&2; exit 3", 5000);
        let err = refused.run(&target).await.unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.contains("no such VM"),
            "{err}"
        );
        let hung = fence("sleep 5", 200);
        assert!(hung
            .run(&target)
            .await
            .unwrap_err()
            .contains("did not finish"));
        let missing = FenceCommand {
            program: dir.path().join("nothing-here"),
            timeout: Duration::from_secs(1),
        };
        assert!(missing
            .run(&target)
            .await
            .unwrap_err()
            .contains("could not start"));
    }
}
