//! What the service says it is doing: `GET /metrics` scraped from a real server after
//! real traffic (a worker training, predictions, an open curve stream, requests to known
//! and unknown routes), checked family by family and by Prometheus's own linter.
//!
//! Counters and histograms belong to the process, so tests running beside each other in
//! this binary add to the same ones: those are checked as at least what this test did.
//! The gauges read from the test's own database and server are checked exactly.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs;
use common::service::{TestServer, worker_config};
use serde_json::{Value, json};
use sqlx::PgPool;

/// torch-cnn, one epoch on a small slice: a second or two.
fn tiny() -> Value {
    json!({"preset": "torch-cnn", "epochs": 1, "dataset": {"train_limit": 64, "test_limit": 64}})
}

fn png(i: usize) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(28, 28, common::mnist().test.image(i).to_vec())
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// One scrape's text.
struct Scrape(String);

impl Scrape {
    /// The value of the sample `series` (its name and labels exactly as exposed), if any.
    fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
    }

    /// The value of `series`, which must be exposed.
    fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.0))
    }
}

async fn scrape(s: &TestServer) -> Scrape {
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape(r.text().await.unwrap())
}

async fn predict(s: &TestServer, experiment: &str) -> u16 {
    s.client
        .post(s.url(&format!("/predict?experiment={experiment}")))
        .header("content-type", "image/png")
        .body(png(0))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[sqlx::test]
async fn a_scrape_shows_the_queue_training_predictions_requests_and_open_streams(pool: PgPool) {
    // No worker yet: the experiment waits in the queue and its curve stays open.
    let s = TestServer::start(pool, &[]).await;
    let (status, exp) = s.submit(&tiny()).await;
    assert_eq!(status, 201, "{exp}");
    let id = exp["id"].as_str().unwrap().to_string();
    let stream = s
        .client
        .get(s.url(&format!("/experiments/{id}/curve")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let m = scrape(&s).await;
    assert_eq!(m.value("trainyard_curve_streams_open"), 1.0);
    assert_eq!(m.value("trainyard_curve_streams_limit"), 1000.0);
    assert_eq!(m.value("trainyard_experiments{status=\"queued\"}"), 1.0);
    assert_eq!(m.value("trainyard_experiments{status=\"succeeded\"}"), 0.0);
    assert!(m.value("trainyard_queue_oldest_wait_seconds") >= 0.1);
    assert_eq!(m.value("trainyard_database_up"), 1.0);

    let worker = TestServer::spawn_worker(
        &s.store,
        worker_config("metrics-worker"),
        s.shutdown_receiver(),
    )
    .await;
    s.wait_status(&id, "succeeded", 120).await;
    // The stream ends with the experiment (its client is still connected).
    procs::eventually(10, "the curve stream to close", || async {
        (scrape(&s).await.value("trainyard_curve_streams_open") == 0.0).then_some(())
    })
    .await;
    drop(stream);

    assert_eq!(predict(&s, &id).await, 200);
    assert_eq!(predict(&s, &uuid::Uuid::nil().to_string()).await, 404);
    assert_eq!(s.get_json(&format!("/experiments/{id}")).await.0, 200);
    assert_eq!(s.get_json("/no/such/route").await.0, 404);

    let m = scrape(&s).await;
    assert_eq!(m.value("trainyard_experiments{status=\"queued\"}"), 0.0);
    assert_eq!(m.value("trainyard_experiments{status=\"succeeded\"}"), 1.0);
    assert_eq!(m.value("trainyard_queue_oldest_wait_seconds"), 0.0);
    assert!(m.value("trainyard_jobs_claimed_total") >= 1.0);
    assert!(m.value("trainyard_epoch_duration_seconds_count") >= 1.0);
    assert!(m.value("trainyard_epoch_duration_seconds_sum") > 0.0);
    assert!(m.value("trainyard_training_images_per_second_count") >= 1.0);
    assert!(m.value("trainyard_predict_requests_total{status=\"200\"}") >= 1.0);
    assert!(m.value("trainyard_predict_requests_total{status=\"404\"}") >= 1.0);
    assert!(m.value("trainyard_predict_duration_seconds_count") >= 2.0);
    assert!(m.value("trainyard_predict_batch_images_count") >= 1.0);
    // Requests are counted by route template, and a path no route matches by one label.
    let route = |method: &str, route: &str, status: u16| {
        m.value(&format!(
            "trainyard_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
        ))
    };
    assert!(route("POST", "/experiments", 201) >= 1.0);
    assert!(route("GET", "/experiments/{id}", 200) >= 1.0);
    assert!(route("GET", "/experiments/{id}/curve", 200) >= 1.0);
    assert!(route("POST", "/predict", 200) >= 1.0);
    assert!(route("GET", "unmatched", 404) >= 1.0);
    assert!(
        m.value(
            "trainyard_http_request_duration_seconds_count{method=\"POST\",route=\"/predict\"}"
        ) >= 2.0
    );
    assert!(!m.0.contains(&id), "a raw path became a label:\n{}", m.0);
    assert!(!m.0.contains("/no/such/route"), "{}", m.0);

    s.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
}

#[sqlx::test]
async fn running_experiments_are_counted_per_worker_process(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    for _ in 0..3 {
        assert_eq!(s.submit(&tiny()).await.0, 201);
    }
    // Two tasks of one process and one of another hold leases (no worker trains them).
    for owner in ["proc-a/0", "proc-a/1", "proc-b/0"] {
        assert!(s.store.claim(owner, 60.0).await.unwrap().is_some());
    }
    let m = scrape(&s).await;
    assert_eq!(m.value("trainyard_experiments{status=\"running\"}"), 3.0);
    assert_eq!(
        m.value("trainyard_worker_running_experiments{worker=\"proc-a\"}"),
        2.0
    );
    assert_eq!(
        m.value("trainyard_worker_running_experiments{worker=\"proc-b\"}"),
        1.0
    );
    s.stop().await;
}

#[sqlx::test]
async fn promtool_finds_nothing_to_complain_about_in_a_scrape(pool: PgPool) {
    // Every family with samples: a trained experiment, a prediction, requests.
    let s = TestServer::start(pool, &[worker_config("promtool-worker")]).await;
    let (_, exp) = s.submit(&tiny()).await;
    let id = exp["id"].as_str().unwrap().to_string();
    s.wait_status(&id, "succeeded", 120).await;
    assert_eq!(predict(&s, &id).await, 200);
    assert_eq!(s.get_json("/no/such/route").await.0, 404);
    let text = scrape(&s).await.0;
    for family in [
        "trainyard_experiments",
        "trainyard_epoch_duration_seconds",
        "trainyard_predict_batch_images",
        "trainyard_http_requests_total",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{text}");
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool, from Debian's `prometheus` package (tests/run.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{:?}: {said}\n{text}", out.status);
    assert_eq!(said, "", "promtool's warnings for:\n{text}");
    s.stop().await;
}
