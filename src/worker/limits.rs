//! A job process's memory budget, and how it is enforced.
//!
//! Two mechanisms, because no one works everywhere this runs:
//! - `RLIMIT_DATA`, set between fork and exec: an allocation beyond it is refused, and the
//!   allocator below turns that refusal into exit status [`EXIT_MEMORY_LIMIT`], which the
//!   supervisor reads as "died by its own limit". Any process may lower its own limit, so
//!   this works as a non-root user in a container. It counts private writable memory,
//!   not reserved address space (`RLIMIT_AS` would, and CUDA reserves tens of GiB at
//!   start). It misses what C code allocates and then mishandles, and memory that is
//!   mapped but shared.
//! - A memory cgroup (v1) per job, where this process may create one (as root, with the
//!   controller mounted): it counts resident memory whoever allocated it, and its OOM
//!   kill is counted in `memory.oom_control`, so the supervisor tells it apart from a
//!   SIGKILL sent by someone else. Its `memory.max_usage_in_bytes` is the job's peak.
//!
//! Neither bounds GPU memory: what a job may ask of the GPU is bounded by the admission
//! estimate alone (`spec::footprint`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Exit status of a job process whose allocation its memory limit refused.
pub const EXIT_MEMORY_LIMIT: i32 = 86;

/// Set in a job process: a refused allocation is then its limit, and ends it.
static IN_JOB: AtomicBool = AtomicBool::new(false);

/// Marks this process as a job process: first in line for the OOM killer, and a refused
/// allocation exits with [`EXIT_MEMORY_LIMIT`].
pub fn enter_job_process() {
    IN_JOB.store(true, Ordering::SeqCst);
    // Raising one's own score needs no privilege.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        tracing::debug!(error = %e, "could not raise the job's OOM score");
    }
}

/// Called by the allocator when an allocation of `size` bytes was refused. In a job
/// process, it says so on stderr and exits at once; elsewhere it returns, and Rust's
/// usual handling (an abort naming the size) follows.
pub fn allocation_refused(size: usize) {
    if !IN_JOB.load(Ordering::Relaxed) {
        return;
    }
    // Nothing here may allocate: the message is assembled on the stack.
    let mut buf = [0u8; 96];
    let head = b"trainyard job: an allocation of ";
    let tail = b" bytes was refused by its memory limit\n";
    let mut n = 0;
    buf[..head.len()].copy_from_slice(head);
    n += head.len();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = size;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf[n..n + digits.len() - i].copy_from_slice(&digits[i..]);
    n += digits.len() - i;
    buf[n..n + tail.len()].copy_from_slice(tail);
    n += tail.len();
    // SAFETY: write(2) and _exit(2) are async-signal-safe and touch no Rust state.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(EXIT_MEMORY_LIMIT);
    }
}

/// The system allocator, reporting refusals to [`allocation_refused`].
pub struct NotingAllocator;

// SAFETY: every call is forwarded to the system allocator unchanged; a null result is
// reported first and then returned as it came.
unsafe impl std::alloc::GlobalAlloc for NotingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if p.is_null() {
            allocation_refused(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if p.is_null() {
            allocation_refused(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new) };
        if p.is_null() {
            allocation_refused(new);
        }
        p
    }
}

/// Which mechanisms enforce the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LimitBy {
    /// `RLIMIT_DATA`, and a memory cgroup where one can be made.
    Auto,
    /// `RLIMIT_DATA` only.
    Rlimit,
    /// A memory cgroup only (fails at start where none can be made).
    Cgroup,
}

/// The memory this machine gives this process: its RAM, or its own cgroup's limit when
/// lower (in a container).
pub fn machine_memory() -> u64 {
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib * 1024);
    let v1 = own_memory_cgroup()
        .and_then(|d| std::fs::read_to_string(d.join("memory.limit_in_bytes")).ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    [Some(ram), v1, v2]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(8 << 30)
}

/// The default budget of one job: the machine's memory shared among `slots` jobs and one
/// more share for everything else (the API, PostgreSQL, the page cache), at least 256 MiB.
pub fn default_job_memory_mib(slots: usize) -> u64 {
    ((machine_memory() / (slots as u64 + 1)) >> 20).max(256)
}

/// This process's memory cgroup (v1) folder, when the controller is mounted.
pub fn own_memory_cgroup() -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup/memory");
    if !root.join("memory.limit_in_bytes").exists() && !root.join("cgroup.procs").exists() {
        return None;
    }
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.trim_start_matches('/').to_string())
    })?;
    Some(root.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_shares_the_machine_and_has_a_floor() {
        let m = machine_memory();
        assert!(m > 64 << 20, "{m}");
        assert_eq!(default_job_memory_mib(1), ((m / 2) >> 20).max(256));
        assert!(default_job_memory_mib(1_000_000) == 256);
    }
}
