//! The cloud's provisioning command: when the free pool has no server a set can take,
//! a workflow asks this command for new ones (a VM each, booted with the engine and a
//! Tandem agent) and waits for their agents to register.
//!
//! The contract (`tandem_api::ProvisionRequest` on standard input, a
//! `tandem_api::ProvisionAnswer` on standard output, exit status 0) is the same as
//! Trove's when it asks Nova for a server: the command decides how, the conductor only
//! what (engine, zone, the set's rules as a server group) and checks what comes back.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tandem_api::{ProvisionAnswer, ProvisionRequest};
use tokio::io::AsyncWriteExt;

use crate::config::ProvisionerConfig;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Provisioner {
    pub program: PathBuf,
    /// How long the command may run.
    pub timeout: Duration,
    /// How long the new servers' agents may take to register after it answered.
    pub register_timeout: Duration,
}

impl Provisioner {
    /// The configured provisioner, if any; refused when the command is not an
    /// executable file or a time limit is 0.
    pub fn validate(config: &ProvisionerConfig) -> anyhow::Result<Option<Provisioner>> {
        let Some(program) = &config.command else {
            return Ok(None);
        };
        crate::config::executable(program, "provisioner.command")?;
        let seconds = |v: Option<u64>, field: &str| -> anyhow::Result<Duration> {
            match v {
                Some(0) => anyhow::bail!("field `provisioner.{field}` is 0; it must be at least 1"),
                Some(s) => Ok(Duration::from_secs(s)),
                None => Ok(DEFAULT_TIMEOUT),
            }
        };
        Ok(Some(Provisioner {
            program: program.clone(),
            timeout: seconds(config.timeout_s, "timeout_s")?,
            register_timeout: seconds(config.register_timeout_s, "register_timeout_s")?,
        }))
    }

    /// Runs the command for `request`: the instances it started, or why not (its exit
    /// status and what it said, no answer in time, an answer that does not read or
    /// does not match the request).
    pub async fn run(&self, request: &ProvisionRequest) -> Result<ProvisionAnswer, String> {
        let program = self.program.display();
        let input = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(&self.program)
            .env("TANDEM_PROVISION_REQUEST_ID", &request.request_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("the provisioner {program} could not start: {e}"))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let talk = async move {
            // A command that does not read its request still gets to answer.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, talk).await {
            Err(_) => {
                return Err(format!(
                    "the provisioner {program} did not answer within {:?}",
                    self.timeout
                ))
            }
            Ok(Err(e)) => return Err(format!("the provisioner {program}: {e}")),
            Ok(Ok(output)) => output,
        };
        let said = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim();
            // The end of a long story is where the reason is.
            let start = text.len().saturating_sub(2000);
            text[text.ceil_char_boundary(start)..].to_owned()
        };
        if !output.status.success() {
            return Err(format!(
                "the provisioner {program} failed ({}): {}",
                output.status,
                said(&output.stderr)
            ));
        }
        let answer: ProvisionAnswer = serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "the provisioner {program} answered something that is not \
                 {{\"instances\": [...]}} ({e}): {}",
                said(&output.stdout)
            )
        })?;
        check(request, &answer).map_err(|why| format!("the provisioner {program} {why}"))?;
        Ok(answer)
    }
}

/// An answer names exactly the servers asked for, each once.
fn check(request: &ProvisionRequest, answer: &ProvisionAnswer) -> Result<(), String> {
    let n = answer.instances.len();
    if n != request.count as usize {
        return Err(format!(
            "started {n} server(s) where {} were asked for",
            request.count
        ));
    }
    for (i, a) in answer.instances.iter().enumerate() {
        if answer.instances[..i].contains(a) {
            return Err(format!("named {a} twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tandem_api::{PlacementPolicy, PlacementScope, ServerGroup};

    fn provisioner(dir: &tempfile::TempDir, body: &str, timeout_ms: u64) -> Provisioner {
        let path = dir.path().join("provision");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Provisioner {
            program: path,
            timeout: Duration::from_millis(timeout_ms),
            register_timeout: Duration::from_secs(1),
        }
    }

    fn request(count: u32) -> ProvisionRequest {
        ProvisionRequest {
            request_id: "wf-1-1".into(),
            set: "s1".parse().unwrap(),
            engine: tandem_proto::EngineKind::Mariadb,
            count,
            zone: Some("zone-a".into()),
            server_group: ServerGroup {
                policy: PlacementPolicy::AntiAffinity,
                scope: PlacementScope::Host,
                max_per_domain: 1,
            },
            members: Vec::new(),
            rules: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_command_reads_the_request_and_its_answer_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        // The request arrives whole on stdin, with its id in the environment too.
        let echo = provisioner(
            &dir,
            r#"grep -q '"policy":"anti-affinity"' && [ "$TANDEM_PROVISION_REQUEST_ID" = wf-1-1 ] && echo '{"instances":["db-7"]}'"#,
            5000,
        );
        let answer = echo.run(&request(1)).await.unwrap();
        assert_eq!(answer.instances, vec!["db-7".parse().unwrap()]);
        let err = echo.run(&request(2)).await.unwrap_err();
        assert!(
            err.contains("started 1 server(s) where 2 were asked for"),
            "{err}"
        );
        let twice = provisioner(&dir, r#"echo '{"instances":["db-7","db-7"]}'"#, 5000);
        assert!(twice
            .run(&request(2))
            .await
            .unwrap_err()
            .contains("named db-7 twice"));
    }

    #[tokio::test]
    async fn a_command_that_fails_hangs_or_babbles_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let failing = provisioner(&dir, "echo 'quota exceeded' >&2; exit 4", 5000);
        let err = failing.run(&request(1)).await.unwrap_err();
        assert!(
            err.contains("exit status: 4") && err.contains("quota exceeded"),
            "{err}"
        );
        let hung = provisioner(&dir, "sleep 5", 200);
        assert!(hung
            .run(&request(1))
            .await
            .unwrap_err()
            .contains("did not answer within"));
        let babble = provisioner(&dir, "echo booting", 5000);
        let err = babble.run(&request(1)).await.unwrap_err();
        assert!(
            err.contains("not {\"instances\"") && err.contains("booting"),
            "{err}"
        );
    }

    #[test]
    fn a_command_that_is_not_executable_or_a_zero_limit_is_refused() {
        let none = ProvisionerConfig::default();
        assert!(Provisioner::validate(&none).unwrap().is_none());
        let missing = ProvisionerConfig {
            command: Some("/nonexistent/provision".into()),
            ..Default::default()
        };
        let err = Provisioner::validate(&missing).unwrap_err().to_string();
        assert!(err.contains("provisioner.command"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let ok = provisioner(&dir, "true", 1000);
        let zero = ProvisionerConfig {
            command: Some(ok.program),
            timeout_s: Some(0),
            ..Default::default()
        };
        let err = Provisioner::validate(&zero).unwrap_err().to_string();
        assert!(err.contains("provisioner.timeout_s"), "{err}");
    }
}
