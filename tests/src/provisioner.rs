//! The test kit's provisioner: the conductor's `[provisioner] command` is a script that
//! hands each request to the test (a file in a spool directory) and prints the answer
//! the test leaves there. The test serves it as a cloud would, by starting a private
//! engine and agent on a new network-namespace host ([`crate::Cluster::add_node`]),
//! or answers a failure, or names a server that never comes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_api::ProvisionRequest;

use crate::eventually;

/// The spool directory and the command the conductor runs.
pub struct Provisioner {
    dir: tempfile::TempDir,
}

/// One request the conductor made, waiting for the test's answer.
pub struct Pending {
    /// The spool file's name without its extension.
    key: String,
    pub request: ProvisionRequest,
}

impl Provisioner {
    pub fn new() -> Provisioner {
        let dir = tempfile::Builder::new()
            .prefix("tandem-provisioner-")
            .tempdir()
            .unwrap();
        let spool = dir.path().display().to_string();
        let script = format!(
            "#!/bin/sh\n\
             # Written by the Tandem tests: hands the request to the test, prints its answer.\n\
             d='{spool}'\n\
             key=\"$TANDEM_PROVISION_REQUEST_ID.$$\"\n\
             cat > \"$d/$key.tmp\" && mv \"$d/$key.tmp\" \"$d/$key.request\"\n\
             i=0\n\
             while [ ! -e \"$d/$key.done\" ]; do\n\
               i=$((i+1)); [ $i -gt 3000 ] && {{ echo 'the test never answered' >&2; exit 9; }}\n\
               sleep 0.1\n\
             done\n\
             cat \"$d/$key.out\"; cat \"$d/$key.err\" >&2\n\
             exit \"$(cat \"$d/$key.done\")\"\n"
        );
        let path = dir.path().join("provision");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Provisioner { dir }
    }

    /// The conductor's settings that make it use this provisioner, new servers having
    /// `register_timeout_s` to register.
    pub fn conductor_env(&self, register_timeout_s: u64) -> Vec<(String, String)> {
        vec![
            (
                "TANDEM_CONDUCTOR_PROVISIONER__COMMAND".into(),
                self.command().display().to_string(),
            ),
            (
                "TANDEM_CONDUCTOR_PROVISIONER__REGISTER_TIMEOUT_S".into(),
                register_timeout_s.to_string(),
            ),
        ]
    }

    fn command(&self) -> PathBuf {
        self.dir.path().join("provision")
    }

    /// The next request the conductor makes, waited for up to `limit`.
    pub fn next(&self, limit: Duration) -> Pending {
        eventually(limit, "a request to the provisioner", || {
            let entry = std::fs::read_dir(self.dir.path())
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "request"))?;
            let key = entry.file_stem()?.to_str()?.to_owned();
            let text = std::fs::read_to_string(&entry).ok()?;
            let request = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("the conductor's provisioning request does not read ({e}): {text}")
            });
            std::fs::rename(&entry, entry.with_extension("taken")).ok()?;
            Some(Pending { key, request })
        })
    }

    /// Answers `pending`: what the command prints and its exit status.
    pub fn answer(&self, pending: &Pending, status: i32, stdout: &str, stderr: &str) {
        let file = |ext: &str| self.dir.path().join(format!("{}.{ext}", pending.key));
        write(&file("out"), stdout);
        write(&file("err"), stderr);
        // Last: the script reads the others once this exists.
        write(&file("done"), &status.to_string());
    }
}

impl Default for Provisioner {
    fn default() -> Self {
        Provisioner::new()
    }
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
