//! Uploaded datasets: an account's named datasets over content-addressed tensors.
//!
//! The tensors (`dataset_blobs`) are keyed by their SHA-256, so an upload of data that
//! is already stored writes no second copy, whoever uploaded it first. The account's row
//! (`datasets`) carries what is the uploader's own: the name, the class names, how the
//! test split came about. Everything an account reads goes through its own rows
//! ([`Scope`]): knowing a blob's hash gives no access to it.
//!
//! An upload writes both rows in one transaction, so a failed or abandoned upload leaves
//! nothing behind. A deletion takes the blob with it when no other row uses it, and is
//! refused while a queued or running experiment trains on the dataset.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::{Result, Scope, Store, StoreError};

/// What an upload stores: the decoded tensors and the uploader's description of them.
#[derive(Debug, Clone)]
pub struct NewDataset<'a> {
    pub account_id: Uuid,
    pub name: &'a str,
    pub sha256: &'a str,
    pub format: &'a str,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub train_images: &'a [u8],
    pub train_labels: &'a [u8],
    pub test_images: &'a [u8],
    pub test_labels: &'a [u8],
    pub class_names: &'a [String],
    pub train_counts: &'a [usize],
    pub test_counts: &'a [usize],
    /// The fraction of the training images held out as the test split, and its seed;
    /// `None` when the upload had its own test split.
    pub held_out: Option<(f64, u64)>,
    pub upload_bytes: u64,
    pub resized: usize,
}

/// A stored dataset as its account sees it.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct Dataset {
    pub id: Uuid,
    pub name: String,
    /// `folders`, `idx` or `csv`: what was uploaded.
    pub format: String,
    /// SHA-256 of the decoded tensors and labels (with their shape).
    pub sha256: String,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: i32,
    pub height: i32,
    pub width: i32,
    pub train_samples: i32,
    pub test_samples: i32,
    /// By label.
    #[schema(value_type = Vec<String>)]
    pub class_names: serde_json::Value,
    /// Training samples per class, by label.
    #[schema(value_type = Vec<i64>)]
    pub train_counts: serde_json::Value,
    /// Test samples per class, by label.
    #[schema(value_type = Vec<i64>)]
    pub test_counts: serde_json::Value,
    /// The fraction of the training images held out as the test split (none: the upload
    /// had its own).
    pub held_out: Option<f64>,
    /// The seed of that hold-out (and of a class-folder upload's sample order).
    pub held_out_seed: Option<i64>,
    /// Bytes received.
    pub upload_bytes: i64,
    /// Images resized to the dataset's size at upload.
    pub resized: i32,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "d.id, d.name, d.format, d.sha256, b.channels, b.height, b.width, \
    b.train_len AS train_samples, b.test_len AS test_samples, d.class_names, d.train_counts, \
    d.test_counts, d.held_out, d.held_out_seed, d.upload_bytes, d.resized, d.created_at";

/// A dataset's tensors, as a worker loads them.
#[derive(Debug, Clone, FromRow)]
pub struct DatasetTensors {
    pub sha256: String,
    pub channels: i32,
    pub height: i32,
    pub width: i32,
    pub train_len: i32,
    pub test_len: i32,
    pub train_images: Vec<u8>,
    pub train_labels: Vec<u8>,
    pub test_images: Vec<u8>,
    pub test_labels: Vec<u8>,
    pub class_names: serde_json::Value,
}

impl Store {
    /// Stores an upload: its tensors unless the same content is already stored, and the
    /// account's row. `true` when the tensors were new.
    pub async fn create_dataset(&self, new: NewDataset<'_>) -> Result<(Dataset, bool)> {
        let mut tx = self.pool.begin().await?;
        let stored = sqlx::query(
            "INSERT INTO dataset_blobs (sha256, channels, height, width, train_len, test_len,
                train_images, train_labels, test_images, test_labels)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(new.sha256)
        .bind(new.channels as i32)
        .bind(new.height as i32)
        .bind(new.width as i32)
        .bind(new.train_labels.len() as i32)
        .bind(new.test_labels.len() as i32)
        .bind(new.train_images)
        .bind(new.train_labels)
        .bind(new.test_images)
        .bind(new.test_labels)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO datasets (id, account_id, name, sha256, format, class_names,
                train_counts, test_counts, held_out, held_out_seed, upload_bytes, resized)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(id)
        .bind(new.account_id)
        .bind(new.name)
        .bind(new.sha256)
        .bind(new.format)
        .bind(serde_json::json!(new.class_names))
        .bind(serde_json::json!(new.train_counts))
        .bind(serde_json::json!(new.test_counts))
        .bind(new.held_out.map(|h| h.0))
        .bind(new.held_out.map(|h| h.1 as i64))
        .bind(new.upload_bytes as i64)
        .bind(new.resized as i32)
        .execute(&mut *tx)
        .await?;
        let d = dataset_in(&mut tx, Scope::All, id).await?;
        tx.commit().await?;
        Ok((d, stored))
    }

    /// A dataset that `scope` may see (another account's is [`StoreError::NotFoundThing`],
    /// as an unknown id is).
    pub async fn dataset_in(&self, scope: Scope, id: Uuid) -> Result<Dataset> {
        let mut conn = self.pool.acquire().await?;
        dataset_in(&mut conn, scope, id).await
    }

    /// The datasets `scope` may see, newest first.
    pub async fn datasets(&self, scope: Scope) -> Result<Vec<Dataset>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM datasets d JOIN dataset_blobs b ON b.sha256 = d.sha256
             WHERE $1::uuid IS NULL OR d.account_id = $1
             ORDER BY d.created_at DESC, d.id DESC"
        ))
        .bind(scope.account())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes a dataset (and its tensors when no other dataset shares them). Refused
    /// with [`StoreError::DatasetInUse`] while a queued or running experiment uses it.
    pub async fn delete_dataset(&self, scope: Scope, id: Uuid) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The row lock makes a submission naming this dataset wait (it locks the row
        // too), so none can slip in between the check and the deletion.
        let sha: Option<(String,)> = sqlx::query_as(
            "SELECT sha256 FROM datasets
             WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2) FOR UPDATE",
        )
        .bind(id)
        .bind(scope.account())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((sha,)) = sha else {
            return Err(StoreError::NotFoundThing("dataset"));
        };
        let users: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM experiments
             WHERE dataset_id = $1 AND status IN ('queued', 'running') ORDER BY id LIMIT 10",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            return Err(StoreError::DatasetInUse(
                users.into_iter().map(|u| u.0).collect(),
            ));
        }
        sqlx::query("DELETE FROM datasets WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM dataset_blobs b WHERE b.sha256 = $1
             AND NOT EXISTS (SELECT 1 FROM datasets d WHERE d.sha256 = b.sha256)",
        )
        .bind(&sha)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A dataset's tensors and class names, for a worker (no account check: the
    /// submission checked that the experiment's account may use it).
    pub async fn dataset_tensors(&self, id: Uuid) -> Result<DatasetTensors> {
        sqlx::query_as(
            "SELECT b.sha256, b.channels, b.height, b.width, b.train_len, b.test_len,
                b.train_images, b.train_labels, b.test_images, b.test_labels, d.class_names
             FROM datasets d JOIN dataset_blobs b ON b.sha256 = d.sha256 WHERE d.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFoundThing("dataset"))
    }

    /// A few images of every class of a dataset's training split, for a picture:
    /// `(label, pixels)` in label order, at most `per_class` each.
    pub async fn dataset_samples(
        &self,
        scope: Scope,
        id: Uuid,
        per_class: usize,
    ) -> Result<(Dataset, Vec<(u8, Vec<u8>)>)> {
        let d = self.dataset_in(scope, id).await?;
        let px = (d.channels * d.height * d.width) as usize;
        let (labels,): (Vec<u8>,) =
            sqlx::query_as("SELECT train_labels FROM dataset_blobs WHERE sha256 = $1")
                .bind(&d.sha256)
                .fetch_one(&self.pool)
                .await?;
        let classes = d.class_names.as_array().map_or(0, Vec::len);
        let mut taken = vec![0usize; classes];
        let mut picks = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            if let Some(t) = taken.get_mut(l as usize)
                && *t < per_class
            {
                *t += 1;
                picks.push((l, i));
            }
        }
        picks.sort();
        let mut out = Vec::with_capacity(picks.len());
        for (l, i) in picks {
            // 1-based byte offsets; one small read per image, never the whole split.
            let (img,): (Vec<u8>,) = sqlx::query_as(
                "SELECT substring(train_images FROM $2 FOR $3) FROM dataset_blobs
                 WHERE sha256 = $1",
            )
            .bind(&d.sha256)
            .bind((i * px + 1) as i32)
            .bind(px as i32)
            .fetch_one(&self.pool)
            .await?;
            out.push((l, img));
        }
        Ok((d, out))
    }
}

async fn dataset_in(conn: &mut sqlx::PgConnection, scope: Scope, id: Uuid) -> Result<Dataset> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM datasets d JOIN dataset_blobs b ON b.sha256 = d.sha256
         WHERE d.id = $1 AND ($2::uuid IS NULL OR d.account_id = $2)"
    ))
    .bind(id)
    .bind(scope.account())
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::NotFoundThing("dataset"))
}
