//! `trainyard serve` and `trainyard worker`: the long-running processes.
//!
//! Shutdown is cooperative. SIGINT or SIGTERM flips one watch channel: the HTTP server
//! stops accepting and drains requests, SSE streams end, and workers stop claiming and
//! hand their running experiment back at the next batch boundary. Then the process exits.
//! It is also bounded: whatever still runs a grace period after the signal (a batch that
//! never ends, a database that never answers) is abandoned and the process exits 1; the
//! abandoned experiment's lease then expires and another worker rescues it. A second
//! signal exits at once the same way.
//!
//! Neither process needs PostgreSQL to stay up: pooled connections are checked before
//! use and re-opened (retrying while the server refuses connections), the `LISTEN`
//! connection re-subscribes with backoff (see [`crate::store::listen`]), and workers
//! retry their writes while their lease can still hold.

pub mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use tokio::sync::watch;

use crate::api::auth::{AuthMode, RateLimits};
use crate::api::net::NetConfig;
use crate::api::predict::BatchConfig;
use crate::api::{self, AppState};
use crate::data::mnist::Source;
use crate::spec::footprint::JobLimits;
use crate::store::Store;
use crate::store::listen::Hub;
use crate::worker::{self, WorkerConfig};

/// Connects, creating the database if it does not exist, and applies the migrations.
/// Sessions idle in a transaction for `idle_in_transaction` are ended by the server
/// (see [`Store::connect_with`]).
pub async fn connect_and_migrate(
    url: &str,
    max_connections: u32,
    idle_in_transaction: Duration,
) -> anyhow::Result<Store> {
    if !sqlx::Postgres::database_exists(url).await.unwrap_or(true) {
        tracing::info!("creating the database");
        sqlx::Postgres::create_database(url).await?;
    }
    let store = Store::connect_with(url, max_connections, idle_in_transaction).await?;
    store.migrate().await?;
    Ok(store)
}

/// A channel that turns true on SIGINT or SIGTERM. The process exits with status 1 if it
/// is still running `grace` after that signal, or at once on a second signal.
pub fn shutdown_on_signals(grace: Duration) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    // Installed now, before connecting: a signal during start-up is a shutdown too.
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(not(unix))]
    let mut term = None::<()>;
    tokio::spawn(async move {
        next_signal(&mut term).await;
        tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down");
        let _ = tx.send(true);
        tokio::select! {
            _ = tokio::time::sleep(grace) => {
                tracing::error!(grace_secs = grace.as_secs_f64(),
                    "still running after the shutdown grace period; exiting");
            }
            _ = next_signal(&mut term) => tracing::warn!("second signal; exiting now"),
        }
        std::process::exit(1);
    });
    rx
}

#[cfg(unix)]
async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    let term = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(not(unix))]
async fn next_signal(_: &mut Option<()>) {
    let _ = tokio::signal::ctrl_c().await;
}

/// How the HTTP side of `serve` runs.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub bind: SocketAddr,
    pub batching: BatchConfig,
    pub max_sse_streams: usize,
    pub auth: AuthMode,
    pub rate_limits: RateLimits,
    /// Where the first start writes the admin key it makes (besides printing it).
    pub admin_key_file: Option<PathBuf>,
    /// How to read that file from outside, said at every start.
    pub admin_key_hint: Option<String>,
    /// Time limits and CORS origins.
    pub net: NetConfig,
    /// The most training FLOPs one experiment may ask for.
    pub max_job_flops: f64,
    /// Test only: no memory check at submission.
    pub skip_memory_admission: bool,
}

/// On a first start with keys required and no admin key: makes one for the `admin`
/// account and writes it to `file` when given (readable by the owner only). The key is
/// returned for [`announce_admin_key`] to print, once the server is up.
pub async fn first_admin_key(
    store: &Store,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<String>> {
    let Some(key) = store.first_admin_key("admin").await? else {
        return Ok(None);
    };
    tracing::warn!(
        key = %key.info.id,
        "no admin key existed: made one for account `admin`"
    );
    // The key exists only hashed in the database from here on: a file that cannot be
    // written must not lose it, so the start goes on and prints it as usual.
    if let Some(f) = file
        && let Err(e) = write_secret(f, &key.key)
    {
        tracing::error!(error = %e, "the admin key is printed below only");
    }
    Ok(Some(key.key))
}

/// What a start says about the admin key, just before it serves: the first start prints
/// its new key as the only line on stdout (the logs go to stderr); every start says where
/// that key is kept and, given `hint` (compose's `docker compose exec` command), how to
/// read it from outside. Said last but for the `serving` line, so that it stays on the
/// screen of `docker compose logs`.
pub fn announce_admin_key(
    new_key: Option<&str>,
    file: Option<&std::path::Path>,
    hint: Option<&str>,
) {
    let hint = hint
        .map(|h| format!("; read it with: {h}"))
        .unwrap_or_default();
    if let Some(key) = new_key {
        tracing::warn!(
            "the admin key of account `admin` is the line printed next, once{}",
            file.map(|f| format!("; it is kept in {}{hint}", f.display()))
                .unwrap_or_default()
        );
        println!("{key}");
        return;
    }
    match file {
        Some(f) if f.exists() => tracing::info!(
            "the admin key made at the first start is kept in {}{hint} (sign in with it at \
             /ui/sign-in, or make keys with `trainyard keys create`)",
            f.display()
        ),
        Some(f) => tracing::info!(
            "no admin key file at {}: the first admin key was made before it was configured; \
             make another with `trainyard keys create --account admin --admin`",
            f.display()
        ),
        None => {}
    }
}

fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("--admin-key-file {}: {e}", path.display()))?;
    writeln!(f, "{secret}")?;
    Ok(())
}

/// API and workers in one process until `shutdown`.
pub async fn serve(
    store: Store,
    http: HttpConfig,
    workers: WorkerConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let new_key = match http.auth {
        AuthMode::On => first_admin_key(&store, http.admin_key_file.as_deref()).await?,
        AuthMode::Off => None,
    };
    let hub = Hub::start(store.pool()).await?;
    let listener = tokio::net::TcpListener::bind(http.bind).await?;
    if http.auth == AuthMode::On {
        announce_admin_key(
            new_key.as_deref(),
            http.admin_key_file.as_deref(),
            http.admin_key_hint.as_deref(),
        );
    }
    tracing::info!(
        address = %listener.local_addr()?,
        workers = workers.workers,
        auth = ?http.auth,
        predict_batch_window_us = http.batching.window.as_micros() as u64,
        predict_max_batch = http.batching.max_batch,
        header_timeout_secs = http.net.header_timeout.as_secs_f64(),
        body_timeout_secs = http.net.body_timeout.as_secs_f64(),
        request_timeout_secs = http.net.request_timeout.as_secs_f64(),
        cors_origins = ?http.net.cors_origins,
        "serving"
    );
    let state = AppState::new(store.clone(), hub.clone(), shutdown.clone())
        .with_predict_batching(http.batching)
        .with_max_sse_streams(http.max_sse_streams)
        .with_auth(http.auth, http.rate_limits)
        .with_net(http.net.clone())
        .with_builtin_data(Source {
            data_dir: workers.data_dir.clone(),
            mirrors: Vec::new(),
            download: workers.download,
        })
        .with_job_limits(JobLimits {
            memory_bytes: (!http.skip_memory_admission).then_some(workers.job_memory_bytes),
            max_flops: Some(http.max_job_flops),
            max_time_limit_secs: workers.max_time_limit_secs,
        });
    let app = api::app(state);
    let worker_task = (workers.workers > 0)
        .then(|| tokio::spawn(worker::run(store, hub, workers, shutdown.clone())));
    self::http::serve(listener, app, http.net.header_timeout, shutdown).await;
    if let Some(t) = worker_task {
        t.await??;
    }
    Ok(())
}

/// Workers only, until `shutdown`.
pub async fn work(
    store: Store,
    cfg: WorkerConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let hub = Hub::start(store.pool()).await?;
    tracing::info!(workers = cfg.workers, name = %cfg.name, "working");
    worker::run(store, hub, cfg, shutdown).await
}
