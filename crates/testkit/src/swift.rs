use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{free_port, wait_until_ready, Process};

/// A private OpenStack Swift on loopback: one proxy (tempauth, SLO for large objects),
/// one account, container and object server on a one-device ring, and the memcached
/// tempauth keeps tokens in. Built from Debian's swift packages; stopped on drop.
pub struct Swift {
    _dir: tempfile::TempDir,
    processes: Vec<Process>,
    pub auth_url: String,
    pub user: String,
    pub key: String,
    pub container: String,
    storage_url: String,
    token: String,
}

impl Swift {
    pub fn start() -> Result<Swift> {
        let dir = tempfile::Builder::new().prefix("tandem-swift-").tempdir()?;
        let root = dir.path();
        let rings = root.join("rings");
        std::fs::create_dir_all(&rings)?;
        std::fs::create_dir_all(root.join("srv/d1"))?;
        let mut processes = Vec::new();

        let memcached = free_port();
        let mut cmd = Command::new("memcached");
        cmd.args(["-l", "127.0.0.1", "-U", "0", "-u", "nobody", "-m", "16"])
            .arg("-p")
            .arg(memcached.to_string());
        processes.push(Process::spawn(
            "memcached",
            cmd,
            Some(root.join("memcached.log")),
        )?);

        for server in ["account", "container", "object"] {
            let port = free_port();
            for step in [
                vec!["create", "0", "1", "1"],
                vec!["add", &format!("r1z1-127.0.0.1:{port}/d1"), "1"],
                vec!["rebalance"],
            ] {
                let out = Command::new("swift-ring-builder")
                    .current_dir(&rings)
                    .arg(format!("{server}.builder"))
                    .args(&step)
                    .output()
                    .context("run swift-ring-builder (see scripts/install-deps)")?;
                // rebalance exits 1 with a warning on a one-device ring; the ring is written.
                anyhow::ensure!(
                    out.status.code().is_some_and(|c| c <= 1),
                    "swift-ring-builder {server} {step:?}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            let conf = root.join(format!("{server}-server.conf"));
            std::fs::write(
                &conf,
                format!(
                    "[DEFAULT]\ndevices = {devices}\nmount_check = false\nbind_ip = 127.0.0.1\n\
                     bind_port = {port}\nworkers = 0\nswift_dir = {rings}\nuser = root\n\
                     log_level = WARNING\n\n[pipeline:main]\npipeline = {server}-server\n\n\
                     [app:{server}-server]\nuse = egg:swift#{server}\n",
                    devices = root.join("srv").display(),
                    rings = rings.display(),
                ),
            )?;
            let mut cmd = Command::new(format!("swift-{server}-server"));
            cmd.arg(&conf);
            processes.push(Process::spawn(
                format!("swift-{server}-server"),
                cmd,
                Some(root.join(format!("{server}.log"))),
            )?);
        }

        let proxy = free_port();
        let conf = root.join("proxy-server.conf");
        let filters = [
            "catch_errors",
            "gatekeeper",
            "healthcheck",
            "proxy_logging",
            "listing_formats",
            "copy",
            "slo",
            "dlo",
        ]
        .map(|f| format!("[filter:{}]\nuse = egg:swift#{f}\n", f.replace('_', "-")))
        .join("\n");
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {proxy}\nworkers = 0\n\
                 swift_dir = {rings}\nuser = root\nlog_level = WARNING\n\n\
                 [pipeline:main]\npipeline = catch-errors gatekeeper healthcheck proxy-logging \
                 cache listing-formats tempauth copy slo dlo proxy-logging proxy-server\n\n\
                 [app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n\
                 [filter:tempauth]\nuse = egg:swift#tempauth\nuser_tandem_agent = s3cret .admin\n\n\
                 [filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{memcached}\n\n\
                 {filters}",
                rings = rings.display(),
            ),
        )?;
        let mut cmd = Command::new("swift-proxy-server");
        cmd.arg(&conf);
        let mut proxy_process =
            Process::spawn("swift-proxy-server", cmd, Some(root.join("proxy.log")))?;
        let auth_url = format!("http://127.0.0.1:{proxy}/auth/v1.0");
        let (user, key) = ("tandem:agent".to_string(), "s3cret".to_string());
        let mut session = None;
        wait_until_ready(&mut proxy_process, Duration::from_secs(60), || {
            session = authenticate(&auth_url, &user, &key).ok();
            session.is_some()
        })?;
        processes.push(proxy_process);
        let (storage_url, token) = session.expect("ready means authenticated");
        let swift = Swift {
            _dir: dir,
            processes,
            auth_url,
            user,
            key,
            container: "backups".into(),
            storage_url,
            token,
        };
        // The object servers may take a moment longer than the proxy.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match swift.request("PUT", "", None) {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(swift)
    }

    /// `TANDEM_AGENT_*` settings pointing an agent at this store (key in `key_dir`).
    pub fn agent_env(&self, key_dir: &Path) -> Result<Vec<(String, String)>> {
        let key_file = key_dir.join("swift.key");
        std::fs::write(&key_file, &self.key)?;
        Ok(vec![
            ("TANDEM_AGENT_BACKUP_STORE__KIND".into(), "swift".into()),
            (
                "TANDEM_AGENT_BACKUP_STORE__SWIFT_AUTH_URL".into(),
                self.auth_url.clone(),
            ),
            (
                "TANDEM_AGENT_BACKUP_STORE__SWIFT_USER".into(),
                self.user.clone(),
            ),
            (
                "TANDEM_AGENT_BACKUP_STORE__SWIFT_KEY_FILE".into(),
                key_file.display().to_string(),
            ),
            (
                "TANDEM_AGENT_BACKUP_STORE__CONTAINER".into(),
                self.container.clone(),
            ),
        ])
    }

    /// An object's bytes, or None if it does not exist.
    pub fn get(&self, object: &str) -> Result<Option<Vec<u8>>> {
        self.request("GET", object, None)
    }

    pub fn put(&self, object: &str, data: &[u8]) -> Result<()> {
        self.request("PUT", object, Some(data)).map(|_| ())
    }

    fn request(&self, method: &str, object: &str, body: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
        let url = match object {
            "" => format!("{}/{}", self.storage_url, self.container),
            o => format!("{}/{}/{o}", self.storage_url, self.container),
        };
        let agent = ureq::Agent::new_with_defaults();
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("X-Auth-Token", &self.token).call(),
            (_, Some(b)) => agent.put(&url).header("X-Auth-Token", &self.token).send(b),
            (_, None) => agent
                .put(&url)
                .header("X-Auth-Token", &self.token)
                .send_empty(),
        };
        match response {
            Ok(mut r) => Ok(Some(r.body_mut().read_to_vec()?)),
            Err(ureq::Error::StatusCode(404)) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("Swift {method} {url}: {e}")),
        }
    }
}

fn authenticate(url: &str, user: &str, key: &str) -> Result<(String, String)> {
    let response = ureq::get(url)
        .header("X-Auth-User", user)
        .header("X-Auth-Key", key)
        .call()?;
    let header = |name: &str| -> Result<String> {
        Ok(response
            .headers()
            .get(name)
            .with_context(|| format!("no {name}"))?
            .to_str()?
            .to_owned())
    };
    Ok((header("X-Storage-Url")?, header("X-Auth-Token")?))
}

impl Drop for Swift {
    fn drop(&mut self) {
        for p in self.processes.iter_mut().rev() {
            p.stop();
        }
    }
}
