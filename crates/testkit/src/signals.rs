//! Every signal the test kit sends goes through here, for two reasons.
//!
//! A pid names a process only while that process lives: once it is reaped, the
//! machine's small pid range hands the number to the next process, which in a parallel
//! test run is often another test's `mariadbd`. So a target is named by its pid *and*
//! its start time (field 22 of `/proc/PID/stat`, in clock ticks since boot), read when
//! the test kit first met it, and a signal is sent only while both still match.
//!
//! And a server that stops for no visible reason ("Normal shutdown initiated by:
//! unknown" in its error log) must be traceable: every signal sent is appended to
//! [`log_path`] with the sending test (libtest names each test's thread after it), the
//! target, and the time.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A process named by its pid and the time it started: another process that later gets
/// the same pid is not it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    started: u64,
}

impl Target {
    /// The process now running as `pid`, or `None` if there is none.
    pub fn of(pid: u32) -> Option<Target> {
        Some(Target {
            pid,
            started: start_time(pid)?,
        })
    }

    /// Still running (a zombie not yet reaped counts: its pid is still its own).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.started)
    }

    /// Sends `sig` if this is still the same process; says why not otherwise. `what`
    /// names the target in the log and in the error.
    pub fn send(&self, sig: Signal, what: &str) -> Result<()> {
        if !self.alive() {
            record(self.pid, sig, what, "not sent: the process has ended");
            bail!("{what} (pid {}) has ended; {sig} not sent", self.pid);
        }
        let sent = kill(Pid::from_raw(self.pid as i32), sig);
        record(
            self.pid,
            sig,
            what,
            match &sent {
                Ok(()) => "sent",
                Err(_) => "failed",
            },
        );
        sent.with_context(|| format!("send {sig} to {what} (pid {})", self.pid))
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // from the last ')'. The state is field 3, so the start time is the 20th after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Where every signal the test kit sends is recorded.
pub fn log_path() -> PathBuf {
    std::env::temp_dir().join("tandem-testkit-signals.log")
}

fn record(pid: u32, sig: Signal, what: &str, outcome: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let thread = std::thread::current();
    let line = format!(
        "{}.{:03} from pid {} ({}): {sig} to {what} (pid {pid}): {outcome}\n",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id(),
        thread.name().unwrap_or("unnamed thread"),
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path())
    {
        let _ = f.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_that_has_ended_is_not_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let target = Target::of(child.id()).expect("a running child");
        assert!(target.alive());
        target.send(Signal::SIGCONT, "sleep").unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!target.alive());
        let err = target.send(Signal::SIGTERM, "sleep").unwrap_err();
        assert!(err.to_string().contains("has ended"), "{err}");
    }

    #[test]
    fn the_start_time_is_read_past_a_name_with_spaces_and_parentheses() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
