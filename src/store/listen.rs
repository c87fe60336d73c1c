//! One `LISTEN` connection per process, fanned out to whoever waits in it.
//!
//! Workers wait for new jobs and cancel requests; SSE streams wait for their experiment's
//! events and progress. A single connection serves them all. When the connection drops
//! (PostgreSQL restarted, the network failed), it is re-opened with backoff and
//! re-subscribed; since notifications may have been missed meanwhile, subscribers then
//! get a [`Signal::Resync`] and re-read what they need from the tables, which remain the
//! source of truth.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use super::{CHANNEL_CANCEL, CHANNEL_EVENTS, CHANNEL_JOBS, CHANNEL_KEYS, CHANNEL_PROGRESS};

/// A notification, parsed.
#[derive(Debug, Clone)]
pub enum Signal {
    /// A durable event was appended to an experiment's log.
    Event { experiment: Uuid, id: i64 },
    /// Progress within an epoch (the JSON sent to SSE clients).
    Progress {
        experiment: Uuid,
        data: Arc<serde_json::Value>,
    },
    /// A running experiment was asked to stop.
    Cancel(Uuid),
    /// A key was revoked.
    KeyRevoked(Uuid),
    /// Notifications may have been lost: re-read state from the database.
    Resync,
}

/// The fan-out side of the process's listener.
#[derive(Clone)]
pub struct Hub {
    jobs: Arc<Notify>,
    signals: broadcast::Sender<Signal>,
}

impl Hub {
    /// Connects a listener and spawns the task that feeds the hub.
    pub async fn start(pool: &PgPool) -> Result<Hub, sqlx::Error> {
        let listener = subscribe(pool).await?;
        let (signals, _) = broadcast::channel(4096);
        let hub = Hub {
            jobs: Arc::new(Notify::new()),
            signals,
        };
        let h = hub.clone();
        let pool = pool.clone();
        tokio::spawn(async move { h.pump(pool, listener).await });
        Ok(hub)
    }

    /// Feeds the hub forever. When the connection fails, a fresh one is opened with
    /// backoff (100 ms doubling to 5 s) and subscribed to every channel, and only then
    /// do subscribers get [`Signal::Resync`]: a re-read made earlier could miss what was
    /// announced before the new subscription was live.
    async fn pump(self, pool: PgPool, mut listener: PgListener) {
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => self.dispatch(n.channel(), n.payload()),
                // The connection was lost and sqlx re-established it, LISTENs included.
                Ok(None) => {
                    tracing::info!("LISTEN connection re-established");
                    self.resync();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                    drop(listener);
                    let mut backoff = Duration::from_millis(100);
                    listener = loop {
                        tokio::time::sleep(backoff).await;
                        match subscribe(&pool).await {
                            Ok(l) => break l,
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN reconnect failed; retrying");
                                backoff = (backoff * 2).min(Duration::from_secs(5));
                            }
                        }
                    };
                    tracing::info!("LISTEN connection re-established");
                    self.resync();
                }
            }
        }
    }

    fn resync(&self) {
        self.jobs.notify_waiters();
        let _ = self.signals.send(Signal::Resync);
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        let signal = match channel {
            CHANNEL_JOBS => {
                self.jobs.notify_waiters();
                return;
            }
            CHANNEL_CANCEL => payload.parse().ok().map(Signal::Cancel),
            CHANNEL_KEYS => payload.parse().ok().map(Signal::KeyRevoked),
            CHANNEL_EVENTS => serde_json::from_str::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| {
                    Some(Signal::Event {
                        experiment: v["experiment_id"].as_str()?.parse().ok()?,
                        id: v["id"].as_i64()?,
                    })
                }),
            CHANNEL_PROGRESS => serde_json::from_str::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| {
                    Some(Signal::Progress {
                        experiment: v["experiment_id"].as_str()?.parse().ok()?,
                        data: Arc::new(v),
                    })
                }),
            _ => None,
        };
        if let Some(s) = signal {
            let _ = self.signals.send(s);
        }
    }

    /// Resolves when a job may be available (a NOTIFY or a reconnect).
    pub fn jobs(&self) -> &Notify {
        &self.jobs
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }
}

/// A listener connection subscribed to every channel.
async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([
            CHANNEL_JOBS,
            CHANNEL_EVENTS,
            CHANNEL_PROGRESS,
            CHANNEL_CANCEL,
            CHANNEL_KEYS,
        ])
        .await?;
    Ok(listener)
}
