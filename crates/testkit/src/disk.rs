//! Small filesystems for tests of what happens when a disk fills: a size-limited tmpfs
//! mounted on a temporary directory (needs root), unmounted on drop.

use std::path::Path;

use anyhow::{Context, Result};

/// A tmpfs of a given size on a directory of its own.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// A new tmpfs of `bytes`, world-readable (an engine's user reaches below it).
    pub fn new(bytes: u64) -> Result<SmallDisk> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-disk-")
            .tempdir()
            .context("create a temporary directory")?;
        mount_tmpfs(dir.path(), &bytes.to_string())?;
        Ok(SmallDisk { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills all but `leave` bytes of the filesystem holding `path` with one file there
    /// (`filler` under it): the disk other work has taken.
    pub fn fill(path: &Path, leave: u64) -> Result<()> {
        let s = nix::sys::statvfs::statvfs(path)?;
        let free = s.blocks_available() as u64 * s.fragment_size() as u64;
        let file = std::fs::File::create(path.join("filler"))?;
        use std::io::Write;
        let mut w = std::io::BufWriter::new(file);
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = free.saturating_sub(leave);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if w.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = w.flush();
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

pub(crate) fn mount_tmpfs(at: &Path, size: &str) -> Result<()> {
    nix::mount::mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(format!("size={size},mode=0755").as_str()),
    )
    .with_context(|| format!("mount a tmpfs on {}", at.display()))
}

pub(crate) fn remount_tmpfs(at: &Path, bytes: u64) -> Result<()> {
    nix::mount::mount(
        None::<&str>,
        at,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some(format!("size={bytes}").as_str()),
    )
    .with_context(|| format!("shrink the tmpfs on {} to {bytes} bytes", at.display()))
}
