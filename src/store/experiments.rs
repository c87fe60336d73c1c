//! Experiments: submit (idempotently), read, list, cancel.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::accounts::Scope;
use super::{CHANNEL_CANCEL, CHANNEL_JOBS, QuotaExceeded, Result, Store, StoreError, events};

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
    /// The account it belongs to.
    #[serde(skip)]
    pub account_id: Uuid,
    /// The name of the account it belongs to.
    pub account: String,
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
    /// Why it ended before its last epoch: `early_stopping` (the spec's
    /// `early_stopping`) or `time_limit` (the spec's `time_limit`, or the server's
    /// longest); `null` otherwise.
    pub stop_reason: Option<String>,
    /// The epoch early stopping ended it at.
    pub stopped_epoch: Option<i32>,
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
    /// What people call it (at most 200 characters); not part of the spec.
    pub name: Option<String>,
    /// Labels to group and find it by (at most 16, each at most 64 characters).
    pub tags: Vec<String>,
    /// The highest validation accuracy of its stored epochs.
    pub best_val_accuracy: Option<f64>,
    /// The highest test accuracy of its stored epochs.
    pub best_test_accuracy: Option<f64>,
    /// What a queued experiment waits for besides its turn: `cuda` when its spec asks for
    /// CUDA, which only a worker with a GPU takes (a CPU-only worker leaves it queued).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// What its data gives the model (`spec::DataInfo`); none for experiments submitted
    /// before uploaded datasets existed (all of a built-in dataset).
    #[serde(skip)]
    pub data: Option<serde_json::Value>,
    /// The sweep that queued it, if one did (`GET /sweeps/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_id: Option<Uuid>,
}

#[derive(FromRow)]
pub(crate) struct Row {
    pub(crate) id: Uuid,
    account_id: Uuid,
    account: String,
    status: String,
    spec: serde_json::Value,
    priority: i32,
    attempt: i32,
    rescues: i32,
    epochs_done: i32,
    best_epoch: Option<i32>,
    stop_reason: Option<String>,
    stopped_epoch: Option<i32>,
    cancel_requested: bool,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    training_started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    name: Option<String>,
    tags: Vec<String>,
    best_val_accuracy: Option<f64>,
    best_test_accuracy: Option<f64>,
    waiting_for: Option<String>,
    data: Option<serde_json::Value>,
    sweep_id: Option<Uuid>,
}

pub(crate) const COLUMNS: &str = "id, account_id, \
    (SELECT a.name FROM accounts a WHERE a.id = experiments.account_id) AS account, status, spec, priority, attempt, rescues, epochs_done, \
    best_epoch, stop_reason, CASE WHEN stop_reason IS NOT NULL THEN epochs_done END AS stopped_epoch, \
    cancel_requested, error, created_at, updated_at, started_at, training_started_at, \
    finished_at, name, tags, \
    (SELECT max(m.val_accuracy) FROM epoch_metrics m WHERE m.experiment_id = experiments.id) \
        AS best_val_accuracy, \
    (SELECT max(m.test_accuracy) FROM epoch_metrics m WHERE m.experiment_id = experiments.id) \
        AS best_test_accuracy, \
    CASE WHEN status = 'queued' AND needs_cuda THEN 'cuda' END AS waiting_for, data, sweep_id";

impl TryFrom<Row> for Experiment {
    type Error = StoreError;
    fn try_from(r: Row) -> Result<Self> {
        Ok(Experiment {
            id: r.id,
            account_id: r.account_id,
            account: r.account,
            status: Status::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown status {}", r.status)))?,
            spec: r.spec,
            priority: r.priority,
            attempt: r.attempt,
            rescues: r.rescues,
            epochs_done: r.epochs_done,
            best_epoch: r.best_epoch,
            stop_reason: r.stop_reason,
            stopped_epoch: r.stopped_epoch,
            cancel_requested: r.cancel_requested,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            training_started_at: r.training_started_at,
            finished_at: r.finished_at,
            name: r.name,
            tags: r.tags,
            best_val_accuracy: r.best_val_accuracy,
            best_test_accuracy: r.best_test_accuracy,
            waiting_for: r.waiting_for,
            data: r.data,
            sweep_id: r.sweep_id,
        })
    }
}

/// What a client submits, once validated.
#[derive(Debug, Clone)]
pub struct NewExperiment {
    /// The account submitting it.
    pub account_id: Uuid,
    pub spec: serde_json::Value,
    /// The training FLOPs it asks for (what the per-day quota counts).
    pub train_flops: f64,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request body: a key reused with another body is refused.
    pub request_hash: Vec<u8>,
    pub labels: Labels,
    /// The uploaded dataset it trains on (checked by the caller to be one the account
    /// may use); locked while the submission commits, so it cannot be deleted under it.
    pub dataset_id: Option<Uuid>,
    /// What its data gives the model (`spec::DataInfo`).
    pub data: serde_json::Value,
}

/// An experiment's name and tags, as submitted or changed later (checked by the caller).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    pub name: Option<String>,
    pub tags: Vec<String>,
}

/// A change of labels: each field that is `Some` replaces the stored one (a `Some(None)`
/// name removes it).
#[derive(Debug, Clone, Default)]
pub struct LabelsPatch {
    pub name: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

/// Which experiments a list shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Whose experiments.
    pub scope: Option<Scope>,
    pub status: Option<Status>,
    /// Only experiments carrying this tag.
    pub tag: Option<String>,
    /// Only experiments whose name contains this text (case-insensitive).
    pub name_contains: Option<String>,
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
    ///
    /// The account's quotas are checked in the same transaction, with its row locked, so
    /// concurrent submissions cannot together pass a limit each would meet alone.
    pub async fn create_experiment(&self, new: NewExperiment) -> Result<(Experiment, bool)> {
        if let Some(key) = &new.idempotency_key
            && let Some(replayed) = self
                .replayed(new.account_id, key, &new.request_hash)
                .await?
        {
            return Ok((replayed, false));
        }
        let mut tx = self.pool.begin().await?;
        check_quotas(&mut tx, new.account_id, 1, new.train_flops).await?;
        if let Some(dataset) = new.dataset_id {
            // A deletion of the dataset locks its row too: it waits for this submission
            // (and then sees the experiment), or this one waits and finds it gone.
            let found = sqlx::query("SELECT 1 FROM datasets WHERE id = $1 FOR SHARE")
                .bind(dataset)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(StoreError::Invalid("dataset.id", "the dataset was deleted"));
            }
        }
        let row: Option<Row> = sqlx::query_as(&format!(
            "INSERT INTO experiments (id, spec, priority, idempotency_key, request_hash, name,
                tags, account_id, train_flops, dataset_id, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (account_id, idempotency_key) DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(&new.spec)
        .bind(new.priority)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .bind(&new.labels.name)
        .bind(&new.labels.tags)
        .bind(new.account_id)
        .bind(new.train_flops)
        .bind(new.dataset_id)
        .bind(&new.data)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // The same key was used by a submission that committed meanwhile.
            tx.rollback().await?;
            let key = new.idempotency_key.as_deref().unwrap_or_default();
            return match self
                .replayed(new.account_id, key, &new.request_hash)
                .await?
            {
                Some(exp) => Ok((exp, false)),
                None => Err(StoreError::NotFound),
            };
        };
        let exp = Experiment::try_from(row)?;
        events::append_status_by(&mut tx, exp.id, Status::Queued, new.account_id).await?;
        notify(&mut tx, CHANNEL_JOBS, &exp.id.to_string()).await?;
        tx.commit().await?;
        Ok((exp, true))
    }

    /// The experiment an account made earlier with this Idempotency-Key, if any;
    /// [`StoreError::IdempotencyConflict`] if that request's body was another.
    async fn replayed(&self, account: Uuid, key: &str, hash: &[u8]) -> Result<Option<Experiment>> {
        let row: Option<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT id, request_hash FROM experiments
             WHERE account_id = $1 AND idempotency_key = $2",
        )
        .bind(account)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some((_, stored)) if stored.as_deref() != Some(hash) => {
                Err(StoreError::IdempotencyConflict)
            }
            Some((id, _)) => Ok(Some(self.experiment(id).await?)),
        }
    }

    /// An experiment, if `scope` may see it: another account's answers
    /// [`StoreError::NotFound`], exactly as an unknown id does.
    pub async fn experiment_in(&self, scope: Scope, id: Uuid) -> Result<Experiment> {
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM experiments
             WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)"
        ))
        .bind(id)
        .bind(scope.account())
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// An experiment of any account (for workers and internal use; requests go through
    /// [`Store::experiment_in`]).
    pub async fn experiment(&self, id: Uuid) -> Result<Experiment> {
        let row: Option<Row> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM experiments WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// Several experiments that `scope` may see, in the order of `ids`;
    /// `Err(NotFoundIds)` names the others (unknown or another account's alike).
    pub async fn experiments(&self, scope: Scope, ids: &[Uuid]) -> Result<Vec<Experiment>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM experiments
             WHERE id = ANY($1) AND ($2::uuid IS NULL OR account_id = $2)"
        ))
        .bind(ids)
        .bind(scope.account())
        .fetch_all(&self.pool)
        .await?;
        let mut found = rows
            .into_iter()
            .map(Experiment::try_from)
            .collect::<Result<Vec<_>>>()?;
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| !found.iter().any(|e| e.id == **id))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::NotFoundIds(missing));
        }
        found.sort_by_key(|e| ids.iter().position(|id| *id == e.id));
        Ok(found)
    }

    /// Newest first, filtered, after a cursor (keyset pagination).
    pub async fn list_experiments(
        &self,
        filter: &Filter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Page> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM experiments
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
               AND ($5::text IS NULL OR tags @> ARRAY[$5])
               AND ($6::text IS NULL OR name ILIKE '%' || $6 || '%' ESCAPE '\\')
               AND ($7::uuid IS NULL OR account_id = $7)
             ORDER BY created_at DESC, id DESC
             LIMIT $4"
        ))
        .bind(filter.status.map(Status::as_str))
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit + 1)
        .bind(&filter.tag)
        .bind(filter.name_contains.as_deref().map(like_escape))
        .bind(filter.scope.and_then(Scope::account))
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
    /// `by` is the account asking (recorded in the event log).
    pub async fn cancel_experiment(&self, scope: Scope, id: Uuid, by: Uuid) -> Result<Experiment> {
        let mut tx = self.pool.begin().await?;
        let status: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM experiments
             WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2) FOR UPDATE",
        )
        .bind(id)
        .bind(scope.account())
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
                events::append_status_by(&mut tx, id, Status::Cancelled, by).await?;
            }
            Some(Status::Running) => {
                sqlx::query(
                    "UPDATE experiments SET cancel_requested = true, updated_at = now()
                     WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                events::append_request(&mut tx, id, "cancel_requested", by).await?;
                notify(&mut tx, CHANNEL_CANCEL, &id.to_string()).await?;
            }
            _ => {}
        }
        tx.commit().await?;
        self.experiment(id).await
    }

    /// Changes an experiment's name and tags.
    pub async fn update_labels(
        &self,
        scope: Scope,
        id: Uuid,
        patch: LabelsPatch,
    ) -> Result<Experiment> {
        let done = sqlx::query(
            "UPDATE experiments SET
                name = CASE WHEN $2 THEN $3 ELSE name END,
                tags = coalesce($4, tags),
                updated_at = now()
             WHERE id = $1 AND ($5::uuid IS NULL OR account_id = $5)",
        )
        .bind(id)
        .bind(patch.name.is_some())
        .bind(patch.name.flatten())
        .bind(patch.tags)
        .bind(scope.account())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.experiment(id).await
    }

    /// Deletes an ended experiment with everything it owns (metrics, events, checkpoints,
    /// claims). A queued or running one is refused with [`StoreError::NotEnded`]: its
    /// worker would write on into rows that no longer exist. Its events go too, but for
    /// one `deleted` event naming `by`, the account that deleted it.
    pub async fn delete_experiment(&self, scope: Scope, id: Uuid, by: Uuid) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM experiments WHERE id = $1 AND finished_at IS NOT NULL
                AND ($2::uuid IS NULL OR account_id = $2)",
        )
        .bind(id)
        .bind(scope.account())
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() == 1 {
            delete_events(&mut tx, &[id]).await?;
            events::append_request(&mut tx, id, "deleted", by).await?;
            tx.commit().await?;
            return Ok(());
        }
        tx.rollback().await?;
        let exp = self.experiment_in(scope, id).await?;
        Err(StoreError::NotEnded(exp.status))
    }

    /// Per status: how many experiments, and when the oldest of them was created.
    pub async fn status_counts(&self, scope: Scope) -> Result<Vec<(String, i64, DateTime<Utc>)>> {
        Ok(sqlx::query_as(
            "SELECT status, count(*), min(created_at) FROM experiments
             WHERE $1::uuid IS NULL OR account_id = $1 GROUP BY status ORDER BY 1",
        )
        .bind(scope.account())
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Deletes the events of deleted experiments (the log does not cascade: see the
/// accounts migration).
pub(crate) async fn delete_events(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> Result<()> {
    sqlx::query("DELETE FROM experiment_events WHERE experiment_id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Refuses a submission of `flops` beyond `account`'s quotas; locks the account's row
/// until the transaction ends.
/// Checks that `count` more experiments needing `flops` training FLOPs in all fit the
/// account's quotas, with its row locked until `tx` ends.
pub(crate) async fn check_quotas(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    count: i64,
    flops: f64,
) -> Result<()> {
    let quotas: Option<(Option<i32>, Option<f64>)> = sqlx::query_as(
        "SELECT max_queued, max_flops_per_day FROM accounts WHERE id = $1 FOR UPDATE",
    )
    .bind(account)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((max_queued, max_flops)) = quotas else {
        return Err(StoreError::NotFoundThing("account"));
    };
    if let Some(max) = max_queued {
        let (queued,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM experiments WHERE account_id = $1 AND status = 'queued'",
        )
        .bind(account)
        .fetch_one(&mut **tx)
        .await?;
        if queued + count > i64::from(max) {
            return Err(StoreError::Quota(QuotaExceeded {
                quota: "max_queued",
                detail: format!(
                    "the account's quota max_queued is {max} and it has {queued} experiments \
                     queued{}: wait for some to start, or cancel some",
                    if count > 1 {
                        format!(", so {count} more do not fit")
                    } else {
                        String::new()
                    }
                ),
                retry_after: None,
            }));
        }
    }
    if let Some(max) = max_flops {
        if flops > max {
            return Err(StoreError::Quota(QuotaExceeded {
                quota: "max_flops_per_day",
                detail: format!(
                    "{} {flops:.3e} training FLOPs, more than the account's \
                     whole quota max_flops_per_day of {max:.3e}",
                    if count > 1 {
                        format!("these {count} experiments need")
                    } else {
                        "this experiment needs".to_string()
                    }
                ),
                retry_after: None,
            }));
        }
        // The window's experiments, oldest first, with the FLOPs submitted since each.
        let window: Vec<(f64, f64)> = sqlx::query_as(
            "SELECT extract(epoch FROM created_at + interval '1 day' - now())::float8,
                    sum(train_flops) OVER (ORDER BY created_at DESC, id DESC)
             FROM experiments
             WHERE account_id = $1 AND created_at > now() - interval '1 day'
               AND NOT (status = 'cancelled' AND started_at IS NULL)
             ORDER BY created_at, id",
        )
        .bind(account)
        .fetch_all(&mut **tx)
        .await?;
        let used = window.first().map_or(0.0, |w| w.1);
        if used + flops > max {
            // It fits once the oldest experiments whose FLOPs it cannot share have left
            // the window: the first one after which the newer ones leave room.
            let wait = window
                .iter()
                .zip(window.iter().skip(1).map(|w| w.1).chain([0.0]))
                .find(|(_, newer)| newer + flops <= max)
                .map(|((secs, _), _)| secs.max(1.0).ceil() as u64);
            return Err(StoreError::Quota(QuotaExceeded {
                quota: "max_flops_per_day",
                detail: format!(
                    "the account's quota max_flops_per_day is {max:.3e}; {used:.3e} training \
                     FLOPs were submitted in the last 24 hours and this experiment needs \
                     {flops:.3e} more"
                ),
                retry_after: wait,
            }));
        }
    }
    Ok(())
}

/// `text` as a LIKE pattern that matches only itself (a backslash escapes).
fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
