//! Experiments: submit (idempotently), read, list, cancel.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::{CHANNEL_CANCEL, CHANNEL_JOBS, Result, Store, StoreError, events};

/// Where an experiment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// An experiment as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Experiment {
    pub id: Uuid,
    pub status: Status,
    /// The resolved spec (presets expanded).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub priority: i32,
    /// Claims so far (the fencing token of the current run).
    pub attempt: i32,
    /// Times a worker's lease expired and the experiment was handed to another.
    pub rescues: i32,
    pub epochs_done: i32,
    pub best_epoch: Option<i32>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When a worker first claimed it.
    pub started_at: Option<DateTime<Utc>>,
    /// When its current (or last) attempt's first training batch began: after the claim,
    /// the data preparation and the model's construction. `training_started_at -
    /// created_at` is the time it spent waiting in the queue and being set up.
    pub training_started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct Row {
    id: Uuid,
    status: String,
    spec: serde_json::Value,
    priority: i32,
    attempt: i32,
    rescues: i32,
    epochs_done: i32,
    best_epoch: Option<i32>,
    cancel_requested: bool,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    training_started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

pub(crate) const COLUMNS: &str = "id, status, spec, priority, attempt, rescues, epochs_done, \
    best_epoch, cancel_requested, error, created_at, updated_at, started_at, training_started_at, \
    finished_at";

impl TryFrom<Row> for Experiment {
    type Error = StoreError;
    fn try_from(r: Row) -> Result<Self> {
        Ok(Experiment {
            id: r.id,
            status: Status::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown status {}", r.status)))?,
            spec: r.spec,
            priority: r.priority,
            attempt: r.attempt,
            rescues: r.rescues,
            epochs_done: r.epochs_done,
            best_epoch: r.best_epoch,
            cancel_requested: r.cancel_requested,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            training_started_at: r.training_started_at,
            finished_at: r.finished_at,
        })
    }
}

/// What a client submits, once validated.
#[derive(Debug, Clone)]
pub struct NewExperiment {
    pub spec: serde_json::Value,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request body: a key reused with another body is refused.
    pub request_hash: Vec<u8>,
}

/// A page of experiments, newest first.
pub struct Page {
    pub items: Vec<Experiment>,
    /// Pass back as `cursor` for the next page; `None` on the last page.
    pub next: Option<(DateTime<Utc>, Uuid)>,
}

impl Store {
    /// Queues an experiment. With an idempotency key already used for the same request,
    /// returns the experiment created then and `false`.
    pub async fn create_experiment(&self, new: NewExperiment) -> Result<(Experiment, bool)> {
        let mut tx = self.pool.begin().await?;
        let row: Option<Row> = sqlx::query_as(&format!(
            "INSERT INTO experiments (id, spec, priority, idempotency_key, request_hash)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(&new.spec)
        .bind(new.priority)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            let (id, hash): (Uuid, Option<Vec<u8>>) = sqlx::query_as(
                "SELECT id, request_hash FROM experiments WHERE idempotency_key = $1",
            )
            .bind(&new.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
            if hash.as_deref() != Some(&new.request_hash[..]) {
                return Err(StoreError::IdempotencyConflict);
            }
            return Ok((self.experiment(id).await?, false));
        };
        let exp = Experiment::try_from(row)?;
        events::append_status(&mut tx, exp.id, Status::Queued, None).await?;
        notify(&mut tx, CHANNEL_JOBS, &exp.id.to_string()).await?;
        tx.commit().await?;
        Ok((exp, true))
    }

    pub async fn experiment(&self, id: Uuid) -> Result<Experiment> {
        let row: Option<Row> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM experiments WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// Newest first, optionally of one status, after a cursor (keyset pagination).
    pub async fn list_experiments(
        &self,
        status: Option<Status>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Page> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM experiments
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC
             LIMIT $4"
        ))
        .bind(status.map(Status::as_str))
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .into_iter()
            .map(Experiment::try_from)
            .collect::<Result<Vec<_>>>()?;
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|e| (e.created_at, e.id))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Cancels a queued experiment at once; asks a running one to stop (its worker ends it
    /// `cancelled` at the next batch boundary). Finished experiments are returned as they are.
    pub async fn cancel_experiment(&self, id: Uuid) -> Result<Experiment> {
        let mut tx = self.pool.begin().await?;
        let status: Option<(String,)> =
            sqlx::query_as("SELECT status FROM experiments WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let status = status.ok_or(StoreError::NotFound)?.0;
        match Status::parse(&status) {
            Some(Status::Queued) => {
                sqlx::query(
                    "UPDATE experiments SET status = 'cancelled', finished_at = now(),
                     updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                events::append_status(&mut tx, id, Status::Cancelled, None).await?;
            }
            Some(Status::Running) => {
                sqlx::query(
                    "UPDATE experiments SET cancel_requested = true, updated_at = now()
                     WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                notify(&mut tx, CHANNEL_CANCEL, &id.to_string()).await?;
            }
            _ => {}
        }
        tx.commit().await?;
        self.experiment(id).await
    }

    /// Per status: how many experiments, and when the oldest of them was created.
    pub async fn status_counts(&self) -> Result<Vec<(String, i64, DateTime<Utc>)>> {
        Ok(sqlx::query_as(
            "SELECT status, count(*), min(created_at) FROM experiments GROUP BY status ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// `pg_notify` inside a transaction: delivered only if it commits.
pub(crate) async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    channel: &str,
    payload: &str,
) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
