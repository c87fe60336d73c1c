//! Sweeps: many experiments queued by one request, and read back together.
//!
//! A sweep's children are ordinary experiments (claimed, trained, cancelled and deleted
//! like any other) that name their sweep, their point and their repeat. They are queued
//! in one transaction with the sweep's row, after one quota check for all of them, so a
//! sweep is queued whole or not at all, and a worker never starts half a grid.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::experiments::{COLUMNS, Row, check_quotas, delete_events, notify};
use super::{CHANNEL_JOBS, Experiment, Labels, Result, Scope, Status, Store, StoreError, events};

/// A sweep to queue, its children validated by the caller.
#[derive(Debug, Clone)]
pub struct NewSweep {
    pub account_id: Uuid,
    /// `grid`, `random` or `ablation`.
    pub kind: &'static str,
    /// The request as sent, but for name and tags.
    pub request: serde_json::Value,
    /// The ranking's metric (an epoch metric's name).
    pub metric: &'static str,
    pub repeats: i32,
    /// An ablation's differences its children try (`{path, from, to}`).
    pub changes: serde_json::Value,
    /// An ablation's differences no child could try, with why.
    pub skipped: serde_json::Value,
    pub labels: Labels,
}

/// One child to queue.
#[derive(Debug, Clone)]
pub struct NewChild {
    pub spec: serde_json::Value,
    pub train_flops: f64,
    pub dataset_id: Option<Uuid>,
    pub data: serde_json::Value,
    /// The fields it set on the base (`spec::sweep::Point`).
    pub point: serde_json::Value,
    pub repeat: i32,
    pub name: String,
}

/// A sweep as stored.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct Sweep {
    pub id: Uuid,
    #[serde(skip)]
    pub account_id: Uuid,
    /// `grid`, `random` or `ablation`.
    pub kind: String,
    /// The request as sent (without name and tags).
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    /// What the ranking orders by.
    pub metric: String,
    pub repeats: i32,
    /// An ablation's differences its children try: `{path, from, to}` each.
    #[schema(value_type = Vec<Object>)]
    pub changes: serde_json::Value,
    /// An ablation's differences that no child could try, each with its reasons.
    #[schema(value_type = Vec<Object>)]
    pub skipped: serde_json::Value,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A child with its place in the sweep and the figures of its last stored epoch.
#[derive(Debug, Clone)]
pub struct SweepChild {
    pub experiment: Experiment,
    pub point: serde_json::Value,
    pub repeat: i32,
    pub last: Option<LastEpoch>,
}

/// The figures of an experiment's last stored epoch.
#[derive(Debug, Clone, Copy, FromRow, Serialize, utoipa::ToSchema)]
pub struct LastEpoch {
    pub epoch: i32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
}

impl LastEpoch {
    /// A metric by its name (`val_loss`, ...); `None` where it was not measured.
    pub fn get(&self, metric: &str) -> Option<f64> {
        match metric {
            "train_loss" => Some(self.train_loss),
            "train_accuracy" => Some(self.train_accuracy),
            "val_loss" => self.val_loss,
            "val_accuracy" => self.val_accuracy,
            "test_loss" => self.test_loss,
            "test_accuracy" => self.test_accuracy,
            _ => None,
        }
    }
}

const SWEEP_COLUMNS: &str =
    "id, account_id, kind, request, metric, repeats, changes, skipped, name, tags, created_at";

impl Store {
    /// Queues a sweep and all its children in one transaction, after checking that they
    /// all fit the account's quotas. Returns the sweep and its children's ids in order.
    pub async fn create_sweep(
        &self,
        new: NewSweep,
        children: Vec<NewChild>,
    ) -> Result<(Sweep, Vec<Uuid>)> {
        let mut tx = self.pool.begin().await?;
        let flops: f64 = children.iter().map(|c| c.train_flops).sum();
        check_quotas(&mut tx, new.account_id, children.len() as i64, flops).await?;
        let mut datasets: Vec<Uuid> = children.iter().filter_map(|c| c.dataset_id).collect();
        datasets.sort();
        datasets.dedup();
        if !datasets.is_empty() {
            // As for one experiment: a deletion of a dataset waits for this, or this
            // finds it gone.
            let (found,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM (SELECT 1 FROM datasets WHERE id = ANY($1) FOR SHARE) d",
            )
            .bind(&datasets)
            .fetch_one(&mut *tx)
            .await?;
            if found != datasets.len() as i64 {
                return Err(StoreError::Invalid("dataset.id", "the dataset was deleted"));
            }
        }
        let sweep: Sweep = sqlx::query_as(&format!(
            "INSERT INTO sweeps (id, account_id, kind, request, metric, repeats, changes,
                skipped, name, tags)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING {SWEEP_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(new.account_id)
        .bind(new.kind)
        .bind(&new.request)
        .bind(new.metric)
        .bind(new.repeats)
        .bind(&new.changes)
        .bind(&new.skipped)
        .bind(&new.labels.name)
        .bind(&new.labels.tags)
        .fetch_one(&mut *tx)
        .await?;
        // Ids in the children's order, whatever the clock did between them.
        let mut ids: Vec<Uuid> = children.iter().map(|_| Uuid::now_v7()).collect();
        ids.sort();
        let column = |f: fn(&NewChild) -> serde_json::Value| -> Vec<serde_json::Value> {
            children.iter().map(f).collect()
        };
        // One statement for every child, one for their `queued` events (as
        // `events::append_status_by` writes it), each event announced.
        sqlx::query(
            "WITH e AS (
                INSERT INTO experiments (id, spec, train_flops, dataset_id, data, sweep_point,
                    sweep_repeat, name, sweep_id, account_id, tags, priority)
                SELECT *, $9::uuid, $10::uuid, $11::text[], 0
                FROM UNNEST($1::uuid[], $2::jsonb[], $3::float8[], $4::uuid[], $5::jsonb[],
                    $6::jsonb[], $7::int4[], $8::text[])
                RETURNING id),
             ev AS (
                INSERT INTO experiment_events (experiment_id, kind, data, account_id)
                SELECT id, 'status', $12::jsonb, $10 FROM e ORDER BY id
                RETURNING id, experiment_id)
             SELECT pg_notify($13, json_build_object('experiment_id', experiment_id,
                'id', id)::text) FROM ev",
        )
        .bind(&ids)
        .bind(column(|c| c.spec.clone()))
        .bind(children.iter().map(|c| c.train_flops).collect::<Vec<f64>>())
        .bind(
            children
                .iter()
                .map(|c| c.dataset_id)
                .collect::<Vec<Option<Uuid>>>(),
        )
        .bind(column(|c| c.data.clone()))
        .bind(column(|c| c.point.clone()))
        .bind(children.iter().map(|c| c.repeat).collect::<Vec<i32>>())
        .bind(children.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
        .bind(sweep.id)
        .bind(new.account_id)
        .bind(&new.labels.tags)
        .bind(serde_json::json!({"status": Status::Queued, "error": null}))
        .bind(super::CHANNEL_EVENTS)
        .execute(&mut *tx)
        .await?;
        notify(&mut tx, CHANNEL_JOBS, &sweep.id.to_string()).await?;
        tx.commit().await?;
        Ok((sweep, ids))
    }

    /// A sweep, if `scope` may see it (another account's is [`StoreError::NotFound`]).
    pub async fn sweep_in(&self, scope: Scope, id: Uuid) -> Result<Sweep> {
        sqlx::query_as(&format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps
             WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)"
        ))
        .bind(id)
        .bind(scope.account())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// The newest sweeps `scope` may see, at most `limit`, each with how many of its
    /// children are in each status.
    pub async fn list_sweeps(
        &self,
        scope: Scope,
        limit: i64,
    ) -> Result<Vec<(Sweep, BTreeMap<String, i64>)>> {
        let sweeps: Vec<Sweep> = sqlx::query_as(&format!(
            "SELECT {SWEEP_COLUMNS} FROM sweeps WHERE $1::uuid IS NULL OR account_id = $1
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(scope.account())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<Uuid> = sweeps.iter().map(|s| s.id).collect();
        let counts: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT sweep_id, status, count(*) FROM experiments WHERE sweep_id = ANY($1)
             GROUP BY 1, 2",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by: HashMap<Uuid, BTreeMap<String, i64>> = HashMap::new();
        for (id, status, n) in counts {
            by.entry(id).or_default().insert(status, n);
        }
        Ok(sweeps
            .into_iter()
            .map(|s| {
                let c = by.remove(&s.id).unwrap_or_default();
                (s, c)
            })
            .collect())
    }

    /// A sweep's children in the order they were queued, with their last epochs.
    pub async fn sweep_children(&self, sweep: Uuid) -> Result<Vec<SweepChild>> {
        #[derive(FromRow)]
        struct ChildRow {
            #[sqlx(flatten)]
            row: Row,
            sweep_point: Option<serde_json::Value>,
            sweep_repeat: Option<i32>,
        }
        let rows: Vec<ChildRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS}, sweep_point, sweep_repeat FROM experiments
             WHERE sweep_id = $1 ORDER BY id"
        ))
        .bind(sweep)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.row.id).collect();
        let lasts: Vec<LastEpochRow> = sqlx::query_as(
            "SELECT DISTINCT ON (experiment_id) experiment_id, epoch, train_loss,
                train_accuracy, val_loss, val_accuracy, test_loss, test_accuracy
             FROM epoch_metrics WHERE experiment_id = ANY($1)
             ORDER BY experiment_id, epoch DESC",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut lasts: HashMap<Uuid, LastEpoch> = lasts
            .into_iter()
            .map(|r| (r.experiment_id, r.last))
            .collect();
        rows.into_iter()
            .map(|r| {
                let experiment = Experiment::try_from(r.row)?;
                Ok(SweepChild {
                    last: lasts.remove(&experiment.id),
                    point: r.sweep_point.unwrap_or_default(),
                    repeat: r.sweep_repeat.unwrap_or(0),
                    experiment,
                })
            })
            .collect()
    }

    /// Cancels every child that has not ended (see [`Store::cancel_experiment`]); how
    /// many it cancelled or asked to stop.
    pub async fn cancel_sweep(&self, scope: Scope, id: Uuid, by: Uuid) -> Result<usize> {
        self.sweep_in(scope, id).await?;
        let open: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM experiments WHERE sweep_id = $1
               AND status IN ('queued', 'running') ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut n = 0;
        for (child,) in open {
            match self.cancel_experiment(scope, child, by).await {
                Ok(_) => n += 1,
                // Deleted meanwhile.
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Deletes a sweep with every child (see [`Store::delete_experiment`]), in one
    /// transaction; refused with [`StoreError::NotEnded`] while any child is queued or
    /// running. Returns the children deleted.
    pub async fn delete_sweep(&self, scope: Scope, id: Uuid, by: Uuid) -> Result<Vec<Uuid>> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query(
            "SELECT 1 FROM sweeps WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)
             FOR UPDATE",
        )
        .bind(id)
        .bind(scope.account())
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Err(StoreError::NotFound);
        }
        let open: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM experiments WHERE sweep_id = $1 AND finished_at IS NULL
             LIMIT 1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((status,)) = open {
            let status = Status::parse(&status).unwrap_or(Status::Running);
            return Err(StoreError::NotEnded(status));
        }
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM experiments WHERE sweep_id = $1 AND finished_at IS NOT NULL
             RETURNING id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        delete_events(&mut tx, &ids).await?;
        for child in &ids {
            events::append_request(&mut tx, *child, "deleted", by).await?;
        }
        sqlx::query("DELETE FROM sweeps WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }
}

#[derive(FromRow)]
struct LastEpochRow {
    experiment_id: Uuid,
    #[sqlx(flatten)]
    last: LastEpoch,
}
