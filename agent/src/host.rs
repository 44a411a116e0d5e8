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
                .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64),
            agent_rss_bytes: self.system.process(self.pid).map(|p| p.memory()),
        }
    }
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}
