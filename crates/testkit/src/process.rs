use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::signals::Target;

/// A port nothing listens on right now. Another process may take it before we bind it,
/// so starters retry with a new port when the bind fails.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface has a free port")
}

/// Makes `cmd` die with the thread that spawned it (SIGKILL on parent death). Set after
/// any uid change, which would clear it.
pub(crate) fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        })
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Option<Child>,
    /// The child as signals name it (pid and start time), read right after spawning.
    target: Option<Target>,
    log: Option<PathBuf>,
    stop_grace: Duration,
}

impl Process {
    /// Spawns `cmd`, with stdout and stderr appended to `log` when given.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log: Option<PathBuf>) -> Result<Self> {
        let name = name.into();
        if let Some(path) = &log {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open log {}", path.display()))?;
            cmd.stdout(out.try_clone()?).stderr(out);
        }
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name} ({:?})", cmd.get_program()))?;
        let target = Target::of(child.id());
        Ok(Process {
            name,
            target,
            child: Some(child),
            log,
            stop_grace: Duration::from_secs(10),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_path(&self) -> Option<&PathBuf> {
        self.log.as_ref()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the process to exit on its own; returns its status.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Sends `sig` while the child still runs (never to a pid it no longer owns).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.target
            .with_context(|| format!("{} ended before it could be named", self.name))?
            .send(sig, &self.name)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // A child that has exited and been reaped no longer owns its pid: with the
        // machine's small pid range it may already be another test's server. Signal
        // by pid only while the child is still ours (running, or a zombie not reaped).
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Some(target) = self.target {
            let _ = target.send(Signal::SIGCONT, &self.name);
            let _ = target.send(Signal::SIGTERM, &self.name);
        }
        let deadline = Instant::now() + self.stop_grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `ready` every 25 ms until it returns true, the process exits, or `limit` passes.
pub(crate) fn wait_until_ready(
    process: &mut Process,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = process.try_wait() {
            anyhow::bail!(
                "{} exited ({status}) before it was ready; log tail:\n{}",
                process.name,
                process.log_tail(30)
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} was not ready within {limit:?}; log tail:\n{}",
                process.name,
                process.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A stable short hash (FNV-1a), to key caches by tool version.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A directory under the shared test cache, built once by `build` and reused by every
/// later test process. Built in a scratch directory and renamed into place, so two
/// processes racing to build it never see a half-made one.
pub(crate) fn cached_dir(
    name: &str,
    build: impl FnOnce(&std::path::Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = std::env::temp_dir().join("tandem-testkit-cache");
    std::fs::create_dir_all(&root)?;
    let dest = root.join(name);
    if dest.exists() {
        return Ok(dest);
    }
    let scratch = root.join(format!("{name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    build(&scratch).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&scratch);
    })?;
    if std::fs::rename(&scratch, &dest).is_err() {
        // Another process won the race; its copy is as good as ours.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(dest)
}

/// A database server process on a local port: started with a few retries on fresh
/// ports (another process may take a port between our probe and the server's bind),
/// killed, paused, resumed or stopped. Shared by [`crate::MariaDb`] and [`crate::Postgres`].
pub(crate) struct EngineProcess {
    pub port: u16,
    process: Option<Process>,
}

impl EngineProcess {
    pub fn new() -> Self {
        EngineProcess {
            port: 0,
            process: None,
        }
    }

    /// Starts the server with `spawn(port)`, which must return once it is ready.
    pub fn start(&mut self, mut spawn: impl FnMut(u16) -> Result<Process>) -> Result<()> {
        let mut last_err = None;
        for attempt in 0..3 {
            if self.port == 0 || attempt > 0 {
                self.port = free_port();
            }
            match spawn(self.port) {
                Ok(p) => {
                    self.process = Some(p);
                    return Ok(());
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("three attempts were made"))
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.try_wait().is_none())
    }

    /// SIGKILL: the server crashes without a chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGSTOP: the server hangs; its connections stay open and time out.
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

    /// Runs `client` (a SQL client already given `sql`); its stdout, or an error with
    /// the statement and the client's stderr.
    pub fn run_sql(&self, mut client: Command, sql: &str) -> Result<String> {
        let out = client
            .output()
            .with_context(|| format!("run {:?}", client.get_program()))?;
        anyhow::ensure!(
            out.status.success(),
            "SQL on port {} failed: {sql}\n{}",
            self.port,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// A clean shutdown (SIGTERM, escalating to SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }
}
