//! Guest RAM as a file (docs/contracts.md, "QEMU command line"): QEMU maps it shared
//! (`-object memory-backend-file,...,share=on`), so host processes see guest RAM in it, at file
//! offset = guest-physical address (below [`crate::qemu::LOW_RAM_LIMIT`]). The out-of-guest
//! monitor reads it; `tuk tamper` writes it.
//!
//! The file lives on tmpfs ([`DEFAULT_MEMORY_DIR`]), never in the state directory (which may be
//! on disk: guest RAM must not reach a disk), is created with mode 0600 under a name no other
//! boot uses (`tuk-<launcher pid>-<port>-<n>.ram`), and is removed when its [`MemoryFile`] is
//! removed or dropped, which [`crate::Instance`] does as soon as it sees QEMU exit. Files left by a launcher
//! that was killed (SIGKILL) are removed by the next launcher ([`sweep_stale`]).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::LaunchError;

/// Where memory files go unless `TUK_MEMORY_DIR` or [`crate::RunConfig::memory_dir`] says
/// otherwise: tmpfs.
pub const DEFAULT_MEMORY_DIR: &str = "/dev/shm";
const PREFIX: &str = "tuk-";
const SUFFIX: &str = ".ram";

/// `TUK_MEMORY_DIR` if set, else [`DEFAULT_MEMORY_DIR`].
pub fn default_dir() -> PathBuf {
    std::env::var_os("TUK_MEMORY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MEMORY_DIR))
}

/// Per process: makes every boot's name new even for the same port.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// One boot's guest-RAM file; removed on drop.
#[derive(Debug)]
pub struct MemoryFile {
    path: PathBuf,
    bytes: u64,
    removed: bool,
}

impl MemoryFile {
    /// Creates `<dir>/tuk-<pid>-<port>-<n>.ram`, empty, mode 0600 (QEMU gives it its size).
    pub fn create(dir: &Path, port: u16, bytes: u64) -> Result<MemoryFile, LaunchError> {
        if !dir.is_dir() {
            return Err(LaunchError::MemoryDir { path: dir.into() });
        }
        let pid = std::process::id();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{PREFIX}{pid}-{port}-{n}{SUFFIX}"));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => {
                    return Ok(MemoryFile {
                        path,
                        bytes,
                        removed: false,
                    })
                }
                // Left by an earlier process with our pid: take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LaunchError::io("cannot create the guest RAM file", path, e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Guest RAM's size (`-m`), which QEMU gives the file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Removes the file (idempotent). A mapping or descriptor that QEMU or a monitor still
    /// holds keeps working; the name is gone.
    pub fn remove(&mut self) {
        if !self.removed {
            self.removed = true;
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for MemoryFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes `tuk-<pid>-*.ram` files in `dir` whose launcher (`pid`) no longer runs: what a
/// launcher killed by SIGKILL leaves behind. Returns how many were removed. Files of running
/// launchers, and names that are not ours, are left alone.
pub fn sweep_stale(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(launcher_pid) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists()
            && fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// The launcher pid in a memory file's name `tuk-<pid>-<port>-<n>.ram`.
fn launcher_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse().ok()?;
    let port: Option<u16> = parts.next()?.parse().ok();
    let n: Option<u64> = parts.next()?.parse().ok();
    (port.is_some() && n.is_some() && parts.next().is_none()).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join("tuk-launcher-unit")
            .join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn created_private_unique_and_removed_on_drop() {
        let dir = scratch("memfile");
        let a = MemoryFile::create(&dir, 8080, 1 << 20).unwrap();
        let b = MemoryFile::create(&dir, 8080, 1 << 20).unwrap();
        assert_ne!(a.path(), b.path());
        let mode = fs::metadata(a.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            launcher_pid(a.path().file_name().unwrap().to_str().unwrap()),
            Some(std::process::id())
        );
        let (pa, pb) = (a.path().to_owned(), b.path().to_owned());
        drop(a);
        assert!(!pa.exists());
        let mut b = b;
        b.remove();
        assert!(!pb.exists());
        drop(b); // a second removal is harmless
        assert!(MemoryFile::create(&dir.join("missing"), 1, 1).is_err());
    }

    #[test]
    fn sweep_removes_only_files_of_dead_launchers() {
        let dir = scratch("sweep");
        // pid 0x7fffffff is above Linux's pid_max: never a running process.
        let dead = dir.join("tuk-2147483647-80-0.ram");
        let alive = dir.join(format!("tuk-{}-80-0.ram", std::process::id()));
        let other = dir.join("tuk-2147483647-notours.ram");
        for p in [&dead, &alive, &other] {
            fs::write(p, b"").unwrap();
        }
        assert_eq!(sweep_stale(&dir), 1);
        assert!(!dead.exists() && alive.exists() && other.exists());
        assert_eq!(launcher_pid("tuk-1-2-3.ram"), Some(1));
        assert_eq!(launcher_pid("tuk-1-2.ram"), None);
        assert_eq!(launcher_pid("tuk-1-2-3-4.ram"), None);
        assert_eq!(launcher_pid("x-1-2-3.ram"), None);
    }
}
