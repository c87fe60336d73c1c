//! Workers: a supervisor with slots, each slot running one experiment at a time in a
//! job process of its own.
//!
//! Why processes: a spec validation accepts can still ask for more memory than the
//! machine has, and in one process that aborts the API and every other account's run
//! with it. A job process ([`child`]) runs within a memory budget the kernel enforces
//! ([`limits`], [`cgroup`]); when it dies, it dies alone, and its slot says why.
//!
//! The supervisor (this module and [`job`], [`supervise`]) keeps everything that needs
//! the database: the lease and its heartbeat (whose answer carries the cancel flag; a
//! cancel NOTIFY short-cuts the wait), progress NOTIFYs, fencing and every write. A lost
//! lease, a cancel, or the supervisor's shutdown each become a stop the job process sees
//! before its next batch; then a lost lease writes nothing more, a cancel ends the
//! experiment `cancelled`, a shutdown hands it back to the queue for another worker.
//!
//! A slot is a number, `0..workers`, in the supervisor's name (`lease_owner`): what a
//! slot runs on (a GPU of its own, another host) is the job process's business, so the
//! slots can later be pinned to devices without changing this side.

pub mod cache;
mod cgroup;
pub mod child;
mod job;
pub mod limits;
mod process;
pub mod record;
mod supervise;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::shutdown::stopped;
use crate::spec::DeviceSpec;
use crate::store::Store;
use crate::store::housekeeping::Housekeeping;
use crate::store::listen::Hub;

/// How workers behave.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker tasks in this process.
    pub workers: usize,
    /// A claim's lease; a worker silent for longer loses its experiment.
    pub lease_secs: f64,
    /// How often the lease is renewed (well under `lease_secs`).
    pub heartbeat_secs: f64,
    /// Fallback poll when no NOTIFY arrives.
    pub poll_secs: f64,
    /// Overrides every spec's device when set.
    pub device: Option<DeviceSpec>,
    pub data_dir: PathBuf,
    pub download: bool,
    /// Bytes of prepared samples kept between jobs (0: none), as files in
    /// `prepared_cache_dir`: the next job on the same dataset spec skips their preparation.
    pub prepared_cache_bytes: usize,
    pub prepared_cache_dir: PathBuf,
    /// The program a job process runs (`trainyard job`): this binary.
    pub job_program: PathBuf,
    /// Each job process's memory budget, bytes.
    pub job_memory_bytes: u64,
    /// How the budget is enforced.
    pub limit_by: limits::LimitBy,
    /// Where job cgroups are made, when they can be (decided at start, see [`run`]).
    pub cgroup_base: Option<PathBuf>,
    /// Job processes log JSON lines, as their supervisor does.
    pub log_json: bool,
    /// The longest a job may train, seconds (a spec's `time_limit` may ask for less).
    pub max_time_limit_secs: f64,
    /// Identifies this process in `lease_owner`.
    pub name: String,
    /// Seconds between housekeeping rounds of ended experiments (0: never).
    pub housekeeping_secs: f64,
    /// What housekeeping does.
    pub housekeeping: Housekeeping,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: 1,
            lease_secs: 30.0,
            heartbeat_secs: 5.0,
            poll_secs: 5.0,
            device: None,
            data_dir: PathBuf::from("data"),
            download: true,
            prepared_cache_bytes: 512 << 20,
            prepared_cache_dir: cache::default_dir(),
            job_program: std::env::current_exe().unwrap_or_else(|_| "trainyard".into()),
            job_memory_bytes: limits::default_job_memory_mib(1) << 20,
            limit_by: limits::LimitBy::Auto,
            cgroup_base: None,
            log_json: false,
            max_time_limit_secs: DEFAULT_MAX_TIME_LIMIT_SECS,
            name: format!("{}-{}", hostname(), std::process::id()),
            housekeeping_secs: 300.0,
            housekeeping: Housekeeping::default(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

/// Nice value of job processes (see [`crate::engine::device::lower_compute_priority`]).
const COMPUTE_NICE: i32 = 10;
pub use crate::spec::footprint::DEFAULT_MAX_TIME_LIMIT_SECS;

/// Runs `cfg.workers` workers and a lease rescuer until `shutdown` turns true; returns
/// when every worker has stopped (a running job is handed back first).
pub async fn run(
    store: Store,
    hub: Hub,
    mut cfg: WorkerConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    enforce(&mut cfg)?;
    let cfg = Arc::new(cfg);
    // Which experiments this process can run: those asking for CUDA only with a GPU, or
    // when the operator overrides every spec's device (`--device`).
    let cuda = cfg.device.is_some() || crate::engine::device::gpu_present();
    tracing::info!(cuda, "takes experiments that ask for CUDA: {cuda}");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.workers {
        let w = job::Worker {
            store: store.clone(),
            hub: hub.clone(),
            cfg: cfg.clone(),
            owner: format!("{}/{i}", cfg.name),
            cuda,
        };
        tasks.spawn(w.run(shutdown.clone()));
    }
    if cfg.housekeeping_secs > 0.0 {
        tasks.spawn(housekeeper(store.clone(), cfg.clone(), shutdown.clone()));
    }
    tasks.spawn(rescuer(store, cfg.clone(), shutdown));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Decides how job budgets are enforced here, and says so in the log: the operator
/// must know whether a job can take the machine down.
fn enforce(cfg: &mut WorkerConfig) -> anyhow::Result<()> {
    use limits::LimitBy;
    let mib = cfg.job_memory_bytes >> 20;
    cfg.cgroup_base = match (cfg.limit_by, cgroup::base()) {
        (LimitBy::Rlimit, _) => None,
        (_, Ok(base)) => Some(base),
        (LimitBy::Cgroup, Err(why)) => {
            anyhow::bail!("--job-memory-limit-by cgroup: no memory cgroup can be made: {why}")
        }
        (LimitBy::Auto, Err(why)) => {
            tracing::info!(reason = %why, "job memory cgroups: none ({why})");
            None
        }
    };
    let by = match (cfg.limit_by, &cfg.cgroup_base) {
        (LimitBy::Cgroup, _) => "a memory cgroup",
        (_, Some(_)) => "RLIMIT_DATA and a memory cgroup",
        (_, None) => "RLIMIT_DATA",
    };
    tracing::info!(
        job_memory_mib = mib,
        by,
        slots = cfg.workers,
        "each job runs in its own process, within {mib} MiB enforced by {by}"
    );
    Ok(())
}

/// Periodically requeues experiments whose lease expired.
async fn rescuer(store: Store, cfg: Arc<WorkerConfig>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_secs_f64((cfg.lease_secs / 2.0).max(0.2));
    loop {
        match store.rescue_expired().await {
            Ok(0) => {}
            Ok(n) => {
                crate::telemetry::jobs_rescued(n);
                tracing::info!(count = n, "rescued experiments with expired leases")
            }
            Err(e) => tracing::warn!(error = %e, "lease rescue failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Periodically sweeps ended experiments (see [`crate::store::housekeeping`]); several
/// processes may do it at once, each taking rows the others have not locked.
async fn housekeeper(store: Store, cfg: Arc<WorkerConfig>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_secs_f64(cfg.housekeeping_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopped(&mut shutdown) => return,
        }
        match store.housekeep(&cfg.housekeeping).await {
            Ok(s) if s.swept + s.deleted > 0 => {
                tracing::info!(swept = s.swept, deleted = s.deleted, "housekeeping")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
        }
    }
}
