//! Starting a job process, and learning how it ended.
//!
//! A job process is this binary run again (`trainyard job`), never a `fork()` of the
//! supervisor: a fork of a multi-threaded async runtime inherits locks held by threads
//! that do not exist in the child. Between fork and exec, where only async-signal-safe
//! calls are allowed, the child
//! - asks the kernel to kill it when its parent thread dies (`PR_SET_PDEATHSIG`) and exits
//!   at once if the supervisor is already gone;
//! - lowers its `RLIMIT_DATA` to the job's budget and its priority to the compute nice;
//! - joins its memory cgroup, when there is one;
//! - leaves the supervisor's process group, so a Ctrl-C at a terminal reaches the
//!   supervisor alone, which forwards it as a stop at the next batch.
//!
//! The death signal follows the *thread* that forked, so every job process is started by
//! one thread that lives as long as the supervisor ([`spawner`]), not by a runtime thread
//! that might be retired. The end of its stdin tells a job the same thing a second way.

use std::ffi::{CString, OsString};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};

/// What a job process is started with.
#[derive(Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// `RLIMIT_DATA`, in bytes.
    pub rlimit_data: Option<u64>,
    /// The cgroup's `cgroup.procs`, to join before exec.
    pub cgroup_procs: Option<CString>,
    pub nice: i32,
}

/// A started job process: its pid and the supervisor's ends of its pipes.
#[derive(Debug)]
pub struct Started {
    pub pid: i32,
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
}

/// How a job process ended, and the most memory it held.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub status: ExitStatus,
    /// Peak resident memory (`ru_maxrss`), bytes.
    pub max_rss: u64,
}

type Request = (Launch, mpsc::Sender<std::io::Result<Started>>);

/// The one thread that starts job processes (see the module's note on the death signal).
fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("job-spawner".into())
            .spawn(move || {
                for (launch, reply) in rx {
                    let _ = reply.send(start(launch));
                }
            })
            .expect("starting the job spawner thread");
        Mutex::new(tx)
    })
}

/// Blocking: starts a job process.
pub fn spawn(launch: Launch) -> std::io::Result<Started> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap()
        .send((launch, tx))
        .map_err(|_| std::io::Error::other("the job spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the job spawner thread is gone"))?
}

fn start(l: Launch) -> std::io::Result<Started> {
    let mut cmd = Command::new(&l.program);
    cmd.args(&l.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    // SAFETY: getpid before the fork; in the child, only async-signal-safe system calls
    // (prctl, getppid, setrlimit, setpriority, open, write, close, _exit) on values
    // prepared before the fork.
    let parent = unsafe { libc::getpid() };
    let (limit, procs, nice) = (l.rlimit_data, l.cgroup_procs, l.nice);
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(super::child::EXIT_ORPHANED);
            }
            if let Some(bytes) = limit {
                let r = libc::rlimit {
                    rlim_cur: bytes as libc::rlim_t,
                    rlim_max: bytes as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_DATA, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::setpriority(libc::PRIO_PROCESS as _, 0, nice);
            if let Some(path) = &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let started = Started {
        pid: child.id() as i32,
        stdin: child.stdin.take().expect("piped stdin"),
        stdout: child.stdout.take().expect("piped stdout"),
    };
    // The supervisor reaps it with wait4 (for its peak memory), not through `Child`.
    drop(child);
    Ok(started)
}

/// Blocking: waits for the job process `pid` to end and reaps it.
pub fn wait(pid: i32) -> std::io::Result<Ended> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, with pointers to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(Ended {
        status: ExitStatus::from_raw(status),
        max_rss: usage.ru_maxrss.max(0) as u64 * 1024,
    })
}

/// Sends `sig` to the job process `pid`.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid, sig);
    }
}
