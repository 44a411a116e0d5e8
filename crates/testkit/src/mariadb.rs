use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::unistd::{Gid, Uid, User};

use crate::process::{wait_until_ready, EngineProcess, Process};

#[derive(Debug, Clone)]
pub struct MariaDbOptions {
    /// `--server-id`; distinct per instance of one replication topology.
    pub server_id: u32,
    /// More `--name=value` arguments for mariadbd.
    pub extra_args: Vec<String>,
}

impl Default for MariaDbOptions {
    fn default() -> Self {
        MariaDbOptions {
            server_id: 1,
            extra_args: Vec::new(),
        }
    }
}

/// A private `mariadbd`: its own data directory, port and socket under a temporary
/// directory, GTID strict mode and the binary log on, durable settings. Root logs in
/// without a password over the socket or TCP. Stopped and removed on drop.
pub struct MariaDb {
    dir: tempfile::TempDir,
    options: MariaDbOptions,
    engine: EngineProcess,
}

impl MariaDb {
    pub fn start(options: MariaDbOptions) -> Result<MariaDb> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-mariadb-")
            .tempdir()
            .context("create a temporary directory")?;
        let mysql = system_user("mysql")?;
        // The server runs as mysql and must reach its files below our 0700 temp dir.
        set_mode(dir.path(), 0o755)?;
        let datadir = dir.path().join("data");
        copy_tree(template()?, &datadir)?;
        chown_tree(&datadir, &mysql)?;
        let run = dir.path().join("run");
        std::fs::create_dir(&run)?;
        chown_tree(&run, &mysql)?;
        let mut db = MariaDb {
            dir,
            options,
            engine: EngineProcess::new(),
        };
        db.start_process()?;
        Ok(db)
    }

    /// Starts mariadbd again on the same data directory (after [`MariaDb::kill`] or
    /// [`MariaDb::stop`]), on the same port when it is still free.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_process()
    }

    fn start_process(&mut self) -> Result<()> {
        let mut engine = std::mem::replace(&mut self.engine, EngineProcess::new());
        let started = engine.start(|port| self.spawn_and_wait(port));
        self.engine = engine;
        started
    }

    fn spawn_and_wait(&self, port: u16) -> Result<Process> {
        let mysql = system_user("mysql")?;
        let mut cmd = Command::new(mariadbd()?);
        // --no-defaults must come first: the distribution's my.cnf would otherwise move
        // the pid file and socket to shared paths.
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--port={}", port))
            .arg(format!("--socket={}", self.socket().display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("run/mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", self.error_log().display()))
            .arg(format!("--server-id={}", self.options.server_id))
            .args([
                "--log-bin=mysql-bin",
                "--binlog-format=ROW",
                "--gtid-strict-mode=1",
                "--log-slave-updates=1",
                "--relay-log=relay-bin",
                "--sync-binlog=1",
                "--innodb-flush-log-at-trx-commit=1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--max-connections=50",
            ])
            .args(&self.options.extra_args)
            .uid(mysql.uid.as_raw())
            .gid(mysql.gid.as_raw());
        let stdout_log = self.dir.path().join("mariadbd.out");
        let mut process = Process::spawn(format!("mariadbd:{}", port), cmd, Some(stdout_log))?;
        let socket = self.socket();
        wait_until_ready(&mut process, Duration::from_secs(60), || {
            Command::new("mariadb-admin")
                .args(["--no-defaults", "-uroot"])
                .arg(format!("--socket={}", socket.display()))
                .args(["--connect-timeout=1", "ping"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map_err(|e| e.context(format!("error log:\n{}", tail(&self.error_log(), 20))))?;
        Ok(process)
    }

    pub fn port(&self) -> u16 {
        self.engine.port
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/mariadbd.sock")
    }
    pub fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn error_log(&self) -> PathBuf {
        self.dir.path().join("run/mariadbd.err")
    }
    pub fn server_id(&self) -> u32 {
        self.options.server_id
    }
    pub fn pid(&self) -> Option<u32> {
        self.engine.pid()
    }
    pub fn is_running(&mut self) -> bool {
        self.engine.is_running()
    }

    /// Runs SQL as root through the `mariadb` client; returns tab-separated rows.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let mut client = Command::new("mariadb");
        client
            .args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-e", sql]);
        self.engine.run_sql(client, sql)
    }

    /// SIGKILL: the server crashes without a chance to flush anything.
    pub fn kill(&mut self) {
        self.engine.kill()
    }
    /// SIGSTOP: the server hangs; its connections stay open and time out.
    pub fn pause(&self) -> Result<()> {
        self.engine.pause()
    }
    pub fn resume(&self) -> Result<()> {
        self.engine.resume()
    }
    /// A clean shutdown.
    pub fn stop(&mut self) {
        self.engine.stop()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

fn mariadbd() -> Result<PathBuf> {
    for p in [
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadbd",
        "/usr/sbin/mysqld",
    ] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    anyhow::bail!("mariadbd not found; run scripts/install-deps")
}

/// A freshly initialised data directory, made once per process and copied per instance:
/// `mariadb-install-db` takes seconds, a copy takes milliseconds.
fn template() -> Result<&'static Path> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn make_template() -> Result<PathBuf> {
    let version = Command::new(mariadbd()?).arg("--version").output()?;
    let key = crate::process::short_hash(&version.stdout);
    crate::process::cached_dir(&format!("mariadb-{key}"), |dir| {
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.display()))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=16M",
            ])
            .output()
            .context("run mariadb-install-db (see scripts/install-deps)")?;
        anyhow::ensure!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
}

pub(crate) fn system_user(name: &str) -> Result<User> {
    User::from_name(name)?
        .with_context(|| format!("system user {name} does not exist; run scripts/install-deps"))
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("run cp")?;
    anyhow::ensure!(
        out.status.success(),
        "cp -a {} {} failed: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub(crate) fn chown_tree(path: &Path, user: &User) -> Result<()> {
    chown_tree_ids(path, user.uid, user.gid)
}

fn chown_tree_ids(path: &Path, uid: Uid, gid: Gid) -> Result<()> {
    nix::unistd::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree_ids(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
