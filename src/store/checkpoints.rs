//! Stored checkpoints: listing, downloading, and the resume point of a rescued run.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Result, Store, StoreError};

/// Which checkpoint of an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Epoch(i32),
    /// The epoch with the lowest validation (else test, else training) loss.
    Best,
    Last,
    /// What the experiment serves when a request names no checkpoint: `best`, except
    /// where the spec's early stopping says not to restore it (`restore_best: false`, as
    /// Keras leaves the last epoch's weights), which serves `last`.
    Served,
}

impl std::str::FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "best" => Ok(Which::Best),
            "last" => Ok(Which::Last),
            n => n
                .parse::<i32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Which::Epoch)
                .ok_or_else(|| format!("{s:?} is not best, last or an epoch number (1, 2, ...)")),
        }
    }
}

/// A stored checkpoint's description.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CheckpointInfo {
    pub epoch: i32,
    /// Hex SHA-256 of the weights file.
    pub sha256: String,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
    /// This is the checkpoint `best` names (the best validation loss so far).
    pub best: bool,
    /// This is the checkpoint `last` names (the newest stored epoch).
    pub last: bool,
}

#[derive(sqlx::FromRow)]
struct InfoRow {
    epoch: i32,
    sha256: Vec<u8>,
    size_bytes: i64,
    created_at: DateTime<Utc>,
    best: bool,
    last: bool,
}

impl Store {
    pub async fn checkpoints(&self, id: Uuid) -> Result<Vec<CheckpointInfo>> {
        let rows: Vec<InfoRow> = sqlx::query_as(
            "SELECT c.epoch, c.sha256, c.size_bytes, c.created_at,
                coalesce(c.epoch = e.best_epoch, false) AS best,
                c.epoch = max(c.epoch) OVER () AS last
             FROM checkpoints c JOIN experiments e ON e.id = c.experiment_id
             WHERE c.experiment_id = $1 ORDER BY c.epoch",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| CheckpointInfo {
                epoch: r.epoch,
                sha256: hex::encode(r.sha256),
                size_bytes: r.size_bytes,
                created_at: r.created_at,
                best: r.best,
                last: r.last,
            })
            .collect())
    }

    /// The epoch a selector names, if that checkpoint is stored.
    pub async fn resolve_checkpoint(&self, id: Uuid, which: Which) -> Result<Option<i32>> {
        let row: Option<(i32,)> = match which {
            Which::Epoch(n) => {
                sqlx::query_as(
                    "SELECT epoch FROM checkpoints WHERE experiment_id = $1 AND epoch = $2",
                )
                .bind(id)
                .bind(n)
                .fetch_optional(&self.pool)
                .await?
            }
            Which::Last => sqlx::query_as(
                "SELECT max(epoch) FROM checkpoints WHERE experiment_id = $1 HAVING count(*) > 0",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?,
            Which::Best => {
                sqlx::query_as(
                    "SELECT c.epoch FROM experiments e
                     JOIN checkpoints c ON c.experiment_id = e.id AND c.epoch = e.best_epoch
                     WHERE e.id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
            // The stored spec is the resolved one: `restore_best` is always written.
            Which::Served => {
                sqlx::query_as(
                    "SELECT c.epoch FROM experiments e
                     JOIN checkpoints c ON c.experiment_id = e.id AND c.epoch =
                        CASE WHEN e.spec #>> '{early_stopping,restore_best}' = 'false'
                             THEN e.epochs_done ELSE e.best_epoch END
                     WHERE e.id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        Ok(row.map(|r| r.0))
    }

    /// The weights file of one epoch.
    pub async fn checkpoint_weights(&self, id: Uuid, epoch: i32) -> Result<Vec<u8>> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT weights FROM checkpoints WHERE experiment_id = $1 AND epoch = $2",
        )
        .bind(id)
        .bind(epoch)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.ok_or(StoreError::NotFound)?.0)
    }

    /// `len` bytes of a checkpoint's weights from byte `from` (fewer at the end), without
    /// reading the rest: a file format's header, say.
    pub async fn checkpoint_weights_range(
        &self,
        id: Uuid,
        epoch: i32,
        from: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT substring(weights FROM $3 FOR $4) FROM checkpoints
             WHERE experiment_id = $1 AND epoch = $2",
        )
        .bind(id)
        .bind(epoch)
        // (PostgreSQL counts from 1, and takes 32-bit positions: a bytea is under 1 GB.)
        .bind(i32::try_from(from).unwrap_or(i32::MAX).saturating_add(1))
        .bind(i32::try_from(len).unwrap_or(i32::MAX))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.ok_or(StoreError::NotFound)?.0)
    }

    /// Weights and optimizer state of the newest checkpoint: where a rescued run resumes.
    pub async fn resume_point(&self, id: Uuid) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT weights, optimizer FROM checkpoints WHERE experiment_id = $1
             ORDER BY epoch DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
