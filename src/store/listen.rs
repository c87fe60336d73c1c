//! One `LISTEN` connection per process, fanned out to whoever waits in it.
//!
//! Workers wait for new jobs and cancel requests; SSE streams wait for their experiment's
//! events and progress. A single connection serves them all. When the connection drops,
//! sqlx reconnects and re-subscribes; since notifications may have been missed meanwhile,
//! subscribers get a [`Signal::Resync`] and re-read what they need from the tables, which
//! remain the source of truth.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use super::{CHANNEL_CANCEL, CHANNEL_EVENTS, CHANNEL_JOBS, CHANNEL_PROGRESS};

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
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([
                CHANNEL_JOBS,
                CHANNEL_EVENTS,
                CHANNEL_PROGRESS,
                CHANNEL_CANCEL,
            ])
            .await?;
        let (signals, _) = broadcast::channel(4096);
        let hub = Hub {
            jobs: Arc::new(Notify::new()),
            signals,
        };
        let h = hub.clone();
        tokio::spawn(async move { h.pump(listener).await });
        Ok(hub)
    }

    async fn pump(self, mut listener: PgListener) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    backoff = Duration::from_millis(100);
                    self.dispatch(n.channel(), n.payload());
                }
                // The connection was lost and has been re-established.
                Ok(None) => self.resync(),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                    self.resync();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
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
