//! A host's CPU, emulated with a cgroup: the processes put in a [`CpuJail`] run on one
//! CPU only, and busy processes started there compete with them for it, as other work
//! saturating a VM's CPU would. The scheduler shares that CPU by weight (`nice`), as
//! a guest kernel shares its vCPU, with no quota throttling everyone alike. cgroup v1
//! `cpuset`, or v2 with the cpuset controller; needs root. Removed on drop: the busy
//! processes killed, the others moved back out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

pub struct CpuJail {
    dir: PathBuf,
    parent: PathBuf,
    busy: Vec<Child>,
}

impl CpuJail {
    /// A new jail on the machine's last CPU.
    pub fn last_cpu() -> Result<CpuJail> {
        let v1 = Path::new("/sys/fs/cgroup/cpuset");
        let parent = if v1.join("cpuset.cpus").exists() {
            v1.to_path_buf()
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let dir = parent.join(format!(
            "tandem-cpu-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir(&dir)
            .with_context(|| format!("create the cgroup {} (needs root)", dir.display()))?;
        let jail = CpuJail {
            dir,
            parent,
            busy: Vec::new(),
        };
        let set = |file: &str, value: String| {
            std::fs::write(jail.dir.join(file), value)
                .with_context(|| format!("set {file} of {}", jail.dir.display()))
        };
        set("cpuset.cpus", (cpus - 1).to_string())?;
        if jail.dir.join("cpuset.mems").exists() {
            let mems = std::fs::read_to_string(jail.parent.join("cpuset.mems"))
                .unwrap_or_else(|_| "0".into());
            let mems = mems.trim();
            set(
                "cpuset.mems",
                if mems.is_empty() {
                    "0".into()
                } else {
                    mems.to_owned()
                },
            )?;
        }
        Ok(jail)
    }

    /// Moves a process (all its threads) into the jail.
    pub fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move pid {pid} into {}", self.dir.display()))
    }

    /// Starts `n` processes that spin for ever inside the jail.
    pub fn saturate(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start a busy process")?;
            self.busy.push(child);
            self.add(self.busy.last().expect("just pushed").id())?;
        }
        Ok(())
    }
}

impl Drop for CpuJail {
    fn drop(&mut self) {
        for child in &mut self.busy {
            let _ = child.kill();
            let _ = child.wait();
        }
        // What is left (the engine, the agent) goes back to the parent group; a group
        // with processes in it cannot be removed.
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(self.parent.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
