use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::mariadb::{chown_tree, copy_tree, set_mode, system_user};
use crate::process::{free_port, wait_until_ready, Process};

/// A private PostgreSQL server: its own data directory, port and socket directory under
/// a temporary directory, trust authentication on loopback, `wal_level=replica` and
/// `wal_log_hints=on` (so pg_rewind works later). Stopped and removed on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    process: Option<Process>,
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
            port: 0,
            process: None,
        };
        pg.start_process()?;
        Ok(pg)
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_process()
    }

    fn start_process(&mut self) -> Result<()> {
        let mut last_err = None;
        for attempt in 0..3 {
            if self.port == 0 || attempt > 0 {
                self.port = free_port();
            }
            match self.spawn_and_wait() {
                Ok(p) => {
                    self.process = Some(p);
                    return Ok(());
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("three attempts were made"))
    }

    fn spawn_and_wait(&self) -> Result<Process> {
        let postgres = system_user("postgres")?;
        let mut cmd = Command::new(bin_dir()?.join("postgres"));
        cmd.arg("-D")
            .arg(self.datadir())
            .arg("-p")
            .arg(self.port.to_string())
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
        let mut process = Process::spawn(
            format!("postgres:{}", self.port),
            cmd,
            Some(self.log_path()),
        )?;
        let (sock, port) = (self.socket_dir(), self.port);
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
        self.port
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
        self.process.as_ref().map(Process::pid)
    }
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.try_wait().is_none())
    }

    /// Runs SQL as the postgres superuser through `psql`; returns unaligned rows.
    pub fn sql(&self, sql: &str) -> Result<String> {
        let out = Command::new("psql")
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .context("run psql")?;
        anyhow::ensure!(
            out.status.success(),
            "SQL on port {} failed: {sql}\n{}",
            self.port,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
    pub fn pause(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("not running")?
            .signal(Signal::SIGSTOP)
    }
    pub fn resume(&self) -> Result<()> {
        self.process
            .as_ref()
            .context("not running")?
            .signal(Signal::SIGCONT)
    }
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            // SIGTERM is PostgreSQL's "smart" shutdown; Process::stop escalates if needed.
            p.stop();
        }
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
