//! Housekeeping of ended experiments against the real PostgreSQL: what it empties, what it
//! deletes, and what it never touches.

use crate::common;

use std::time::Duration;

use common::service::{TestServer, worker_config};
use serde_json::json;
use sqlx::PgPool;
use trainyard::store::housekeeping::{Housekeeping, Swept};

/// Optimizer-state sizes of an experiment's checkpoints, by epoch.
async fn optimizer_bytes(pool: &PgPool, id: &str) -> Vec<(i32, i32)> {
    sqlx::query_as(
        "SELECT epoch, length(optimizer) FROM checkpoints
         WHERE experiment_id = $1::uuid ORDER BY epoch",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn ended_experiments_keep_their_weights_and_lose_their_optimizer_state(pool: PgPool) {
    let s = TestServer::start(pool.clone(), &[worker_config("w")]).await;
    let spec = json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 300, "test_limit": 100},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50,
        "epochs": 3,
        "keep_all_checkpoints": true,
        "device": "cpu"
    });
    let (status, exp) = s.submit(&spec).await;
    assert_eq!(status, 201, "{exp}");
    let id = exp["id"].as_str().unwrap().to_string();
    s.wait_status(&id, "succeeded", 120).await;

    // While it ran, each new epoch emptied the older checkpoints' state: only the newest
    // (the resume point) kept its momentum buffers.
    let sizes = optimizer_bytes(&pool, &id).await;
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    assert_eq!((sizes[0].1, sizes[1].1), (0, 0), "{sizes:?}");
    assert!(sizes[2].1 > 0, "{sizes:?}");
    let weights_before = s
        .client
        .get(s.url(&format!("/experiments/{id}/checkpoints/last")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    let h = Housekeeping::default();
    assert_eq!(
        s.store.housekeep(&h).await.unwrap(),
        Swept {
            swept: 1,
            deleted: 0
        }
    );
    assert!(
        optimizer_bytes(&pool, &id)
            .await
            .iter()
            .all(|(_, n)| *n == 0)
    );
    // The weights are untouched and still downloadable.
    let r = s
        .client
        .get(s.url(&format!("/experiments/{id}/checkpoints/last")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), weights_before);
    // A second round finds nothing left to do.
    assert_eq!(s.store.housekeep(&h).await.unwrap(), Swept::default());
    s.stop().await;
}

#[sqlx::test]
async fn workers_sweep_ended_experiments_on_their_own(pool: PgPool) {
    let mut cfg = worker_config("w");
    cfg.housekeeping_secs = 0.2;
    let s = TestServer::start(pool.clone(), &[cfg]).await;
    let spec = json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 100, "test_limit": 50},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50,
        "epochs": 1,
        "device": "cpu"
    });
    let (_, exp) = s.submit(&spec).await;
    let id = exp["id"].as_str().unwrap().to_string();
    s.wait_status(&id, "succeeded", 120).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while optimizer_bytes(&pool, &id)
        .await
        .iter()
        .any(|(_, n)| *n > 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not swept after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}

#[sqlx::test]
async fn retention_deletes_only_experiments_that_ended_before_it(pool: PgPool) {
    // No worker: experiments stay queued unless cancelled.
    let s = TestServer::start(pool.clone(), &[]).await;
    let spec = json!({"preset": "torch-cnn", "epochs": 1, "device": "cpu"});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, exp) = s.submit(&spec).await;
        assert_eq!(status, 201, "{exp}");
        ids.push(exp["id"].as_str().unwrap().to_string());
    }
    // ids[0] ended ten days ago, ids[1] just now, ids[2] is still queued.
    for id in &ids[..2] {
        assert_eq!(s.cancel(id).await.status(), 200);
    }
    sqlx::query(
        "UPDATE experiments SET finished_at = now() - interval '10 days',
                created_at = now() - interval '11 days'
         WHERE id = $1::uuid",
    )
    .bind(&ids[0])
    .execute(&pool)
    .await
    .unwrap();

    let h = Housekeeping {
        retention: Some(Duration::from_secs(7 * 86400)),
        batch: 100,
    };
    let swept = s.store.housekeep(&h).await.unwrap();
    assert_eq!(swept.deleted, 1, "{swept:?}");
    assert_eq!(s.get_json(&format!("/experiments/{}", ids[0])).await.0, 404);
    let (_, kept) = s.get_json(&format!("/experiments/{}", ids[1])).await;
    assert_eq!(kept["status"], "cancelled");
    let (_, queued) = s.get_json(&format!("/experiments/{}", ids[2])).await;
    assert_eq!(queued["status"], "queued");
    // The counts follow.
    let (status, stats) = s.get_json("/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats["experiments"],
        json!({"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1})
    );
    assert!(
        stats["oldest_queued_seconds"].as_f64().unwrap() >= 0.0,
        "{stats}"
    );
    // Its events went with it.
    let (events,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM experiment_events WHERE experiment_id = $1::uuid")
            .bind(&ids[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(events, 0);
    s.stop().await;
}
