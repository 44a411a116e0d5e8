//! Host metrics for status reports: CPU, memory, free disk of the data directory, and
//! the agent's own resident memory.

use std::path::Path;

use sysinfo::{MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate, System};
use tandem_proto::HostMetrics;

pub struct HostProbe {
    system: System,
    pid: sysinfo::Pid,
}

impl HostProbe {
    pub fn new() -> Self {
        HostProbe {
            // Empty: only what a report needs is refreshed, so the agent stays small.
            system: System::new(),
            pid: sysinfo::Pid::from_u32(std::process::id()),
        }
    }

    pub fn sample(&mut self, data_dir: &Path) -> HostMetrics {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_memory(),
        );
        HostMetrics {
            cpu_percent: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            data_dir_free_bytes: nix::sys::statvfs::statvfs(data_dir)
                .ok()
                .map(|s| s.blocks_available() * s.fragment_size()),
            agent_rss_bytes: self.system.process(self.pid).map(|p| p.memory()),
        }
    }
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets this thread's scheduling priority (threads it starts later inherit it); says
/// why when it cannot (an unprivileged agent, or one whose unit set it already).
pub(crate) fn set_nice(nice: i32) -> Result<(), String> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours. On Linux,
    // PRIO_PROCESS with 0 names the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// Hands the agent's own code pages back to the page cache. The agent is one binary
/// with its rare paths (backups, restores, seeding, TLS) beside the hot ones; loading
/// maps far more of it than an idle agent runs (the kernel maps whole neighbourhoods of
/// each page it faults in), and those pages stay resident in every database VM. Paged
/// out once start-up is over, only what the idle loop touches comes back, from the page
/// cache, at the cost of a few minor faults.
pub(crate) fn page_out_cold_code() -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let mut advised = 0usize;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, _, _, _, path, ..] = fields.as_slice() else {
            continue;
        };
        // Read-only mappings of the binary itself: code and constants, clean pages
        // that are simply dropped (never the written ones, which would need swap).
        if std::path::Path::new(path) != exe || perms.contains('w') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: MADV_PAGEOUT only drops clean file-backed pages of a mapping we
        // own; their contents come back from the file on the next access.
        let done = unsafe {
            nix::sys::mman::madvise(addr, end - start, nix::sys::mman::MmapAdvise::MADV_PAGEOUT)
        };
        if done.is_ok() {
            advised += end - start;
        }
    }
    advised
}

/// The allocator set for an agent that idles small after heavy work. glibc raises its
/// mmap threshold to the size of every large buffer freed, so after a copy's 1 MiB
/// buffers later ones come from the heap and fragment it; a fixed threshold keeps
/// them mapped and returned on free. One arena: the agent runs on one thread, and the
/// helper threads' arenas would otherwise keep what they once held.
pub(crate) fn tune_allocator() {
    // SAFETY: mallopt only changes the allocator's parameters; called before the
    // agent starts other threads.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// How long after heavy work its helper threads have ended (tokio keeps an idle
/// blocking thread for 10 s).
pub(crate) const SETTLE: std::time::Duration = std::time::Duration::from_secs(12);

/// After heavy work (a backup, a restore, a seeding): the allocator's freed buffers go
/// back to the system (glibc keeps them otherwise, and the agent stays at its peak in
/// every VM), and the code only that work ran goes back to the page cache.
pub(crate) fn release_memory() {
    // SAFETY: malloc_trim only returns free heap memory to the system; it touches no
    // live allocation.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    let bytes = page_out_cold_code();
    tracing::debug!(bytes, "memory released after heavy work");
}

/// Whether a tool's error output says the disk is full (`ENOSPC`, errno 28).
pub(crate) fn is_disk_full(stderr: &str) -> bool {
    stderr.contains("No space left on device") || stderr.contains("errno 28")
}

/// Free bytes on the filesystem holding `path` (or its nearest existing ancestor).
pub(crate) fn free_space(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let s = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// A size for people: MiB with one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// An I/O failure on `path` as a person can act on it: a full disk and a denied
/// permission are named (and final: trying again changes nothing), anything else is
/// passed on with what was being done.
pub(crate) fn io_error(what: &str, path: &Path, e: &std::io::Error) -> crate::engine::EngineError {
    use crate::engine::EngineError;
    match e.raw_os_error() {
        Some(libc::ENOSPC) => EngineError::Refused(format!(
            "disk full: no space left on the filesystem of {} to {what} ({} free now)",
            path.display(),
            free_space(path)
                .map(mib)
                .unwrap_or_else(|| "unknown".into())
        )),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            EngineError::Refused(format!(
                "permission denied: cannot {what} at {}: {e} (the agent's user must be able to \
             write there)",
                path.display()
            ))
        }
        _ => EngineError::Internal(anyhow::anyhow!("{what} at {}: {e}", path.display())),
    }
}

/// A child process of a long operation (`mariabackup`, `mbstream`, `zstd`): killed when
/// the operation drops it (stopped, cancelled, failed), and killed by the kernel when
/// the agent dies (`PR_SET_PDEATHSIG`), so that no stage of a pipeline outlives the
/// agent that reads it: a stopped or blocked one would otherwise stay for ever. Never
/// for the engine itself, which must outlive its agent.
pub(crate) fn pipeline_stage(program: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.kill_on_drop(true);
    // SAFETY: runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: prctl is one, and nothing is allocated or locked.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}
