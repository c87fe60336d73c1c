//! PostgreSQL storage: experiments, per-epoch metrics, checkpoints and the event log.
//!
//! The database is the single source of truth shared by every API and worker process.
//! Writes by workers are fenced: each names the `attempt` it was granted when it claimed
//! the experiment, and a statement whose `WHERE` no longer matches (the lease was rescued
//! and re-claimed, or the experiment was cancelled) changes nothing and reports
//! [`StoreError::LeaseLost`].
//!
//! The state machine of an experiment (CHECK constraints enforce the states; every
//! transition is an `UPDATE ... WHERE status = <from>`):
//!
//! ```text
//!   queued --claim--> running --all epochs--> succeeded
//!     |                 |  |----error-------> failed
//!     |                 |  |----cancel------> cancelled
//!     |                 |  |----lease expired, rescues > max--> failed
//!     |                 |  '----lease expired or shutdown, cancel requested--> cancelled
//!     |                 '--lease expired (rescue) or shutdown (hand back)--> queued
//!     '--cancel--> cancelled
//! ```
//!
//! Every durable event (a status change, a finished epoch) is a row of
//! `experiment_events`, written in the same transaction as the change it describes, then
//! announced with `NOTIFY` so that every API process can push it to its SSE followers.

pub mod checkpoints;
pub mod events;
pub mod experiments;
pub mod housekeeping;
pub mod listen;
pub mod queue;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub use experiments::{Experiment, NewExperiment, Status};

/// Channel announcing a new queued experiment (payload: its id).
pub const CHANNEL_JOBS: &str = "trainyard_jobs";
/// Channel announcing a durable event (payload: `{"experiment_id", "id"}`).
pub const CHANNEL_EVENTS: &str = "trainyard_events";
/// Channel carrying progress within an epoch (payload: a progress JSON object).
pub const CHANNEL_PROGRESS: &str = "trainyard_progress";
/// Channel announcing a cancel request for a running experiment (payload: its id).
pub const CHANNEL_CANCEL: &str = "trainyard_cancel";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("not found")]
    NotFound,
    /// The writer's lease is gone: another attempt owns the experiment, or it ended.
    #[error("the lease on this experiment was lost")]
    LeaseLost,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    #[error("invalid stored data: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the database, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects with a bounded pool.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Store { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/` (embedded at build time).
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
