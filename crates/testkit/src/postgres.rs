use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::mariadb::{chown_tree, copy_tree, set_mode, system_user};
use crate::process::{wait_until_ready, EngineProcess, Process};

/// A private PostgreSQL server: its own data directory, port and socket directory under
/// a temporary directory, trust authentication on loopback, `wal_level=replica` and
/// `wal_log_hints=on` (so pg_rewind works later). Stopped and removed on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    engine: EngineProcess,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-postgres-")
            .tempdir()
            .context("create a temporary directory")?;
        let postgres = system_user("postgres")?;
        set_mode(dir.path(), 0o755)?;
        let datadir = dir.path().join("data");
        copy_tree(template()?, &datadir)?;
        chown_tree(&datadir, &postgres)?;
        set_mode(&datadir, 0o700)?;
        let sockets = dir.path().join("sock");
        std::fs::create_dir(&sockets)?;
        chown_tree(&sockets, &postgres)?;
        let mut pg = Postgres {
            dir,
            engine: EngineProcess::new(),
        };
        pg.start_process()?;
        Ok(pg)
    }

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
        let postgres = system_user("postgres")?;
        let mut cmd = Command::new(bin_dir()?.join("postgres"));
        cmd.arg("-D")
            .arg(self.datadir())
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=replica",
                "-c",
                "wal_log_hints=on",
                "-c",
                "max_wal_senders=10",
                "-c",
                "hot_standby=on",
                "-c",
                "shared_buffers=32MB",
            ])
            .uid(postgres.uid.as_raw())
            .gid(postgres.gid.as_raw());
        let mut process = Process::spawn(format!("postgres:{}", port), cmd, Some(self.log_path()))?;
        let (sock, port) = (self.socket_dir(), port);
        wait_until_ready(&mut process, Duration::from_secs(60), || {
            Command::new("pg_isready")
                .arg("-h")
                .arg(&sock)
                .args(["-p", &port.to_string(), "-t", "1"])
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
        Ok(process)
    }

    pub fn port(&self) -> u16 {
        self.engine.port
    }
    pub fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
    pub fn pid(&self) -> Option<u32> {
        self.engine.pid()
    }
    pub fn is_running(&mut self) -> bool {
        self.engine.is_running()
    }

    /// Runs SQL as the postgres superuser through `psql`; returns unaligned rows.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let mut client = Command::new("psql");
        client
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.engine.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
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

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server binaries are not on PATH on Debian (only the pg_wrapper scripts are).
pub fn bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("postgres").exists())
            .collect();
        versions.sort();
        versions.pop()
    })
    .clone()
    .context("no PostgreSQL server under /usr/lib/postgresql; run scripts/install-deps")
}

fn template() -> Result<&'static Path> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn make_template() -> Result<PathBuf> {
    let bin = bin_dir()?;
    let postgres = system_user("postgres")?;
    let key = crate::process::short_hash(bin.to_string_lossy().as_bytes());
    crate::process::cached_dir(&format!("postgres-{key}"), |dir| {
        // initdb wants to create (or own) its target; give it a subdirectory it owns.
        chown_tree(dir, &postgres)?;
        let out = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .uid(postgres.uid.as_raw())
            .gid(postgres.gid.as_raw())
            .output()
            .context("run initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .map(|d| d.join("data"))
}
