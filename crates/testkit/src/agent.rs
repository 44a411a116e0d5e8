use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{MariaDb, Process};

/// A `tandem-agent` process for one instance, configured through its environment.
pub struct AgentProcess {
    pub instance: String,
    binary: PathBuf,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl AgentProcess {
    /// Starts `binary` as the agent of `instance`, managing `db`, reporting to `broker_uri`.
    pub fn start_mariadb(
        binary: &Path,
        instance: &str,
        zone: &str,
        broker_uri: &str,
        db: &MariaDb,
    ) -> Result<AgentProcess> {
        Self::start_mariadb_with(binary, instance, zone, broker_uri, db, &[])
    }

    /// As [`AgentProcess::start_mariadb`], with more `TANDEM_AGENT_*` settings (a
    /// shared backup store, say).
    pub fn start_mariadb_with(
        binary: &Path,
        instance: &str,
        zone: &str,
        broker_uri: &str,
        db: &MariaDb,
        extra_env: &[(String, String)],
    ) -> Result<AgentProcess> {
        Self::start_mariadb_in(None, binary, instance, zone, broker_uri, db, extra_env)
    }

    /// As [`AgentProcess::start_mariadb_with`], inside network namespace `netns` (the
    /// host its engine runs on).
    pub fn start_mariadb_in(
        netns: Option<&str>,
        binary: &Path,
        instance: &str,
        zone: &str,
        broker_uri: &str,
        db: &MariaDb,
        extra_env: &[(String, String)],
    ) -> Result<AgentProcess> {
        let dir = tempfile::Builder::new().prefix("tandem-agent-").tempdir()?;
        let (start, stop) = db.control_commands();
        let toml_list = |v: Vec<String>| format!("{v:?}");
        let mut env: Vec<(String, String)> = vec![
            ("TANDEM_AGENT_INSTANCE_ID".into(), instance.into()),
            ("TANDEM_AGENT_ZONE".into(), zone.into()),
            (
                "TANDEM_AGENT_STATE_DIR".into(),
                dir.path().join("state").display().to_string(),
            ),
            ("TANDEM_AGENT_STATUS_INTERVAL_MS".into(), "1000".into()),
            ("TANDEM_AGENT_PROBE_INTERVAL_MS".into(), "200".into()),
            ("TANDEM_AGENT_BROKER__URI".into(), broker_uri.into()),
            // Every test agent obeys the test conductors' signing key.
            (
                "TANDEM_AGENT_BROKER__CONDUCTOR_KEYS".into(),
                toml_list(vec![crate::conductor_key().public_hex.clone()]),
            ),
            // …and enrols itself with the token the test conductors derive for it.
            (
                "TANDEM_AGENT_BROKER__ENROLMENT_TOKEN".into(),
                crate::enrolment_token(instance),
            ),
            ("TANDEM_AGENT_ENGINE__KIND".into(), "mariadb".into()),
            ("TANDEM_AGENT_ENGINE__HOST".into(), db.host().into()),
            ("TANDEM_AGENT_ENGINE__PORT".into(), db.port().to_string()),
            (
                "TANDEM_AGENT_ENGINE__MARIADB__SOCKET".into(),
                db.socket().display().to_string(),
            ),
            (
                "TANDEM_AGENT_ENGINE__DATA_DIR".into(),
                db.datadir().display().to_string(),
            ),
            (
                "TANDEM_AGENT_ENGINE__BACKUP_DIR".into(),
                dir.path().join("backups").display().to_string(),
            ),
            (
                "TANDEM_AGENT_ENGINE__MARIADB__MANAGED_CONFIG".into(),
                dir.path().join("90-tandem.cnf").display().to_string(),
            ),
            (
                "TANDEM_AGENT_ENGINE__START_COMMAND".into(),
                toml_list(start),
            ),
            ("TANDEM_AGENT_ENGINE__STOP_COMMAND".into(), toml_list(stop)),
            ("TANDEM_AGENT_SEED__LISTEN".into(), "127.0.0.1:0".into()),
        ];
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        let mut agent = AgentProcess {
            instance: instance.into(),
            binary: binary.into(),
            netns: netns.map(str::to_owned),
            env,
            dir,
            process: None,
        };
        // Made here, as the agent would at its first start, so that a test knows the
        // key before the agent has run (to seal a secret to it).
        agent.key()?;
        agent.start()?;
        Ok(agent)
    }

    /// Starts the process again (after [`AgentProcess::kill`] or [`AgentProcess::stop`]),
    /// with the same state directory.
    pub fn start(&mut self) -> Result<()> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,lapin=off");
        }
        let log = self.dir.path().join("agent.log");
        self.process = Some(Process::spawn(
            format!("tandem-agent:{}", self.instance),
            cmd,
            Some(log),
        )?);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.process.take().and_then(|mut p| p.stop())
    }

    /// SIGSTOP: the agent hangs (with its host, when its engine is paused too).
    pub fn pause(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("the agent is not running")?
            .signal(nix::sys::signal::Signal::SIGSTOP)
    }

    pub fn resume(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("the agent is not running")?
            .signal(nix::sys::signal::Signal::SIGCONT)
    }

    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// A child process the agent runs now (`mariabackup`, `zstd`, `mbstream`), by name.
    pub fn child(&self, name: &str) -> Option<Child> {
        let parent = self.process.as_ref()?.pid();
        std::fs::read_dir("/proc").ok()?.find_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces: split after its `)`.
            let (head, rest) = stat.rsplit_once(')')?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            if ppid != parent || head.split_once('(')?.1 != name {
                return None;
            }
            Some(Child {
                pid,
                target: crate::signals::Target::of(pid)?,
            })
        })
    }

    /// Waits up to `limit` for the agent to exit on its own; returns its status.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let status = self.process.as_mut()?.wait_exit(limit)?;
        self.process = None;
        Some(status)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The value of one of the agent's `TANDEM_AGENT_*` settings.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The agent's state directory (its key, `agent.key`, is there).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The agent's key (`state_dir/agent.key`), made if it is not there yet.
    pub fn key(&self) -> Result<tandem_transport::signing::SigningKey> {
        tandem_transport::signing::SigningKey::load_or_generate(&self.state_dir().join("agent.key"))
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Runs the agent binary with this agent's configuration and `args` (a subcommand
    /// such as `public-key`); returns its standard output, or its error.
    pub fn run_with_config(&self, args: &[&str]) -> Result<String> {
        run_once(&self.binary, &self.env, args)
    }

    pub fn managed_config_path(&self) -> PathBuf {
        self.dir.path().join("90-tandem.cnf")
    }
}

/// Runs `program` once with `env` and `args`; its standard output, or its error.
fn run_once(program: &Path, env: &[(String, String)], args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The path of a workspace binary (`tandem-agent`, `tandem-conductor`, `tandem`) in the
/// running executable's target directory: tests run from `target/<profile>/deps/`, the
/// demo from `target/<profile>/`. `TANDEM_AGENT_BIN` names another agent binary.
pub fn binary(name: &str) -> PathBuf {
    // The agent as shipped (`cargo build --profile agent`) for footprint benches.
    if name == "tandem-agent" {
        if let Ok(path) = std::env::var("TANDEM_AGENT_BIN") {
            return path.into();
        }
    }
    let exe = std::env::current_exe().expect("the program knows its own path");
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps/ has a parent");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first (`cargo build --workspace --bins`, which \
         scripts/test does)",
        path.display()
    );
    path
}

/// A `tandem-conductor` process with its API on a free local port.
pub struct ConductorProcess {
    pub url: String,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl ConductorProcess {
    pub fn start(broker_uri: &str) -> Result<ConductorProcess> {
        Self::start_with(broker_uri, &[])
    }

    /// With extra `TANDEM_CONDUCTOR_*` settings.
    pub fn start_with(broker_uri: &str, extra: &[(String, String)]) -> Result<ConductorProcess> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-conductor-")
            .tempdir()?;
        let port = crate::free_port();
        let env = vec![
            ("TANDEM_CONDUCTOR_BROKER_URI".into(), broker_uri.into()),
            (
                "TANDEM_CONDUCTOR_LISTEN".into(),
                format!("127.0.0.1:{port}"),
            ),
            (
                "TANDEM_CONDUCTOR_DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
        ];
        let mut env = env;
        env.extend(extra.iter().cloned());
        // The test conductors' signing key, which every test agent trusts, and their
        // secret, from which every test agent's enrolment token is derived.
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        for (file, bytes) in [
            ("conductor.key", crate::conductor_key().pkcs8.as_slice()),
            ("secret.key", crate::conductor_secret().as_slice()),
        ] {
            tandem_transport::keyfile::load_or_make(&data.join(file), || Ok(bytes.to_vec()))
                .map_err(anyhow::Error::msg)?;
        }
        let mut c = ConductorProcess {
            url: format!("http://127.0.0.1:{port}"),
            env,
            dir,
            process: None,
        };
        c.start_again()?;
        Ok(c)
    }

    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_serving(std::time::Duration::from_secs(30))
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(binary("tandem-conductor"));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,lapin=off");
        }
        self.process = Some(Process::spawn(
            "tandem-conductor",
            cmd,
            Some(self.dir.path().join("conductor.log")),
        )?);
        Ok(())
    }

    /// Waits up to `limit` until the API accepts connections.
    pub fn wait_serving(&mut self, limit: std::time::Duration) -> Result<()> {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let process = self
            .process
            .as_mut()
            .context("the conductor is not running")?;
        crate::process::wait_until_ready(process, limit, || {
            std::net::TcpStream::connect(&addr).is_ok()
        })
    }

    /// Whether the API accepts connections now.
    pub fn serving(&self) -> bool {
        std::net::TcpStream::connect(self.url.trim_start_matches("http://")).is_ok()
    }

    /// A second conductor on this one's data directory (its own port and log), started
    /// and not waited for: it must stand by while this one acts. It has no failpoint
    /// (a test crashes the first at one, and the second must not crash there again).
    pub fn second_on_same_store(&self) -> Result<ConductorProcess> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-conductor-")
            .tempdir()?;
        let port = crate::free_port();
        let mut env = self.env.clone();
        env.retain(|(k, _)| k != "TANDEM_CONDUCTOR_LISTEN" && k != "TANDEM_CONDUCTOR_FAILPOINT");
        env.push((
            "TANDEM_CONDUCTOR_LISTEN".into(),
            format!("127.0.0.1:{port}"),
        ));
        let mut c = ConductorProcess {
            url: format!("http://127.0.0.1:{port}"),
            env,
            dir,
            process: None,
        };
        c.spawn()?;
        Ok(c)
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.process.take().and_then(|mut p| p.stop())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Sends `sig` to the running process (SIGSTOP freezes it, SIGCONT thaws it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.pid().context("the conductor is not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
            .with_context(|| format!("send {sig} to the conductor"))
    }

    /// Sets (or with `None` removes) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
    }

    /// Waits up to `limit` for the process to exit on its own; returns its status.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let status = self.process.as_mut()?.wait_exit(limit)?;
        self.process = None;
        Some(status)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("conductor.log")).unwrap_or_default()
    }

    /// The conductor's data directory (shared by a second conductor on the same store).
    pub fn data_dir(&self) -> PathBuf {
        self.env
            .iter()
            .find(|(k, _)| k == "TANDEM_CONDUCTOR_DATA_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .expect("every test conductor has a data directory")
    }

    /// The operator token the conductor wrote on its first start.
    pub fn token_file(&self) -> PathBuf {
        self.data_dir().join("admin.token")
    }

    /// The operator token itself.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    }

    /// The typed API client aimed at this conductor, with its operator token.
    pub fn api(&self) -> tandem_api::client::Client {
        let token = Some(self.token()).filter(|t| !t.is_empty());
        tandem_api::client::Client::new(&self.url, token, None)
            .expect("a client of a plain-HTTP conductor")
    }

    /// A GET of `path` (with its query) with the operator token, outside the typed
    /// client: the status and the body, whatever they are.
    pub fn http_get_status(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Bearer {}", self.token()))
            .call()
            .expect("the conductor answers");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (status, body)
    }

    /// The `tandem` CLI aimed at this conductor, with its operator token.
    pub fn cli_command(&self) -> Command {
        let mut cmd = Command::new(binary("tandem"));
        cmd.arg("--conductor")
            .arg(&self.url)
            .env("TANDEM_TOKEN_FILE", self.token_file())
            .env_remove("TANDEM_TOKEN");
        cmd
    }

    /// Runs the conductor binary with this conductor's configuration and `args` (a
    /// subcommand such as `token create`); returns its standard output, or its error.
    pub fn run_with_config(&self, args: &[&str]) -> Result<String> {
        run_once(&binary("tandem-conductor"), &self.env, args)
    }

    /// Runs the `tandem` CLI against this conductor; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cli_command().args(args).output().expect("run tandem");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A process some other process started (an agent's child), seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    pub pid: u32,
    target: crate::signals::Target,
}

impl Child {
    /// Sends `sig` while this is still the agent's child (never to a reused pid).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        self.target.send(sig, "an agent's child process")
    }

    /// Gone, or a zombie nobody reaped yet (it runs no more).
    pub fn ended(&self) -> bool {
        if !self.target.alive() {
            return true;
        }
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    }
}
