//! Housekeeping of ended experiments, so that the tables grow with what users keep rather
//! than with every step of every run.
//!
//! - A checkpoint's optimizer state exists to resume an interrupted run (momentum and
//!   Adam's moments: one or two copies of the weights). Nothing resumes an ended
//!   experiment, so once it has ended its checkpoints keep only their weights, which stay
//!   downloadable. While a run goes on, only its newest checkpoint's state is ever read, so
//!   the older ones are emptied as soon as a newer epoch is stored (see
//!   [`Store::record_epoch`](super::Store::record_epoch)).
//! - Optionally (`retention`), ended experiments older than a bound are deleted with
//!   everything they own.
//!
//! Each round handles a bounded batch, locks rows with `SKIP LOCKED` (several worker
//! processes may run it at once), and leaves dead rows to autovacuum.

use std::time::Duration;

use super::{Result, Store};

/// What a housekeeping round may do.
#[derive(Debug, Clone)]
pub struct Housekeeping {
    /// Delete ended experiments that finished longer ago than this (never when `None`).
    pub retention: Option<Duration>,
    /// Most experiments a round sweeps or deletes.
    pub batch: i64,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Housekeeping {
            retention: None,
            batch: 200,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Ended experiments whose checkpoints lost their optimizer state.
    pub swept: u64,
    /// Ended experiments deleted for being older than the retention.
    pub deleted: u64,
}

impl Store {
    /// One housekeeping round.
    pub async fn housekeep(&self, h: &Housekeeping) -> Result<Swept> {
        let mut tx = self.pool.begin().await?;
        let swept: Vec<(uuid::Uuid,)> = sqlx::query_as(
            "WITH batch AS (
                SELECT id FROM experiments
                WHERE finished_at IS NOT NULL AND swept_at IS NULL
                ORDER BY finished_at LIMIT $1 FOR UPDATE SKIP LOCKED
             )
             UPDATE experiments e SET swept_at = now() FROM batch WHERE e.id = batch.id
             RETURNING e.id",
        )
        .bind(h.batch)
        .fetch_all(&mut *tx)
        .await?;
        if !swept.is_empty() {
            let ids: Vec<uuid::Uuid> = swept.iter().map(|r| r.0).collect();
            sqlx::query(
                "UPDATE checkpoints SET optimizer = ''::bytea
                 WHERE experiment_id = ANY($1) AND length(optimizer) > 0",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let mut deleted = 0;
        if let Some(keep) = h.retention {
            let mut tx = self.pool.begin().await?;
            let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
                "DELETE FROM experiments WHERE id IN (
                    SELECT id FROM experiments
                    WHERE finished_at IS NOT NULL
                      AND finished_at < now() - make_interval(secs => $1)
                    ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id",
            )
            .bind(keep.as_secs_f64())
            .bind(h.batch)
            .fetch_all(&mut *tx)
            .await?;
            let ids: Vec<uuid::Uuid> = ids.into_iter().map(|r| r.0).collect();
            super::experiments::delete_events(&mut tx, &ids).await?;
            tx.commit().await?;
            deleted = ids.len() as u64;
        }
        Ok(Swept {
            swept: swept.len() as u64,
            deleted,
        })
    }

    /// Bytes of checkpoint data (weights and optimizer state) the tables hold.
    pub async fn checkpoint_bytes(&self) -> Result<i64> {
        let (bytes,): (i64,) = sqlx::query_as(
            "SELECT coalesce(sum(octet_length(weights) + octet_length(optimizer)), 0)::bigint
             FROM checkpoints",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(bytes)
    }

    /// Bytes the experiment tables take on disk (heap, TOAST and indexes).
    pub async fn table_bytes(&self) -> Result<i64> {
        let (bytes,): (i64,) = sqlx::query_as(
            "SELECT (pg_total_relation_size('experiments') + pg_total_relation_size('checkpoints')
                   + pg_total_relation_size('epoch_metrics')
                   + pg_total_relation_size('experiment_events'))::bigint",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(bytes)
    }
}
