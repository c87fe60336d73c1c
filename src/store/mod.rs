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

pub mod accounts;
pub mod checkpoints;
pub mod datasets;
pub mod events;
pub mod experiments;
pub mod housekeeping;
pub mod listen;
pub mod queue;
pub mod sweeps;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use accounts::{Principal, Scope};
pub use experiments::{Experiment, Filter, Labels, LabelsPatch, NewExperiment, Status};

/// Channel announcing a new queued experiment (payload: its id).
pub const CHANNEL_JOBS: &str = "trainyard_jobs";
/// Channel announcing a durable event (payload: `{"experiment_id", "id"}`).
pub const CHANNEL_EVENTS: &str = "trainyard_events";
/// Channel carrying progress within an epoch (payload: a progress JSON object).
pub const CHANNEL_PROGRESS: &str = "trainyard_progress";
/// Channel announcing a cancel request for a running experiment (payload: its id).
pub const CHANNEL_CANCEL: &str = "trainyard_cancel";
/// Channel announcing a revoked key (payload: its id): every process forgets the keys it
/// had checked.
pub const CHANNEL_KEYS: &str = "trainyard_keys";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("not found")]
    NotFound,
    /// Something other than an experiment (a key, an account) does not exist.
    #[error("{0} not found")]
    NotFoundThing(&'static str),
    /// A value the database would refuse, named by its field.
    #[error("{0}: {1}")]
    Invalid(&'static str, &'static str),
    /// A submission beyond one of its account's quotas.
    #[error("{0}")]
    Quota(QuotaExceeded),
    /// Some of the experiments asked for together do not exist.
    #[error("unknown experiments: {}", .0.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", "))]
    NotFoundIds(Vec<uuid::Uuid>),
    /// Queued or running experiments train on the dataset (the first few, by id).
    #[error("queued or running experiments use this dataset: {}", .0.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", "))]
    DatasetInUse(Vec<uuid::Uuid>),
    /// The experiment is still queued or running.
    #[error("the experiment is {}: cancel it first", .0.as_str())]
    NotEnded(Status),
    /// The writer's lease is gone: another attempt owns the experiment, or it ended.
    #[error("the lease on this experiment was lost")]
    LeaseLost,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    #[error("invalid stored data: {0}")]
    Corrupt(String),
}

/// Which quota a submission would exceed, and when it may fit.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaExceeded {
    /// The quota's name (`max_queued`, `max_flops_per_day`).
    pub quota: &'static str,
    pub detail: String,
    /// Seconds until the submission may fit, when that is known.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Whether retrying may succeed: the connection broke or could not be made (the
    /// server restarts, fails over, or is overloaded), or a transaction lost a
    /// serialization race. Errors of the data or of the lease are not transient.
    pub fn is_transient(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                // 08: connection exception; 57P01-03: admin or crash shutdown, cannot
                // connect now; 53: insufficient resources; 40001/40P01: serialization
                // failure, deadlock.
                c.starts_with("08")
                    || c.starts_with("57P")
                    || c.starts_with("53")
                    || c == "40001"
                    || c == "40P01"
            }),
            _ => false,
        }
    }
}

/// How long a session may sit idle inside a transaction before PostgreSQL ends it. Every
/// transaction here is a few statements sent back to back, so only a process that was
/// frozen (SIGSTOP, a VM paused, swapped out) stays idle in one, and it must not keep
/// the experiment's row locked past its lease: the rescue skips locked rows.
pub const DEFAULT_IDLE_IN_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(10);

/// A handle on the database, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects with a bounded pool whose sessions are ended by the server when idle in
    /// a transaction for longer than `idle_in_transaction` (a worker passes its lease).
    ///
    /// Connections are checked before use, so after the server restarts each broken one
    /// is replaced on its next use; opening one retries while the server refuses
    /// connections or is starting up, for up to the acquire timeout.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        idle_in_transaction: std::time::Duration,
    ) -> Result<Self> {
        let ms = idle_in_transaction.as_millis().max(1000).to_string();
        // client_min_messages: the server's NOTICEs (`relation "_sqlx_migrations" already
        // exists, skipping` at every start) are not news; warnings still come through.
        let options = url.parse::<PgConnectOptions>()?.options([
            ("idle_in_transaction_session_timeout", ms.as_str()),
            ("client_min_messages", "warning"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .test_before_acquire(true)
            .connect_with(options)
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
