//! `trainyard serve` and `trainyard worker`: the long-running processes.
//!
//! Shutdown is cooperative. SIGINT or SIGTERM flips one watch channel: the HTTP server
//! stops accepting and drains requests, SSE streams end, and workers stop claiming and
//! hand their running experiment back at the next batch boundary. Then the process exits.

use std::net::SocketAddr;

use sqlx::migrate::MigrateDatabase;
use tokio::sync::watch;

use crate::api::predict::BatchConfig;
use crate::api::{self, AppState};
use crate::store::Store;
use crate::store::listen::Hub;
use crate::worker::{self, WorkerConfig};

/// Connects, creating the database if it does not exist, and applies the migrations.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> anyhow::Result<Store> {
    if !sqlx::Postgres::database_exists(url).await.unwrap_or(true) {
        tracing::info!("creating the database");
        sqlx::Postgres::create_database(url).await?;
    }
    let store = Store::connect(url, max_connections).await?;
    store.migrate().await?;
    Ok(store)
}

/// A channel that turns true on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

/// API and workers in one process until `shutdown`.
pub async fn serve(
    store: Store,
    bind: SocketAddr,
    workers: WorkerConfig,
    batching: BatchConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let hub = Hub::start(store.pool()).await?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(
        address = %listener.local_addr()?,
        workers = workers.workers,
        predict_batch_window_us = batching.window.as_micros() as u64,
        predict_max_batch = batching.max_batch,
        "serving"
    );
    let state =
        AppState::new(store.clone(), hub.clone(), shutdown.clone()).with_predict_batching(batching);
    let app = api::app(state);
    let worker_task = (workers.workers > 0)
        .then(|| tokio::spawn(worker::run(store, hub, workers, shutdown.clone())));
    let mut stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::worker::stopped(&mut stop).await;
        })
        .await?;
    if let Some(t) = worker_task {
        t.await?;
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
    worker::run(store, hub, cfg, shutdown).await;
    Ok(())
}
