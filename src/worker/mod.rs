//! Worker tasks: claim an experiment, train it on a blocking thread, record each epoch.
//!
//! A worker is an async task that owns at most one experiment at a time. The training
//! itself is synchronous engine code and runs on `spawn_blocking`, never on the runtime's
//! threads; the engine's observer reaches back into the runtime (`Handle::block_on`) only
//! to store an epoch, which is a short transaction of its own.
//!
//! Beside the training, a heartbeat renews the lease. Its answer carries the cancel flag,
//! and a cancel NOTIFY short-cuts the wait. A lost lease, a cancel, or the process's
//! shutdown each set the stop reason the training loop checks between batches; what
//! happens next depends on it: a lost lease writes nothing more, a cancel ends the
//! experiment `cancelled`, a shutdown hands it back to the queue for another worker.

mod cache;
mod job;
pub mod record;

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
    /// Bytes of prepared samples kept between jobs (0: none), shared by the process's
    /// workers: the next job on the same dataset spec skips their preparation.
    pub prepared_cache_bytes: usize,
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

/// Nice value of the training threads (see [`crate::engine::device::lower_compute_priority`]).
const COMPUTE_NICE: i32 = 10;

/// Runs `cfg.workers` workers and a lease rescuer until `shutdown` turns true; returns
/// when every worker has stopped (a running job is handed back first).
pub async fn run(store: Store, hub: Hub, cfg: WorkerConfig, shutdown: watch::Receiver<bool>) {
    // Training yields the CPU to the API, the SSE streams and PostgreSQL.
    crate::engine::device::lower_compute_priority(COMPUTE_NICE);
    let cfg = Arc::new(cfg);
    let data = Arc::new(cache::DataCache::new(cfg.prepared_cache_bytes));
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
            data: data.clone(),
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
