//! `/predict` batching end to end: a real server over a `#[sqlx::test]` database, a model
//! trained on a small slice by a real worker, many concurrent requests over real sockets.
//! Concurrent answers must be the answers each image gets alone, a bad request must fail
//! alone, and no forward pass may exceed the configured batch.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::service::{TestServer, worker_config};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use trainyard::api::predict::{BatchConfig, ModelCache};
use trainyard::api::{AppState, app};
use trainyard::store::listen::Hub;

/// torch-cnn, one epoch on a small slice: a few seconds.
fn tiny() -> Value {
    json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 600, "test_limit": 100},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50,
        "epochs": 1,
        "device": "cpu"
    })
}

fn png(i: usize) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(28, 28, common::mnist().test.image(i).to_vec())
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A trained experiment, and an API-only server with `cfg` batching over the same store.
struct Setup {
    trainer: TestServer,
    base: String,
    id: String,
    models: Arc<ModelCache>,
    stop: watch::Sender<bool>,
    client: reqwest::Client,
}

async fn setup(pool: PgPool, cfg: BatchConfig) -> Setup {
    let trainer = TestServer::start(pool, &[worker_config("w")]).await;
    let (status, exp) = trainer.submit(&tiny()).await;
    assert_eq!(status, 201, "{exp}");
    let id = exp["id"].as_str().unwrap().to_string();
    trainer.wait_status(&id, "succeeded", 120).await;

    let (stop, rx) = watch::channel(false);
    let hub = Hub::start(trainer.store.pool()).await.unwrap();
    let state = AppState::new(trainer.store.clone(), hub, rx.clone()).with_predict_batching(cfg);
    let models = state.models.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut stopped = rx;
    tokio::spawn(async move {
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
    });
    Setup {
        trainer,
        base,
        id,
        models,
        stop,
        client: reqwest::Client::new(),
    }
}

/// What a request sends: one raw PNG, or several as multipart (name, bytes).
#[derive(Clone)]
enum Body {
    Raw(Vec<u8>),
    Parts(Vec<(String, Vec<u8>)>),
}

impl Setup {
    async fn post(&self, body: Body) -> (u16, Value) {
        let req = self.client.post(format!(
            "{}/predict?experiment={}&top_k=3",
            self.base, self.id
        ));
        let req = match body {
            Body::Raw(bytes) => req.header("content-type", "image/png").body(bytes),
            Body::Parts(parts) => {
                let mut form = reqwest::multipart::Form::new();
                for (name, bytes) in parts {
                    let part = reqwest::multipart::Part::bytes(bytes)
                        .file_name(name.clone())
                        .mime_str("image/png")
                        .unwrap();
                    form = form.part(name, part);
                }
                req.multipart(form)
            }
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let body: Value = r.json().await.unwrap();
        if status != 200 {
            assert_eq!(ct, "application/problem+json", "{body}");
        }
        (status, body)
    }

    /// Sends every body at once; answers in the same order.
    async fn post_all(self: &Arc<Self>, bodies: Vec<Body>) -> Vec<(u16, Value)> {
        let tasks: Vec<_> = bodies
            .into_iter()
            .map(|b| {
                let s = self.clone();
                tokio::spawn(async move { s.post(b).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    /// Each image's prediction when it is sent alone, one request after another.
    async fn alone(&self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for i in 0..n {
            let (status, body) = self.post(Body::Raw(png(i))).await;
            assert_eq!(status, 200, "{body}");
            out.push(body["predictions"][0].clone());
        }
        out
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.trainer.stop().await;
    }
}

/// The same answer: label and top-k exactly, probabilities to float rounding (a batch's
/// matrix products may sum in another order than a single image's).
fn assert_same(got: &Value, want: &Value) {
    assert_eq!(got["label"], want["label"], "{got} vs {want}");
    let labels = |v: &Value| -> Vec<Value> {
        v["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["label"].clone())
            .collect()
    };
    assert_eq!(labels(got), labels(want), "{got} vs {want}");
    let (g, w) = (
        got["probabilities"].as_array().unwrap(),
        want["probabilities"].as_array().unwrap(),
    );
    assert_eq!(g.len(), 10);
    for (a, b) in g.iter().zip(w) {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6, "{got} vs {want}");
    }
}

fn parts(range: std::ops::Range<usize>) -> Body {
    Body::Parts(range.map(|i| (format!("{i}.png"), png(i))).collect())
}

#[sqlx::test]
async fn concurrent_requests_get_the_answers_each_image_gets_alone(pool: PgPool) {
    let cfg = BatchConfig {
        window: Duration::from_millis(20),
        max_batch: 64,
    };
    let s = Arc::new(setup(pool, cfg).await);
    let alone = s.alone(60).await;
    let before = s.models.stats();
    // One request at a time: each is its own forward pass, and none waits for the window.
    assert_eq!(before.passes, 60);
    assert_eq!(before.largest, 1);

    // 40 single images and 5 requests of 4 images, all at once.
    let mut bodies: Vec<Body> = (0..40).map(|i| Body::Raw(png(i))).collect();
    bodies.extend((0..5).map(|k| parts(40 + 4 * k..44 + 4 * k)));
    let answers = s.post_all(bodies).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        let preds = body["predictions"].as_array().unwrap();
        if i < 40 {
            assert_eq!(preds.len(), 1);
            assert_same(&preds[0], &alone[i]);
        } else {
            let first = 40 + 4 * (i - 40);
            assert_eq!(preds.len(), 4);
            for (j, p) in preds.iter().enumerate() {
                assert_eq!(p["filename"], format!("{}.png", first + j));
                assert_same(p, &alone[first + j]);
            }
        }
    }
    let after = s.models.stats();
    assert_eq!(after.requests - before.requests, 45);
    assert_eq!(after.images - before.images, 60);
    let passes = after.passes - before.passes;
    assert!(
        passes < 45,
        "45 concurrent requests took {passes} passes: no batching"
    );
    assert!(after.largest > 1);
    Arc::into_inner(s).unwrap().stop().await;
}

#[sqlx::test]
async fn a_bad_request_among_concurrent_ones_fails_alone(pool: PgPool) {
    let cfg = BatchConfig {
        window: Duration::from_millis(20),
        max_batch: 64,
    };
    let s = Arc::new(setup(pool, cfg).await);
    let alone = s.alone(20).await;
    let corrupt = b"\x89PNG\r\n\x1a\n garbage".to_vec();
    let mut bodies: Vec<Body> = (0..20).map(|i| Body::Raw(png(i))).collect();
    bodies.insert(5, Body::Raw(corrupt.clone()));
    bodies.insert(
        12,
        Body::Parts(vec![
            ("ok.png".into(), png(0)),
            ("broken.png".into(), corrupt),
        ]),
    );
    bodies.insert(15, Body::Raw(b"GIF89a not supported".to_vec()));
    let answers = s.post_all(bodies).await;
    let mut good = 0;
    for (i, (status, body)) in answers.iter().enumerate() {
        match i {
            5 => {
                assert_eq!(*status, 422, "{body}");
                assert_eq!(body["errors"][0]["field"], "image");
            }
            12 => {
                assert_eq!(*status, 422, "{body}");
                assert_eq!(body["errors"][0]["field"], "broken.png");
            }
            15 => assert_eq!(*status, 415, "{body}"),
            _ => {
                assert_eq!(*status, 200, "{body}");
                assert_same(&body["predictions"][0], &alone[good]);
                good += 1;
            }
        }
    }
    assert_eq!(good, 20);
    Arc::into_inner(s).unwrap().stop().await;
}

#[sqlx::test]
async fn no_forward_pass_exceeds_the_batch_limit(pool: PgPool) {
    let cfg = BatchConfig {
        window: Duration::from_millis(50),
        max_batch: 4,
    };
    let s = Arc::new(setup(pool, cfg).await);
    let alone = s.alone(30).await;
    // 20 single images and two requests of 5 images: more than one pass may hold.
    let mut bodies: Vec<Body> = (0..20).map(|i| Body::Raw(png(i))).collect();
    bodies.push(parts(20..25));
    bodies.push(parts(25..30));
    let before = s.models.stats();
    let answers = s.post_all(bodies).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        let preds = body["predictions"].as_array().unwrap();
        let first = if i < 20 { i } else { 20 + 5 * (i - 20) };
        for (j, p) in preds.iter().enumerate() {
            assert_same(p, &alone[first + j]);
        }
    }
    let after = s.models.stats();
    assert_eq!(after.largest, 4, "{after:?}");
    assert_eq!(after.images - before.images, 30);
    // 30 images in passes of at most 4: at least 8 passes.
    assert!(
        after.passes - before.passes >= 30_u64.div_ceil(4),
        "{after:?}"
    );
    Arc::into_inner(s).unwrap().stop().await;
}
