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

async fn append(
    tx: &mut Transaction<'_, Postgres>,
    experiment: Uuid,
    kind: &str,
    data: serde_json::Value,
) -> Result<i64> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO experiment_events (experiment_id, kind, data) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(experiment)
    .bind(kind)
    .bind(data)
    .fetch_one(&mut **tx)
    .await?;
    let payload = serde_json::json!({"experiment_id": experiment, "id": id}).to_string();
    notify(tx, CHANNEL_EVENTS, &payload).await?;
    Ok(id)
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
        Ok(sqlx::query_as(
            "SELECT id, experiment_id, kind, data, created_at FROM experiment_events
             WHERE experiment_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(experiment)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
