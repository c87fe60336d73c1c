//! What the service says it is doing: `GET /metrics` scraped from a real server after
//! real traffic (a worker training, predictions, an open curve stream, requests to known
//! and unknown routes), checked family by family and by Prometheus's own linter; and the
//! job span on a real `trainyard serve`'s JSON log lines.
//!
//! Counters and histograms belong to the process, so tests running beside each other in
//! this binary add to the same ones: those are checked as at least what this test did.
//! The gauges read from the test's own database and server are checked exactly.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::{self, Harness, Timing};
use common::service::{TestServer, worker_config};
use serde_json::{Value, json};
use sqlx::PgPool;

/// torch-cnn, one epoch on a small slice: a second or two.
fn tiny() -> Value {
    json!({"preset": "torch-cnn", "epochs": 1, "dataset": {"train_limit": 64, "test_limit": 64}})
}

/// A spec with batch norm, which the fused CPU kernels do not implement.
fn batch_norm() -> Value {
    json!({
        "version": 1,
        "dataset": {"name": "mnist", "train_limit": 64, "test_limit": 64},
        "model": {"init": "keras", "layers": [
            {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
            {"type": "batch_norm"},
            {"type": "flatten"},
            {"type": "dense", "units": 10}
        ]},
        "optimizer": {"type": "sgd", "learning_rate": 0.01},
        "batch_size": 32,
        "epochs": 1
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
        assert!(s.store.claim(owner, 60.0, false).await.unwrap().is_some());
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

/// The `span` of a JSON log line, when it was logged inside a job.
fn job_span(line: &Value) -> Option<&Value> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "job")
}

#[sqlx::test]
async fn every_job_log_line_names_its_job_and_the_start_names_the_engine_path(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (p, base) = h.serve_with("serve", 1, "127.0.0.1:0", &["--auth", "off"]);
    let client = reqwest::Client::new();
    let kernels = procs::submit(&client, &base, &tiny()).await;
    let graph = procs::submit(&client, &base, &batch_norm()).await;
    for id in [kernels, graph] {
        let id = id.to_string();
        p.wait_log(
            |l| {
                procs::message(l) == "experiment ended"
                    && job_span(l).is_some_and(|s| s["experiment_id"] == id)
            },
            Duration::from_secs(120),
        );
    }
    let account: String = sqlx::query_scalar(
        "SELECT a.name FROM experiments e JOIN accounts a ON a.id = e.account_id WHERE e.id = $1",
    )
    .bind(kernels)
    .fetch_one(&pool)
    .await
    .unwrap();

    let lines = p.log_lines();
    // Whatever a job logs, in its supervisor or in its job process, is inside its span.
    let job_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("trainyard::worker::") && t != "trainyard::worker")
        })
        .collect();
    for l in &job_lines {
        let span = job_span(l).unwrap_or_else(|| panic!("outside a job span: {l}"));
        assert_eq!(span["attempt"], 1, "{l}");
        assert_eq!(span["account"], account.as_str(), "{l}");
    }
    let of = |id: uuid::Uuid| -> Vec<&Value> {
        let id = id.to_string();
        job_lines
            .iter()
            .copied()
            .filter(|l| job_span(l).is_some_and(|s| s["experiment_id"] == id.as_str()))
            .collect()
    };
    let start = |id: uuid::Uuid| -> Value {
        let lines = of(id);
        let messages: Vec<&str> = lines.iter().map(|l| procs::message(l)).collect();
        assert_eq!(
            messages,
            [
                "claimed experiment",
                "job process started",
                "set up",
                "training started",
                "job process ended",
                "experiment ended"
            ],
            "{id}"
        );
        lines[2]["fields"].clone()
    };

    let fast = start(kernels);
    assert_eq!(fast["engine"], "cpu-kernels", "{fast}");
    assert_eq!(fast.get("engine_reason"), None, "{fast}");
    let slow = start(graph);
    assert_eq!(slow["engine"], "candle-graph", "{slow}");
    assert!(
        slow["engine_reason"]
            .as_str()
            .is_some_and(|r| r.contains("batch_norm")),
        "{slow}"
    );
}
