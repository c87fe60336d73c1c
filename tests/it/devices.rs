//! A worker claims only what it can run. One without a GPU leaves an experiment that asks
//! for CUDA queued, saying what it waits for, instead of claiming it only to fail it; an
//! `auto` experiment runs anywhere.

use crate::common;

use serde_json::{Value, json};
use sqlx::PgPool;

use common::service::{TestServer, worker_config};

fn spec(device: &str) -> Value {
    json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 300, "test_limit": 100},
        "epochs": 1,
        "device": device,
    })
}

#[sqlx::test]
async fn a_cpu_worker_leaves_a_cuda_experiment_queued_while_it_trains_an_auto_one(pool: PgPool) {
    let s = TestServer::start(pool.clone(), &[]).await;
    // The CUDA one is older, so a queue that ignored devices would hand it out first.
    let (status, cuda) = s.submit(&spec("cuda")).await;
    assert_eq!(status, 201, "{cuda}");
    let (_, auto) = s.submit(&spec("auto")).await;
    let (cuda, auto) = (cuda["id"].as_str().unwrap(), auto["id"].as_str().unwrap());
    let (_, listed) = s.get_json(&format!("/experiments/{cuda}")).await;
    assert_eq!(listed["waiting_for"], "cuda", "{listed}");

    // A worker of this CPU-only build, with no `--device` override.
    let mut cfg = worker_config("cpu-only");
    cfg.device = None;
    let _w = TestServer::spawn_worker(&s.store, cfg, s.shutdown_receiver()).await;
    let done = s.wait_status(auto, "succeeded", 120).await;
    assert!(done.get("waiting_for").is_none(), "{done}");

    let (_, waiting) = s.get_json(&format!("/experiments/{cuda}")).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["attempt"], 0, "never claimed: {waiting}");
    assert_eq!(waiting["waiting_for"], "cuda", "{waiting}");
    assert!(waiting["error"].is_null(), "{waiting}");

    // A worker that can run CUDA takes it.
    let claim = s.store.claim("gpu", 30.0, true).await.unwrap().unwrap();
    assert_eq!(claim.id.to_string(), cuda);
    let (_, running) = s.get_json(&format!("/experiments/{cuda}")).await;
    assert_eq!(running["status"], "running");
    assert!(running.get("waiting_for").is_none(), "{running}");
    s.stop().await;
}
