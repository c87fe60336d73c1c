//! One memory cgroup (v1) per job process, where this process may make them.
//!
//! The job's cgroup is a child of the supervisor's own, named by experiment and attempt.
//! The job process joins it between fork and exec (it writes `0` to `cgroup.procs`), so
//! everything it ever allocates is counted. After the process is gone, the supervisor
//! reads whether the kernel's OOM killer acted inside it and its peak, then removes it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::limits::own_memory_cgroup;

/// A job's memory cgroup; removed when dropped.
#[derive(Debug)]
pub struct JobCgroup {
    dir: PathBuf,
}

/// Where job cgroups go: this process's own memory cgroup, if it can make children there.
pub fn base() -> Result<PathBuf, String> {
    let dir = own_memory_cgroup().ok_or("no memory cgroup (v1) is mounted")?;
    let probe = dir.join(format!("trainyard-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| format!("cannot create {}: {e}", probe.display()))?;
    let writable = std::fs::write(probe.join("memory.limit_in_bytes"), "1073741824");
    let _ = std::fs::remove_dir(&probe);
    writable.map_err(|e| format!("cannot set a memory limit in {}: {e}", dir.display()))?;
    Ok(dir)
}

impl JobCgroup {
    /// Makes `base/name` with a limit of `bytes` (memory, and memory plus swap where the
    /// kernel accounts swap, so the job cannot swap past its budget either).
    pub fn create(base: &Path, name: &str, bytes: u64) -> std::io::Result<JobCgroup> {
        let dir = base.join(name);
        std::fs::create_dir(&dir)?;
        let cg = JobCgroup { dir };
        std::fs::write(cg.dir.join("memory.limit_in_bytes"), bytes.to_string())?;
        let memsw = cg.dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            std::fs::write(memsw, bytes.to_string())?;
        }
        Ok(cg)
    }

    /// The file a process writes `0` into to join.
    pub fn procs(&self) -> CString {
        let p = self.dir.join("cgroup.procs");
        CString::new(p.into_os_string().into_encoded_bytes()).expect("a path without NUL")
    }

    /// How many processes the kernel's OOM killer ended in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.oom_control"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The most memory the cgroup held at once.
    pub fn peak(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("memory.max_usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        // Empty once its process is reaped; a few tries cover a slow teardown.
        for _ in 0..20 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => return,
            }
        }
        tracing::warn!(dir = %self.dir.display(), "could not remove a job's cgroup");
    }
}
