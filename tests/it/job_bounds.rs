//! Each job in its own bounded process: what cannot fit is refused at submission, and a
//! job that outgrows its memory budget anyway fails alone, with the reason, while the
//! server and every other account's runs go on.
//!
//! The enforcement tests start `trainyard serve` from the built binary (its job processes
//! are that binary too) with a test-only flag that lets an oversized spec through
//! admission, so that the kernel's enforcement is what is tested.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use trainyard::api::app;
use trainyard::spec::footprint::JobLimits;
use trainyard::store::Store;

use crate::common::procs::{Harness, Timing, eventually};
use crate::common::service::{TestServer, oneshot_json, oneshot_state, worker_config};

/// The spec of the report: validation accepted it, and preparing its data asked for 62.9 GB.
fn the_reported_spec() -> Value {
    strided([512, 512], 10)
}

/// The reported spec's model (one strided 64x64 convolution: small whatever the images'
/// size) on images resized to `resize`, for `classes` classes.
fn strided(resize: [u32; 2], classes: usize) -> Value {
    json!({"preset": "torch-cnn", "epochs": 1, "batch_size": 1,
        "dataset": {"resize": resize, "validation": "none"},
        "model": {"layers": [
            {"type": "conv2d", "filters": 1, "kernel": 64, "stride": 64},
            {"type": "flatten"},
            {"type": "dense", "units": classes, "activation": "log_softmax"}]}})
}

fn post(uri: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn fields(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn queued(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn what_cannot_fit_a_job_is_refused_at_submission_naming_the_field(pool: PgPool) {
    let limits = JobLimits {
        memory_bytes: Some(1 << 30),
        max_flops: Some(1e14),
        max_time_limit_secs: 3600.0,
    };
    let app = app(oneshot_state(pool.clone()).await.with_job_limits(limits));

    // The reported spec, from POST /experiments and from the form's validation alike.
    for uri in ["/experiments", "/specs/validate"] {
        let (status, _, p) = oneshot_json(&app, post(uri, &the_reported_spec())).await;
        assert_eq!(status, 422, "{uri}: {p}");
        let f = fields(&p);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, "dataset.resize");
        assert!(
            f[0].1.starts_with("the prepared data needs 68.4 GiB")
                && f[0].1.ends_with("a job may use at most 1 GiB"),
            "{}",
            f[0].1
        );
    }
    // A spec that fits shows its estimate.
    let small = json!({"preset": "torch-cnn", "dataset": {"train_limit": 256, "test_limit": 64}});
    let (status, _, v) = oneshot_json(&app, post("/specs/validate", &small)).await;
    assert_eq!(status, 200, "{v}");
    let peak = v["footprint"]["peak_bytes"].as_u64().unwrap();
    assert!(peak > 32 << 20 && peak < 256 << 20, "{v}");

    // A sweep whose one child cannot fit queues nothing, and names the sweep's field.
    let mut base = strided([28, 28], 10);
    base["model"]["layers"][0]["kernel"] = json!(7);
    base["model"]["layers"][0]["stride"] = json!(7);
    let sweep = json!({"base": base, "grid": {"dataset.resize": [[28, 28], [512, 512]]}});
    let (status, _, p) = oneshot_json(&app, post("/sweeps", &sweep)).await;
    assert_eq!(status, 422, "{p}");
    let f = fields(&p);
    assert!(
        f.iter()
            .any(|(field, why)| field == "grid[\"dataset.resize\"]"
                && why.contains("a job may use at most 1 GiB")),
        "{f:?}"
    );

    // Time and compute: a time limit over the server's, and more FLOPs than its cap.
    let mut long = small.clone();
    long["time_limit"] = json!(7200);
    let (status, _, p) = oneshot_json(&app, post("/experiments", &long)).await;
    assert_eq!(status, 422);
    assert_eq!(fields(&p)[0].0, "time_limit");
    let heavy = json!({"preset": "keras-cnn", "epochs": 1000});
    let (status, _, p) = oneshot_json(&app, post("/experiments", &heavy)).await;
    assert_eq!(status, 422, "{p}");
    assert_eq!(fields(&p)[0].0, "epochs", "{p}");
    assert_eq!(queued(&pool).await, 0);
}

#[sqlx::test]
async fn an_uploaded_dataset_resized_past_the_budget_is_refused(pool: PgPool) {
    let s = TestServer::start(pool.clone(), &[]).await;
    let (status, d) = crate::datasets::upload(
        &s,
        "?name=shapes",
        "application/zip",
        crate::datasets::shapes_zip(60, 20),
    )
    .await;
    assert_eq!(status, 201, "{d}");
    let limits = JobLimits {
        memory_bytes: Some(256 << 20),
        ..JobLimits::default()
    };
    let app = app(oneshot_state(pool.clone()).await.with_job_limits(limits));
    let mut base = strided([64, 64], 4);
    base["dataset"]["id"] = d["id"].clone();
    let mut big = base.clone();
    big["dataset"]["resize"] = json!([512, 512]);
    let (status, _, p) = oneshot_json(&app, post("/experiments", &big)).await;
    assert_eq!(status, 422, "{p}");
    assert_eq!(fields(&p)[0].0, "dataset.resize", "{p}");
    // 80 RGB images of 512x512 floats: 240 MiB, and their copy while training.
    let why = &fields(&p)[0].1;
    assert!(why.starts_with("the prepared data needs 241 MiB"), "{why}");
    let (status, _, v) = oneshot_json(&app, post("/experiments", &base)).await;
    assert_eq!(status, 201, "{v}");
    s.stop().await;
}

/// `trainyard serve` with two worker slots, keys on, the memory admission skipped and
/// `flags`; once its log says the budget is enforced `by`, queues `big` for one account and
/// a small run for another, and checks that `big` fails alone with `reason`, its process
/// having ended with an `exit` that contains `exit`.
async fn fails_alone(
    pool: &PgPool,
    flags: &[&str],
    by: &str,
    big: Value,
    reason: &str,
    exit: &str,
) {
    let h = Harness::new(pool, Timing::default());
    let mut all = vec!["--auth", "on", "--skip-memory-admission"];
    all.extend(flags);
    let (mut server, base) = h.serve_with("api", 2, "127.0.0.1:0", &all);
    server.wait_log(|l| l["fields"]["by"] == by, Duration::from_secs(5));
    let store = Store::from_pool(pool.clone());
    let bob = store.create_key("bob", false).await.unwrap().key;
    let alice = store.create_key("alice", false).await.unwrap().key;
    let tiny = json!({"preset": "torch-cnn", "epochs": 1,
        "dataset": {"train_limit": 256, "test_limit": 64}});
    let big = submit(&base, &bob, &big).await;
    let other = submit(&base, &alice, &tiny).await;

    let (status, error, rescues, attempt) = ended(pool, &big, 180).await;
    assert_eq!(status, "failed");
    assert_eq!(error.as_deref(), Some(reason));
    assert_eq!((rescues, attempt), (0, 1));
    assert_eq!(ended(pool, &other, 120).await.0, "succeeded");
    // The server answered throughout and still does, in the same process.
    assert!(
        server.wait_exit(Duration::from_millis(10)).is_none(),
        "the server exited"
    );
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    server.wait_log(
        |l| {
            crate::common::procs::message(l) == "job process ended"
                && l["fields"]["exit"].as_str().unwrap_or("").contains(exit)
        },
        Duration::from_secs(5),
    );
    // Not rescued later either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _, rescues, attempt) = ended(pool, &big, 1).await;
    assert_eq!((status.as_str(), rescues, attempt), ("failed", 0, 1));
}

async fn submit(base: &str, key: &str, spec: &Value) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/experiments"))
        .bearer_auth(key)
        .json(spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `(status, error, rescues, attempt)` once the experiment has ended.
async fn ended(pool: &PgPool, id: &str, secs: u64) -> (String, Option<String>, i32, i32) {
    let id: uuid::Uuid = id.parse().unwrap();
    eventually(secs, "the experiment to end", || async {
        let r: (String, Option<String>, i32, i32) =
            sqlx::query_as("SELECT status, error, rescues, attempt FROM experiments WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        ["succeeded", "failed", "cancelled"]
            .contains(&r.0.as_str())
            .then_some(r)
    })
    .await
}

#[sqlx::test]
async fn a_job_over_its_rlimit_fails_alone_with_the_reason_and_is_not_rescued(pool: PgPool) {
    // 70,000 images resized to 104x104: about 3 GiB of floats. The allocation is refused
    // and the job exits with status 86.
    let big = json!({"preset": "torch-cnn", "epochs": 1, "batch_size": 32,
        "dataset": {"resize": [104, 104]}});
    fails_alone(
        &pool,
        &[
            "--job-memory-mib",
            "1024",
            "--job-memory-limit-by",
            "rlimit",
        ],
        "RLIMIT_DATA",
        big,
        "its process exceeded its 1,024 MiB memory limit while preparing the data",
        "86",
    )
    .await;
}

/// Whether this process may make memory cgroups (as root, with the v1 controller).
fn cgroups_here() -> bool {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(rel) = own.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, c, path) = (p.next()?, p.next()?, p.next()?);
        c.split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    }) else {
        return false;
    };
    let dir = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(rel.trim_start_matches('/'))
        .join(format!("trainyard-test-{}", std::process::id()));
    let ok = std::fs::create_dir(&dir).is_ok();
    let _ = std::fs::remove_dir(&dir);
    ok
}

#[sqlx::test]
async fn a_job_killed_by_its_memory_cgroup_fails_alone_with_the_reason(pool: PgPool) {
    if !cgroups_here() {
        eprintln!("SKIPPED: no memory cgroup can be made here (needs root and cgroup v1)");
        return;
    }
    // All of MNIST at 28x28: 220 MB of floats beside 55 MB of pixels, past 128 MiB. The
    // cgroup's OOM killer ends the job.
    fails_alone(
        &pool,
        &["--job-memory-mib", "128", "--job-memory-limit-by", "cgroup"],
        "a memory cgroup",
        json!({"preset": "keras-cnn", "epochs": 1}),
        "its process exceeded its 128 MiB memory limit while preparing the data",
        "SIGKILL",
    )
    .await;
}

#[sqlx::test]
async fn a_time_limit_stops_at_an_epoch_boundary_and_keeps_the_checkpoints(pool: PgPool) {
    let s = TestServer::start(pool.clone(), &[worker_config("w")]).await;
    let spec = json!({"preset": "torch-cnn", "epochs": 200, "batch_size": 64,
        "dataset": {"train_limit": 512, "test_limit": 64}, "time_limit": 1.5});
    let (status, e) = s.submit(&spec).await;
    assert_eq!(status, 201, "{e}");
    let id = e["id"].as_str().unwrap();
    let done = s.wait_status(id, "succeeded", 60).await;
    assert_eq!(done["stop_reason"], "time_limit", "{done}");
    let epochs = done["epochs_done"].as_u64().unwrap();
    assert!((1..200).contains(&epochs), "{done}");
    // Its last epoch's checkpoint is there to download.
    let r = s
        .client
        .get(s.url(&format!("/experiments/{id}/checkpoints/last")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}
