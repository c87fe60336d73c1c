//! The job queue: claiming, leases with fencing, epoch records, endings, rescue.
//!
//! A claim is one statement (`FOR UPDATE SKIP LOCKED`), so two workers never get the same
//! experiment and neither waits on the other. Holding the claim needs a live lease,
//! renewed by the worker's heartbeat; every later write names `(id, attempt)` and matches
//! only while that attempt still runs. No transaction stays open while a model trains: each
//! write is a short transaction of its own.
//!
//! An epoch arrives as a [`NewEpoch`]: plain figures and the checkpoint's bytes, which the
//! worker made from the engine's record. The store knows nothing of the engine, so a
//! change of the engine's types never reaches the tables.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::experiments::{Status, notify};
use super::{CHANNEL_JOBS, Result, Store, StoreError, events};

/// An experiment a worker now holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: Uuid,
    /// The name of the account it belongs to.
    pub account: String,
    /// The fencing token.
    pub attempt: i32,
    pub spec: serde_json::Value,
    pub epochs_done: i32,
}

/// What the heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub cancel_requested: bool,
}

/// How a run ended, from the worker's side.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Succeeded,
    /// Succeeded before its last epoch: the spec's early stopping ended it.
    EarlyStopped,
    /// Succeeded before its last epoch: its time limit ended it.
    TimeLimit,
    Cancelled,
    Failed(String),
}

/// As logs and people read it: `succeeded`, `cancelled`, `failed: <why>`.
impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Succeeded => f.write_str("succeeded"),
            Ending::EarlyStopped => f.write_str("succeeded (early stopping)"),
            Ending::TimeLimit => f.write_str("succeeded (time limit)"),
            Ending::Cancelled => f.write_str("cancelled"),
            Ending::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Running experiments per account, for the claim's order and the running quota.
const RUNNING: &str = "running AS (
        SELECT account_id, count(*) AS n FROM experiments WHERE status = 'running'
        GROUP BY account_id
    )";

/// The fair choice: the head of each eligible account's queue, by fewest running, then
/// priority, then age.
const FAIR_NEXT: &str = "heads AS (
        SELECT h.id, coalesce(r.n, 0) AS n, h.priority, h.created_at
        FROM accounts a
        LEFT JOIN running r ON r.account_id = a.id
        CROSS JOIN LATERAL (
            SELECT q.id, q.priority, q.created_at FROM experiments q
            WHERE q.account_id = a.id AND q.status = 'queued' AND ($3 OR NOT q.needs_cuda)
            ORDER BY q.priority DESC, q.created_at, q.id LIMIT 1
        ) h
        WHERE a.max_running IS NULL OR coalesce(r.n, 0) < a.max_running
    ),
    next AS (
        SELECT x.id FROM experiments x JOIN heads h ON h.id = x.id
        WHERE x.status = 'queued'
        ORDER BY h.n, h.priority DESC, h.created_at, h.id
        FOR UPDATE OF x SKIP LOCKED LIMIT 1
    )";

/// The fallback when every head is locked: any queued experiment of an account under
/// its running quota, by priority and age.
const ANY_NEXT: &str = "next AS (
        SELECT x.id FROM experiments x
        JOIN accounts a ON a.id = x.account_id
        LEFT JOIN running r ON r.account_id = x.account_id
        WHERE x.status = 'queued' AND ($3 OR NOT x.needs_cuda)
          AND (a.max_running IS NULL OR coalesce(r.n, 0) < a.max_running)
        ORDER BY x.priority DESC, x.created_at, x.id
        FOR UPDATE OF x SKIP LOCKED LIMIT 1
    )";

type Claimed = (Uuid, i32, serde_json::Value, i32, String);

/// `started_at` is `clock_timestamp()`, not `now()`: `now()` is when the claim's
/// transaction began, and the fallback statement (`ANY_NEXT`) can see an experiment
/// whose insert committed after that, so `now()` could put the claim before the
/// experiment's `created_at`. The clock, read as the row is updated, comes after the
/// insert's commit and so after its `created_at`.
async fn claim_next(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    owner: &str,
    lease_secs: f64,
    cuda: bool,
    next: &str,
) -> Result<Option<Claimed>> {
    Ok(sqlx::query_as(&format!(
        "WITH {RUNNING}, {next}
         UPDATE experiments e SET status = 'running', attempt = e.attempt + 1,
            lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2),
            started_at = coalesce(e.started_at, clock_timestamp()), training_started_at = NULL,
            updated_at = now()
         FROM next WHERE e.id = next.id
         RETURNING e.id, e.attempt, e.spec, e.epochs_done,
            (SELECT a.name FROM accounts a WHERE a.id = e.account_id)"
    ))
    .bind(owner)
    .bind(lease_secs)
    .bind(cuda)
    .fetch_optional(&mut **tx)
    .await?)
}

impl Store {
    /// Claims the next queued experiment for `owner`, with a lease of `lease_secs`.
    ///
    /// Accounts take turns: among the accounts under their `max_running` quota, the one
    /// with the fewest running experiments goes first, then the highest priority, then
    /// the oldest. Only the head of each account's queue is considered (one index probe
    /// per account), so a thousand queued experiments of one account cost what one does.
    /// Should every head be locked by concurrent claims, the claim falls back to the
    /// next unlocked experiment of any account under its quota, so no worker idles while
    /// work is queued.
    ///
    /// A worker without CUDA (`cuda` false) passes over experiments whose spec asks for
    /// it (`needs_cuda`): they wait, queued, for one that has it.
    pub async fn claim(&self, owner: &str, lease_secs: f64, cuda: bool) -> Result<Option<Claim>> {
        let mut tx = self.pool.begin().await?;
        let mut row = claim_next(&mut tx, owner, lease_secs, cuda, FAIR_NEXT).await?;
        if row.is_none() {
            row = claim_next(&mut tx, owner, lease_secs, cuda, ANY_NEXT).await?;
        }
        let Some((id, attempt, spec, epochs_done, account)) = row else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO experiment_claims (experiment_id, attempt, owner) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(attempt)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        events::append_status(&mut tx, id, Status::Running, None).await?;
        tx.commit().await?;
        Ok(Some(Claim {
            id,
            account,
            attempt,
            spec,
            epochs_done,
        }))
    }

    /// Running experiments per worker process: the workers name their leases
    /// `<process>/<task>`, and they are counted here by their process part.
    pub async fn running_by_worker(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT regexp_replace(lease_owner, '/[0-9]+$', ''), count(*) FROM experiments
             WHERE status = 'running' AND lease_owner IS NOT NULL GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Extends the lease of `(id, attempt)`; [`StoreError::LeaseLost`] when it is gone.
    pub async fn heartbeat(&self, id: Uuid, attempt: i32, lease_secs: f64) -> Result<Beat> {
        let row: Option<(bool,)> = sqlx::query_as(
            "UPDATE experiments SET lease_expires_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND attempt = $2 AND status = 'running'
             RETURNING cancel_requested",
        )
        .bind(id)
        .bind(attempt)
        .bind(lease_secs)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(c,)| Beat {
            cancel_requested: c,
        })
        .ok_or(StoreError::LeaseLost)
    }

    /// Stores a finished epoch: its metrics, its checkpoint, and the event, atomically.
    /// Keeps the best and the last checkpoints (all with `keep_all`). Best is the lowest
    /// validation loss, else test loss, else training loss.
    ///
    /// The checkpoint goes in first and the metrics row last, so that its `recorded_at`
    /// (the database's clock, also carried by the `epoch` event) is taken after the bulk
    /// of the transaction, a few small statements before the commit.
    pub async fn record_epoch(
        &self,
        id: Uuid,
        attempt: i32,
        epoch: &NewEpoch,
        keep_all: bool,
    ) -> Result<()> {
        let NewEpoch {
            metrics: m,
            weights,
            optimizer,
            best_epoch,
        } = epoch;
        let sha = Sha256::digest(weights).to_vec();
        let mut tx = self.pool.begin().await?;
        let held: Option<(i32,)> = sqlx::query_as(
            "SELECT epochs_done FROM experiments
             WHERE id = $1 AND attempt = $2 AND status = 'running' FOR UPDATE",
        )
        .bind(id)
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((done,)) = held else {
            return Err(StoreError::LeaseLost);
        };
        if done == m.epoch as i32 {
            // A retry after a commit whose answer was lost: already stored.
            return Ok(());
        }
        if done + 1 != m.epoch as i32 {
            return Err(StoreError::Corrupt(format!(
                "epoch {} recorded after epoch {done}",
                m.epoch
            )));
        }
        sqlx::query(
            "INSERT INTO checkpoints (experiment_id, epoch, weights, optimizer, sha256, size_bytes)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(m.epoch as i32)
        .bind(weights)
        .bind(optimizer)
        .bind(sha)
        .bind(weights.len() as i64)
        .execute(&mut *tx)
        .await?;
        // Only the newest checkpoint's optimizer state is ever read (to resume): the
        // older ones keep their weights only (see `housekeeping`).
        sqlx::query(
            "UPDATE checkpoints SET optimizer = ''::bytea
             WHERE experiment_id = $1 AND epoch < $2 AND length(optimizer) > 0",
        )
        .bind(id)
        .bind(m.epoch as i32)
        .execute(&mut *tx)
        .await?;
        let recorded_at = insert_metrics(&mut tx, id, attempt, m).await?;
        let best = *best_epoch as i32;
        sqlx::query(
            "UPDATE experiments SET epochs_done = $2, updated_at = now(), best_epoch = $3
             WHERE id = $1",
        )
        .bind(id)
        .bind(m.epoch as i32)
        .bind(best)
        .execute(&mut *tx)
        .await?;
        if !keep_all {
            sqlx::query(
                "DELETE FROM checkpoints WHERE experiment_id = $1 AND epoch <> $2 AND epoch <> $3",
            )
            .bind(id)
            .bind(m.epoch as i32)
            .bind(best)
            .execute(&mut *tx)
            .await?;
        }
        let stored = StoredEpoch {
            metrics: m.clone(),
            recorded_at,
        };
        events::append_epoch(&mut tx, id, &stored).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Announces progress within an epoch of `(id, attempt)` to the curve followers;
    /// fenced like every other write, so a worker whose lease was taken over does not
    /// show its stale batches. [`StoreError::LeaseLost`] when the attempt no longer runs.
    pub async fn notify_progress(&self, id: Uuid, attempt: i32, payload: &str) -> Result<()> {
        let sent = sqlx::query(
            "SELECT pg_notify($3, $4) FROM experiments
             WHERE id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .bind(super::CHANNEL_PROGRESS)
        .bind(payload)
        .execute(&self.pool)
        .await?;
        if sent.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    /// Records when attempt `attempt`'s first training batch began (the worker's clock).
    pub async fn mark_training_started(
        &self,
        id: Uuid,
        attempt: i32,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE experiments SET training_started_at = $3, updated_at = now()
             WHERE id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .bind(at)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    /// Ends the run of `(id, attempt)`.
    pub async fn finish(&self, id: Uuid, attempt: i32, ending: &Ending) -> Result<()> {
        let (status, error) = match ending {
            Ending::Succeeded | Ending::EarlyStopped | Ending::TimeLimit => {
                (Status::Succeeded, None)
            }
            Ending::Cancelled => (Status::Cancelled, None),
            Ending::Failed(e) => (Status::Failed, Some(e.as_str())),
        };
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE experiments SET status = $3, error = $4, stop_reason = $5, lease_owner = NULL,
                lease_expires_at = NULL, finished_at = now(), updated_at = now()
             WHERE id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .bind(status.as_str())
        .bind(error)
        .bind(match ending {
            Ending::EarlyStopped => Some("early_stopping"),
            Ending::TimeLimit => Some("time_limit"),
            _ => None,
        })
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::LeaseLost);
        }
        release_claim(&mut tx, id, attempt, status.as_str()).await?;
        events::append_status(&mut tx, id, status, error).await?;
        // The account may have been at its running quota: its next experiment may go.
        notify(&mut tx, CHANNEL_JOBS, &id.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives a running experiment back to the queue without counting it as a rescue
    /// (graceful shutdown of a worker); one whose cancel was requested ends `cancelled`.
    pub async fn hand_back(&self, id: Uuid, attempt: i32) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String,)> = sqlx::query_as(
            "UPDATE experiments SET
                status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
                finished_at = CASE WHEN cancel_requested THEN now() END,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1 AND attempt = $2 AND status = 'running'
             RETURNING status",
        )
        .bind(id)
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status,)) = row else {
            return Err(StoreError::LeaseLost);
        };
        release_claim(&mut tx, id, attempt, "handed_back").await?;
        requeued_or_ended(&mut tx, id, &status, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Requeues experiments whose lease expired (their worker died or stalled); fails them
    /// once they have been rescued `max_rescues` times, and ends them `cancelled` when a
    /// cancel was requested meanwhile. Returns how many it touched.
    pub async fn rescue_expired(&self) -> Result<u64> {
        self.rescue(
            "SELECT id FROM experiments WHERE status = 'running' AND lease_expires_at < now()
             FOR UPDATE SKIP LOCKED",
            None,
        )
        .await
    }

    /// Rescues one attempt now, as the lease rescue would once its lease expired: its
    /// worker saw its job process die of something that was not the job's doing.
    pub async fn release_lost(&self, id: Uuid, attempt: i32) -> Result<()> {
        let n = self
            .rescue(
                "SELECT id FROM experiments WHERE id = $1 AND attempt = $2
                 AND status = 'running' FOR UPDATE",
                Some((id, attempt)),
            )
            .await?;
        if n == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    /// Rescues the experiments `which` selects (bound to `one` when given).
    async fn rescue(&self, which: &str, one: Option<(Uuid, i32)>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "UPDATE experiments SET
                rescues = rescues + 1,
                status = CASE WHEN cancel_requested THEN 'cancelled'
                              WHEN rescues + 1 > max_rescues THEN 'failed'
                              ELSE 'queued' END,
                error = CASE WHEN NOT cancel_requested AND rescues + 1 > max_rescues
                        THEN 'the worker was lost ' || (rescues + 1) || ' times' END,
                finished_at = CASE WHEN cancel_requested OR rescues + 1 > max_rescues
                              THEN now() END,
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id IN ({which})
             RETURNING id, status, attempt"
        );
        let mut q = sqlx::query_as::<_, (Uuid, String, i32)>(&sql);
        if let Some((id, attempt)) = one {
            q = q.bind(id).bind(attempt);
        }
        let rows = q.fetch_all(&mut *tx).await?;
        for (id, status, attempt) in &rows {
            release_claim(&mut tx, *id, *attempt, "rescued").await?;
            requeued_or_ended(
                &mut tx,
                *id,
                status,
                Some("the worker was lost too many times"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// The per-epoch metrics of an experiment, in order.
    pub async fn metrics(&self, id: Uuid) -> Result<Vec<EpochRecord>> {
        Ok(self
            .stored_epochs(id)
            .await?
            .into_iter()
            .map(|e| e.metrics)
            .collect())
    }

    /// The per-epoch metrics of an experiment with when each was stored, in order.
    pub async fn stored_epochs(&self, id: Uuid) -> Result<Vec<StoredEpoch>> {
        let rows: Vec<MetricsRow> = sqlx::query_as(
            "SELECT epoch, train_loss, train_accuracy, val_loss, val_accuracy, test_loss,
                    test_accuracy, train_seconds, images_per_second, learning_rate, recorded_at
             FROM epoch_metrics WHERE experiment_id = $1 ORDER BY epoch",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

// The columns of `epoch_metrics`. The worker converts the engine's record of an epoch
// into this, so that the store needs nothing of the engine; the API document keeps
// calling it `EpochMetrics` (and the doc comment below is its description there).
/// One epoch's figures. A metric that does not apply (no validation split) is `None`
/// (`null` in JSON). Losses are means over samples; accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = EpochMetrics)]
pub struct EpochRecord {
    pub epoch: u32,
    /// Mean training loss over the epoch's batches, weighted by batch size (as Keras and
    /// the PyTorch reference report it: measured while the weights change).
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// Wall time of the epoch's training steps (evaluation excluded).
    pub train_seconds: f64,
    pub images_per_second: f64,
    /// The learning rate the epoch trained with (`null` for epochs stored before rates
    /// were recorded).
    pub learning_rate: Option<f64>,
}

/// A finished epoch to store: its figures and its checkpoint, already serialised.
#[derive(Debug, Clone)]
pub struct NewEpoch {
    pub metrics: EpochRecord,
    /// The model's weights (safetensors).
    pub weights: Vec<u8>,
    /// The optimizer's state (safetensors), read only to resume.
    pub optimizer: Vec<u8>,
    /// The epoch `best` names after this one (the engine decides: see
    /// `engine::schedule::best_epoch`).
    pub best_epoch: u32,
}

/// A stored epoch: its metrics and when they were recorded. The `epoch` events of the
/// curve and the rows of `/metrics` carry exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StoredEpoch {
    #[serde(flatten)]
    pub metrics: EpochRecord,
    /// When the epoch was stored (the database's clock), moments before its transaction
    /// committed and the `epoch` event went out.
    pub recorded_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct MetricsRow {
    epoch: i32,
    train_loss: f64,
    train_accuracy: f64,
    val_loss: Option<f64>,
    val_accuracy: Option<f64>,
    test_loss: Option<f64>,
    test_accuracy: Option<f64>,
    train_seconds: f64,
    images_per_second: f64,
    learning_rate: Option<f64>,
    recorded_at: DateTime<Utc>,
}

impl From<MetricsRow> for StoredEpoch {
    fn from(r: MetricsRow) -> Self {
        let metrics = EpochRecord {
            epoch: r.epoch as u32,
            train_loss: r.train_loss,
            train_accuracy: r.train_accuracy,
            val_loss: r.val_loss,
            val_accuracy: r.val_accuracy,
            test_loss: r.test_loss,
            test_accuracy: r.test_accuracy,
            train_seconds: r.train_seconds,
            images_per_second: r.images_per_second,
            learning_rate: r.learning_rate,
        };
        StoredEpoch {
            metrics,
            recorded_at: r.recorded_at,
        }
    }
}

/// The event (and, for a requeued experiment, the job NOTIFY) of a lease given up.
async fn requeued_or_ended(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    status: &str,
    failure: Option<&str>,
) -> Result<()> {
    let status = Status::parse(status).unwrap_or(Status::Failed);
    let error = if status == Status::Failed {
        failure
    } else {
        None
    };
    events::append_status(tx, id, status, error).await?;
    if status == Status::Queued {
        notify(tx, CHANNEL_JOBS, &id.to_string()).await?;
    }
    Ok(())
}

/// Closes attempt `attempt`'s row of the lease history (see the `experiment_claims`
/// migration): `how` is the ending, `handed_back` or `rescued`.
async fn release_claim(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    attempt: i32,
    how: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE experiment_claims SET released_at = clock_timestamp(), released_as = $3
         WHERE experiment_id = $1 AND attempt = $2 AND released_at IS NULL",
    )
    .bind(id)
    .bind(attempt)
    .bind(how)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts an epoch's metrics row, naming the attempt that wrote it; returns its
/// `recorded_at`.
async fn insert_metrics(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    attempt: i32,
    m: &EpochRecord,
) -> Result<DateTime<Utc>> {
    let (at,): (DateTime<Utc>,) = sqlx::query_as(
        "INSERT INTO epoch_metrics (experiment_id, epoch, train_loss, train_accuracy, val_loss,
            val_accuracy, test_loss, test_accuracy, train_seconds, images_per_second,
            learning_rate, recorded_at, attempt)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, clock_timestamp(), $12)
         RETURNING recorded_at",
    )
    .bind(id)
    .bind(m.epoch as i32)
    .bind(m.train_loss)
    .bind(m.train_accuracy)
    .bind(m.val_loss)
    .bind(m.val_accuracy)
    .bind(m.test_loss)
    .bind(m.test_accuracy)
    .bind(m.train_seconds)
    .bind(m.images_per_second)
    .bind(m.learning_rate)
    .bind(attempt)
    .fetch_one(&mut **tx)
    .await?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::Ending;

    #[test]
    fn an_ending_reads_as_words_not_debug() {
        assert_eq!(Ending::Succeeded.to_string(), "succeeded");
        assert_eq!(Ending::Cancelled.to_string(), "cancelled");
        assert_eq!(
            Ending::Failed("out of memory".into()).to_string(),
            "failed: out of memory"
        );
    }
}
