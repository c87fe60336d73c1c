//! The per-experiment event log that curve followers replay (`Last-Event-ID`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::experiments::{Status, notify};
use super::{CHANNEL_EVENTS, Result, Store};

/// A durable event: `kind` is `status` or `epoch`, `data` its JSON body.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Event {
    pub id: i64,
    pub experiment_id: Uuid,
    pub kind: String,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Kinds of event a curve follower replays; the others (`cancel_requested`, `deleted`)
/// record who did what and are only read from the table.
const FOLLOWED: &str = "kind IN ('status', 'epoch')";

async fn append(
    tx: &mut Transaction<'_, Postgres>,
    experiment: Uuid,
    kind: &str,
    data: serde_json::Value,
) -> Result<i64> {
    let id = insert(tx, experiment, kind, data, None).await?;
    let payload = serde_json::json!({"experiment_id": experiment, "id": id}).to_string();
    notify(tx, CHANNEL_EVENTS, &payload).await?;
    Ok(id)
}

async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    experiment: Uuid,
    kind: &str,
    data: serde_json::Value,
    account: Option<Uuid>,
) -> Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO experiment_events (experiment_id, kind, data, account_id)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(experiment)
    .bind(kind)
    .bind(data)
    .bind(account)
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

/// Records a status change that an account asked for (creating, cancelling a queued
/// experiment), naming that account.
pub(crate) async fn append_status_by(
    tx: &mut Transaction<'_, Postgres>,
    experiment: Uuid,
    status: Status,
    account: Uuid,
) -> Result<i64> {
    let data = serde_json::json!({"status": status, "error": null});
    let id = insert(tx, experiment, "status", data, Some(account)).await?;
    let payload = serde_json::json!({"experiment_id": experiment, "id": id}).to_string();
    notify(tx, CHANNEL_EVENTS, &payload).await?;
    Ok(id)
}

/// Records an account's request, not followed by curve streams: `cancel_requested` (of
/// a running experiment, which its worker then ends) or `deleted`.
pub(crate) async fn append_request(
    tx: &mut Transaction<'_, Postgres>,
    experiment: Uuid,
    kind: &str,
    account: Uuid,
) -> Result<i64> {
    insert(tx, experiment, kind, serde_json::json!({}), Some(account)).await
}

/// Records a status change (with the error of a failed run).
pub(crate) async fn append_status(
    tx: &mut Transaction<'_, Postgres>,
    experiment: Uuid,
    status: Status,
    error: Option<&str>,
) -> Result<i64> {
    let data = serde_json::json!({"status": status, "error": error});
    append(tx, experiment, "status", data).await
}

/// Records a finished epoch's metrics (and when they were stored).
pub(crate) async fn append_epoch(
    tx: &mut Transaction<'_, Postgres>,
    experiment: Uuid,
    epoch: &super::queue::StoredEpoch,
) -> Result<i64> {
    let data = serde_json::to_value(epoch).expect("metrics serialize");
    append(tx, experiment, "epoch", data).await
}

impl Store {
    /// Events of an experiment after `after` (exclusive), in order.
    pub async fn events_after(
        &self,
        experiment: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Event>> {
        Ok(sqlx::query_as(&format!(
            "SELECT id, experiment_id, kind, data, created_at FROM experiment_events
                 WHERE experiment_id = $1 AND id > $2 AND {FOLLOWED} ORDER BY id LIMIT $3"
        ))
        .bind(experiment)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The id of an experiment's newest followed event (0 when it has none).
    pub async fn last_event_id(&self, experiment: Uuid) -> Result<i64> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT coalesce(max(id), 0) FROM experiment_events
                 WHERE experiment_id = $1 AND {FOLLOWED}"
        ))
        .bind(experiment)
        .fetch_one(&self.pool)
        .await?)
    }
}
