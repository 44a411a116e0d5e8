use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::unistd::{Gid, Uid, User};

use crate::disk::{mount_tmpfs, remount_tmpfs};
use crate::process::{wait_until_ready, EngineProcess, Process};

#[derive(Debug, Clone)]
pub struct MariaDbOptions {
    /// `--server-id`; distinct per instance of one replication topology.
    pub server_id: u32,
    /// More `--name=value` arguments for mariadbd.
    pub extra_args: Vec<String>,
    /// Run inside this network namespace (a [`crate::Host`]), listening on `bind`.
    pub netns: Option<String>,
    /// The address to listen on (default 127.0.0.1).
    pub bind: Option<String>,
    /// Put the instance's files (data directory and its siblings, where restores and
    /// seeds stage their copies) on a filesystem of its own with only this many bytes
    /// free once the server is up: a disk about to fill. A size-limited tmpfs, unmounted
    /// on drop.
    pub small_disk: Option<u64>,
}

impl Default for MariaDbOptions {
    fn default() -> Self {
        MariaDbOptions {
            server_id: 1,
            extra_args: Vec::new(),
            netns: None,
            bind: None,
            small_disk: None,
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
    /// With `small_disk`: the tmpfs mounted on `dir`.
    mounted: bool,
}

impl MariaDb {
    pub fn start(options: MariaDbOptions) -> Result<MariaDb> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-mariadb-")
            .tempdir()
            .context("create a temporary directory")?;
        let mysql = system_user("mysql")?;
        if options.small_disk.is_some() {
            mount_tmpfs(dir.path(), "1g")?;
        }
        // The server runs as mysql and must reach its files below our 0700 temp dir.
        set_mode(dir.path(), 0o755)?;
        let datadir = dir.path().join("data");
        copy_tree(template()?, &datadir)?;
        chown_tree(&datadir, &mysql)?;
        let run = dir.path().join("run");
        std::fs::create_dir(&run)?;
        chown_tree(&run, &mysql)?;
        let small_disk = options.small_disk;
        let mut db = MariaDb {
            dir,
            options,
            engine: EngineProcess::new(),
            mounted: small_disk.is_some(),
        };
        db.start_process()?;
        if let Some(free) = small_disk {
            // Shrunk to what the server uses now plus `free`.
            let s = nix::sys::statvfs::statvfs(db.dir.path())?;
            let used = (s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64;
            remount_tmpfs(db.dir.path(), used + free)?;
        }
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

    /// mariadbd's arguments (after the program) for `port`.
    fn args(&self, port: u16) -> Vec<String> {
        // --no-defaults must come first: the distribution's my.cnf would otherwise move
        // the pid file and socket to shared paths.
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", self.datadir().display()),
            format!("--port={port}"),
            format!("--socket={}", self.socket().display()),
            format!("--bind-address={}", self.host()),
            format!("--pid-file={}", self.pid_file().display()),
            format!("--log-error={}", self.error_log().display()),
            format!("--server-id={}", self.options.server_id),
        ];
        args.extend(
            [
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
            ]
            .map(String::from),
        );
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    fn spawn_and_wait(&self, port: u16) -> Result<Process> {
        let cmd = match &self.options.netns {
            // Entering a namespace needs root: mariadbd drops to mysql itself.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns])
                    .arg(mariadbd()?)
                    .args(self.args(port))
                    .arg("--user=mysql");
                cmd
            }
            None => {
                let mysql = system_user("mysql")?;
                let mut cmd = Command::new(mariadbd()?);
                cmd.args(self.args(port))
                    .uid(mysql.uid.as_raw())
                    .gid(mysql.gid.as_raw());
                cmd
            }
        };
        self.write_control_scripts(port)?;
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

    /// Writes `engine-start` and `engine-stop`: how this server's agent stops and
    /// starts it, as `systemctl stop/start mariadb` would on a VM. A server the agent
    /// starts is not this process's child; [`MariaDb`]'s drop still stops it (by its
    /// pid file).
    fn write_control_scripts(&self, port: u16) -> Result<()> {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let args: Vec<String> = self.args(port).iter().map(|a| quote(a)).collect();
        let socket = quote(&self.socket().display().to_string());
        let ping = format!(
            "mariadb-admin --no-defaults -uroot --socket={socket} --connect-timeout=1 ping >/dev/null 2>&1"
        );
        let start = format!(
            "#!/bin/sh\n\
             # Written by tandem-testkit: starts this test server in the background.\n\
             {ping} && exit 0\n\
             setsid {mariadbd} {args} --user=mysql </dev/null >>{out} 2>&1 &\n\
             i=0\n\
             while [ $i -lt 600 ]; do\n\
               {ping} && exit 0\n\
               i=$((i+1)); sleep 0.1\n\
             done\n\
             echo 'mariadbd did not start within 60 s' >&2\n\
             tail -n 20 {err} >&2\n\
             exit 1\n",
            mariadbd = quote(&mariadbd()?.display().to_string()),
            args = args.join(" "),
            out = quote(&self.dir.path().join("mariadbd.out").display().to_string()),
            err = quote(&self.error_log().display().to_string()),
        );
        let stop = format!(
            "#!/bin/sh\n\
             # Written by tandem-testkit: a clean shutdown, waiting until the server is gone.\n\
             {ping} || exit 0\n\
             mariadb-admin --no-defaults -uroot --socket={socket} shutdown || exit 1\n\
             i=0\n\
             while [ -e {pid} ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.1; done\n\
             [ ! -e {pid} ]\n",
            pid = quote(&self.pid_file().display().to_string()),
        );
        for (name, text) in [("engine-start", start), ("engine-stop", stop)] {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            set_mode(&path, 0o755)?;
        }
        Ok(())
    }

    /// The commands an agent runs to start and stop this server.
    pub fn control_commands(&self) -> (Vec<String>, Vec<String>) {
        let p = |n: &str| vec![self.dir.path().join(n).display().to_string()];
        (p("engine-start"), p("engine-stop"))
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("run/mariadbd.pid")
    }

    /// The pid of a server running on this data directory that this process did not
    /// start itself (one its agent started).
    fn adopted_pid(&self) -> Option<nix::unistd::Pid> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if Some(pid as u32) == self.engine.pid() {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let datadir = format!("--datadir={}", self.datadir().display());
        String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|a| a == datadir)
            .then(|| nix::unistd::Pid::from_raw(pid))
    }

    fn signal_adopted(&self, sig: nix::sys::signal::Signal) -> bool {
        let Some(target) = self
            .adopted_pid()
            .and_then(|pid| crate::signals::Target::of(pid.as_raw() as u32))
        else {
            return false;
        };
        let what = format!("mariadbd on {}", self.datadir().display());
        target.send(sig, &what).is_ok()
    }

    /// Waits up to 30 s for an adopted server to exit.
    fn wait_adopted_gone(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Some(pid) = self.adopted_pid() {
            if std::time::Instant::now() > deadline
                || !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the server listens on.
    pub fn host(&self) -> &str {
        self.options.bind.as_deref().unwrap_or("127.0.0.1")
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
        match self.adopted_pid() {
            Some(pid) => Some(pid.as_raw() as u32),
            None => self.engine.pid(),
        }
    }
    pub fn is_running(&mut self) -> bool {
        self.engine.is_running() || self.adopted_pid().is_some()
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
        self.engine.kill();
        if self.signal_adopted(nix::sys::signal::Signal::SIGKILL) {
            self.wait_adopted_gone();
        }
    }
    /// SIGSTOP: the server hangs; its connections stay open and time out.
    pub fn pause(&self) -> Result<()> {
        if self.signal_adopted(nix::sys::signal::Signal::SIGSTOP) {
            return Ok(());
        }
        self.engine.pause()
    }
    pub fn resume(&self) -> Result<()> {
        if self.signal_adopted(nix::sys::signal::Signal::SIGCONT) {
            return Ok(());
        }
        self.engine.resume()
    }
    /// A clean shutdown (also of a server its agent started).
    pub fn stop(&mut self) {
        self.engine.stop();
        self.signal_adopted(nix::sys::signal::Signal::SIGCONT);
        if self.signal_adopted(nix::sys::signal::Signal::SIGTERM) {
            self.wait_adopted_gone();
            self.signal_adopted(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
        self.keep_crash_log();
        if self.mounted {
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl MariaDb {
    /// A server that crashed (a fatal signal of its own, not one the test sent) keeps
    /// its whole error log past the test, in `$TMPDIR/tandem-mariadb-crashes/`: the
    /// data directory goes with the test, and a crash is the engine's to explain.
    fn keep_crash_log(&self) {
        let Ok(log) = std::fs::read_to_string(self.error_log()) else {
            return;
        };
        if !log.contains("handle_fatal_signal") && !log.contains("got signal") {
            return;
        }
        let dir = std::env::temp_dir().join("tandem-mariadb-crashes");
        let name = format!(
            "{}-{}.err",
            std::thread::current().name().unwrap_or("unnamed"),
            self.port()
        );
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(dir.join(&name), log).is_ok() {
            eprintln!(
                "mariadbd on port {} crashed; its error log is kept as {}",
                self.port(),
                dir.join(name).display()
            );
        }
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
