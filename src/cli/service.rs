//! `trainyard serve`, `worker`, `migrate`: the service's processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::api::auth::{AuthMode, RateLimits};
use crate::api::net::{self, NetConfig};

use super::DataArgs;
use crate::api::predict::BatchConfig;
use crate::spec::DeviceSpec;
use crate::store::housekeeping::Housekeeping;
use crate::worker::WorkerConfig;

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/trainyard"
    )]
    pub database_url: String,
    /// Most connections this process opens.
    #[arg(
        long,
        env = "TRAINYARD_DB_CONNECTIONS",
        global = true,
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub db_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Worker tasks in this process (0: API only).
    #[arg(long, env = "TRAINYARD_WORKERS", default_value_t = WorkerConfig::default().workers)]
    pub workers: usize,
    /// Seconds a claim stays valid without a heartbeat.
    #[arg(long, env = "TRAINYARD_LEASE_SECS", default_value_t = WorkerConfig::default().lease_secs,
        value_parser = super::seconds)]
    pub lease_secs: f64,
    /// Seconds between heartbeats (below the lease).
    #[arg(long, env = "TRAINYARD_HEARTBEAT_SECS", default_value_t = WorkerConfig::default().heartbeat_secs,
        value_parser = super::seconds)]
    pub heartbeat_secs: f64,
    /// Seconds between polls for work when no notification arrives.
    #[arg(long, env = "TRAINYARD_POLL_SECS", default_value_t = WorkerConfig::default().poll_secs,
        value_parser = super::seconds)]
    pub poll_secs: f64,
    /// Train on this device whatever the spec says (auto, cpu, cuda, cuda:N).
    #[arg(long, env = "TRAINYARD_DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Seconds after SIGTERM/SIGINT within which the process must have stopped: a job
    /// still running then is abandoned (its lease expires) and the process exits 1.
    #[arg(long, env = "TRAINYARD_SHUTDOWN_GRACE_SECS", default_value_t = 30.0,
        value_parser = super::seconds)]
    pub shutdown_grace_secs: f64,
    /// Seconds between housekeeping rounds: ended experiments' checkpoints drop their
    /// optimizer state (0: never).
    #[arg(long, env = "TRAINYARD_HOUSEKEEPING_SECS",
        default_value_t = WorkerConfig::default().housekeeping_secs,
        value_parser = super::seconds_or_never)]
    pub housekeeping_secs: f64,
    /// Housekeeping also deletes experiments that ended more than this many days ago.
    #[arg(long, env = "TRAINYARD_RETENTION_DAYS", value_parser = super::days)]
    pub retention_days: Option<f64>,
    /// MiB of prepared training data kept for the next job on the same data (0: none).
    #[arg(long, env = "TRAINYARD_PREPARED_CACHE_MIB",
        default_value_t = WorkerConfig::default().prepared_cache_bytes >> 20)]
    pub prepared_cache_mib: usize,
    /// Folder of the prepared-data files (default: trainyard-prepared in the temporary
    /// folder).
    #[arg(long, env = "TRAINYARD_PREPARED_CACHE_DIR")]
    pub prepared_cache_dir: Option<PathBuf>,
    /// MiB of memory each job process may use; a spec whose estimate exceeds it is refused
    /// at submission (default: the machine's memory shared by --workers jobs and one more
    /// share, at least 256).
    #[arg(long, env = "TRAINYARD_JOB_MEMORY_MIB", value_parser = clap::value_parser!(u64).range(64..))]
    pub job_memory_mib: Option<u64>,
    /// How the job memory budget is enforced: auto (RLIMIT_DATA, and a memory cgroup
    /// where one can be made), rlimit, or cgroup.
    #[arg(long, env = "TRAINYARD_JOB_MEMORY_LIMIT_BY", value_enum,
        default_value_t = crate::worker::limits::LimitBy::Auto)]
    pub job_memory_limit_by: crate::worker::limits::LimitBy,
    /// The longest a job may train, in seconds; a spec's `time_limit` may ask for less.
    #[arg(long, env = "TRAINYARD_MAX_TIME_LIMIT_SECS",
        default_value_t = crate::worker::DEFAULT_MAX_TIME_LIMIT_SECS, value_parser = super::seconds)]
    pub max_time_limit_secs: f64,
    /// The program job processes run (default: this one). For tests that run workers
    /// inside another binary.
    #[arg(long, env = "TRAINYARD_JOB_PROGRAM", hide = true)]
    pub job_program: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

impl WorkerArgs {
    /// The workers' configuration. Each flag's own range is clap's to check; what is left
    /// here is how flags relate.
    pub fn config(&self) -> anyhow::Result<WorkerConfig> {
        let defaults = WorkerConfig::default();
        anyhow::ensure!(
            self.heartbeat_secs < self.lease_secs,
            "--heartbeat-secs ({}) must be below --lease-secs ({})",
            self.heartbeat_secs,
            self.lease_secs
        );
        Ok(WorkerConfig {
            workers: self.workers,
            lease_secs: self.lease_secs,
            heartbeat_secs: self.heartbeat_secs,
            poll_secs: self.poll_secs,
            device: self.device,
            data_dir: self.data.data_dir.clone(),
            download: !self.data.no_download,
            prepared_cache_bytes: self.prepared_cache_mib.saturating_mul(1 << 20),
            prepared_cache_dir: self
                .prepared_cache_dir
                .clone()
                .unwrap_or(defaults.prepared_cache_dir),
            job_program: self.job_program.clone().unwrap_or(defaults.job_program),
            job_memory_bytes: self
                .job_memory_mib
                .unwrap_or_else(|| crate::worker::limits::default_job_memory_mib(self.workers))
                << 20,
            limit_by: self.job_memory_limit_by,
            max_time_limit_secs: self.max_time_limit_secs,
            housekeeping_secs: self.housekeeping_secs,
            housekeeping: Housekeeping {
                retention: retention(self.retention_days),
                ..Housekeeping::default()
            },
            ..WorkerConfig::default()
        })
    }
}

/// `--retention-days` (checked by clap: 0 to 36500) as a duration.
pub fn retention(days: Option<f64>) -> Option<Duration> {
    days.map(|d| Duration::from_secs_f64(d * 86400.0))
}

/// How `/predict` gathers concurrent requests for one model into a forward pass.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// Microseconds a batch waits for more requests after its first (0: only what is
    /// already queued). It waits only while other requests are on their way in.
    /// At most 1000000 (one second).
    #[arg(
        long,
        env = "TRAINYARD_PREDICT_BATCH_WINDOW_US",
        default_value_t = BatchConfig::default().window.as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(..=1_000_000)
    )]
    pub predict_batch_window_us: u64,
    /// Most images in one forward pass (1 to 4096).
    #[arg(long, env = "TRAINYARD_PREDICT_MAX_BATCH", default_value_t = BatchConfig::default().max_batch,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub predict_max_batch: usize,
}

impl PredictArgs {
    pub fn config(&self) -> BatchConfig {
        BatchConfig {
            window: Duration::from_micros(self.predict_batch_window_us),
            max_batch: self.predict_max_batch,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TRAINYARD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub predict: PredictArgs,
    /// Curve (SSE) streams kept open at once (1 to 1000000); one more gets a 503 with
    /// Retry-After.
    #[arg(long, env = "TRAINYARD_MAX_SSE_STREAMS", default_value_t = crate::api::DEFAULT_MAX_SSE_STREAMS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_sse_streams: usize,
    /// Whether requests need an API key. `off` acts as an admin of the `default` account
    /// for everyone, and is refused unless --bind is a loopback address.
    #[arg(long, env = "TRAINYARD_AUTH", value_enum, default_value_t = AuthMode::On)]
    pub auth: AuthMode,
    /// On the first start (no admin key yet), also write the admin key made then to
    /// this file (mode 0600).
    #[arg(long, env = "TRAINYARD_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<std::path::PathBuf>,
    /// How an operator reads --admin-key-file from outside, said at every start (the
    /// compose file: `docker compose exec trainyard cat /var/lib/trainyard/admin-key`).
    #[arg(long, env = "TRAINYARD_ADMIN_KEY_HINT")]
    pub admin_key_hint: Option<String>,
    /// The most training FLOPs (forward and backward over every epoch) one experiment may
    /// ask for; more is refused at submission.
    #[arg(long, env = "TRAINYARD_MAX_JOB_FLOPS", default_value_t = crate::spec::footprint::DEFAULT_MAX_JOB_FLOPS)]
    pub max_job_flops: f64,
    /// Test only: admit specs whose memory estimate exceeds --job-memory-mib, to test how
    /// the budget is enforced.
    #[arg(long, env = "TRAINYARD_SKIP_MEMORY_ADMISSION", hide = true)]
    pub skip_memory_admission: bool,
    /// `POST /experiments` per minute and key; bursts of as many (0: unlimited).
    #[arg(long, env = "TRAINYARD_RATE_LIMIT_EXPERIMENTS", default_value_t = RateLimits::default().experiments_per_minute)]
    pub rate_limit_experiments: u32,
    /// `POST /predict` and `/v2` inference requests together, per second and key; bursts
    /// of as many (0: unlimited).
    #[arg(long, env = "TRAINYARD_RATE_LIMIT_PREDICT", default_value_t = RateLimits::default().predict_per_second)]
    pub rate_limit_predict: u32,
    /// Seconds a client has to send a request's line and headers (and the most a
    /// keep-alive connection stays idle); then the connection closes.
    #[arg(long, env = "TRAINYARD_HEADER_TIMEOUT_SECS", default_value_t = net::DEFAULT_HEADER_TIMEOUT_SECS,
        value_parser = super::seconds)]
    pub header_timeout_secs: f64,
    /// Seconds a client has to send a request's whole body; then a 408.
    #[arg(long, env = "TRAINYARD_BODY_TIMEOUT_SECS", default_value_t = net::DEFAULT_BODY_TIMEOUT_SECS,
        value_parser = super::seconds)]
    pub body_timeout_secs: f64,
    /// Seconds from a request's headers to its response's head, then a 504 (a response's
    /// body, such as the curve stream, is not timed).
    #[arg(long, env = "TRAINYARD_REQUEST_TIMEOUT_SECS", default_value_t = net::DEFAULT_REQUEST_TIMEOUT_SECS,
        value_parser = super::seconds)]
    pub request_timeout_secs: f64,
    /// An origin (`https://app.example`) whose pages may call the API (CORS); repeat the
    /// flag or separate with commas. None: no CORS headers.
    #[arg(
        long = "cors-origin",
        env = "TRAINYARD_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
}

impl ServeArgs {
    /// The HTTP side's configuration, checked.
    pub fn http(&self) -> anyhow::Result<crate::server::HttpConfig> {
        anyhow::ensure!(
            self.auth == AuthMode::On || self.bind.ip().is_loopback(),
            "--auth off lets anyone who reaches the port act as an admin, so it is only \
             allowed with a loopback --bind (127.0.0.1 or ::1), not {}; create a key with \
             `trainyard keys create --account NAME` instead",
            self.bind
        );
        Ok(crate::server::HttpConfig {
            bind: self.bind,
            batching: self.predict.config(),
            max_sse_streams: self.max_sse_streams,
            auth: self.auth,
            rate_limits: RateLimits {
                experiments_per_minute: self.rate_limit_experiments,
                predict_per_second: self.rate_limit_predict,
            },
            admin_key_file: self.admin_key_file.clone(),
            admin_key_hint: self.admin_key_hint.clone(),
            net: self.net()?,
            max_job_flops: self.max_job_flops,
            skip_memory_admission: self.skip_memory_admission,
        })
    }

    fn net(&self) -> anyhow::Result<NetConfig> {
        Ok(NetConfig {
            header_timeout: Duration::from_secs_f64(self.header_timeout_secs),
            body_timeout: Duration::from_secs_f64(self.body_timeout_secs),
            request_timeout: Duration::from_secs_f64(self.request_timeout_secs),
            cors_origins: self
                .cors_origins
                .iter()
                .filter(|o| !o.trim().is_empty())
                .map(|o| net::parse_origin(o))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

impl WorkerArgs {
    fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_secs)
    }

    /// A session idle in a transaction longer than a lease belongs to a frozen process.
    fn idle_in_transaction(&self) -> Duration {
        Duration::from_secs_f64(self.lease_secs)
    }
}

pub fn serve(a: ServeArgs, log_json: bool) -> anyhow::Result<()> {
    let mut cfg = a.worker.config()?;
    cfg.log_json = log_json;
    let http = a.http()?;
    runtime()?.block_on(async {
        let shutdown = crate::server::shutdown_on_signals(a.worker.grace());
        let store = crate::server::connect_and_migrate(
            &a.db.database_url,
            a.db.db_connections,
            a.worker.idle_in_transaction(),
        )
        .await?;
        crate::server::serve(store, http, cfg, shutdown).await
    })
}

pub fn worker(db: DbArgs, w: WorkerArgs, log_json: bool) -> anyhow::Result<()> {
    let mut cfg = w.config()?;
    cfg.log_json = log_json;
    anyhow::ensure!(
        cfg.workers > 0,
        "--workers must be at least 1 for `trainyard worker`"
    );
    runtime()?.block_on(async {
        let shutdown = crate::server::shutdown_on_signals(w.grace());
        let store = crate::server::connect_and_migrate(
            &db.database_url,
            db.db_connections,
            w.idle_in_transaction(),
        )
        .await?;
        crate::server::work(store, cfg, shutdown).await
    })
}

pub fn migrate(db: DbArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        crate::server::connect_and_migrate(
            &db.database_url,
            2,
            crate::store::DEFAULT_IDLE_IN_TRANSACTION,
        )
        .await?;
        println!("migrations applied");
        Ok(())
    })
}
