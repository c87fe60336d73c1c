//! The service end to end against the real PostgreSQL: one database per test
//! (`#[sqlx::test]`), a server on a real socket, real workers training small slices.

use crate::common;

use std::time::Duration;

use common::service::{TestServer, read_curve, worker_config};
use serde_json::{Value, json};
use sqlx::PgPool;
use trainyard::data::prepare::prepare;
use trainyard::engine::{Checkpoint, EngineError, Observer, Trainer};
use trainyard::store::StoreError;
use trainyard::store::queue::{Ending, EpochRecord};

/// torch-cnn on a small slice: a few seconds per epoch at most.
fn tiny(epochs: u32) -> Value {
    json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 600, "test_limit": 200},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50,
        "epochs": epochs,
        "shuffle": true,
        "device": "cpu"
    })
}

fn png(pixels: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(28, 28, pixels.to_vec())
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[sqlx::test]
async fn submitted_experiment_is_trained_followed_live_stored_and_used_by_predict(pool: PgPool) {
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let (status, exp) = s.submit(&tiny(2)).await;
    assert_eq!(status, 201, "{exp}");
    assert_eq!(exp["summary"]["parameters"], 29066);
    let id = exp["id"].as_str().unwrap().to_string();

    let events = read_curve(
        &s.client,
        &s.url(&format!("/experiments/{id}/curve")),
        None,
        120,
    )
    .await;
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e.event != "progress")
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["status", "status", "epoch", "epoch", "status", "end"],
        "{events:?}"
    );
    assert_eq!(events[0].data["status"], "queued");
    let epochs: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "epoch")
        .map(|e| &e.data)
        .collect();
    assert_eq!(epochs[1]["epoch"], 2);
    let end = events.last().unwrap();
    assert_eq!(end.data["status"], "succeeded");
    assert!(
        events.iter().all(|e| e.id.is_some()),
        "every event has an id"
    );

    // Metrics and checkpoints are stored.
    let (_, metrics) = s.get_json(&format!("/experiments/{id}/metrics")).await;
    assert_eq!(metrics.as_array().unwrap().len(), 2);
    assert_eq!(&metrics[1], epochs[1]);
    let csv = s
        .client
        .get(s.url(&format!("/experiments/{id}/metrics")))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("epoch,train_loss,"), "{csv}");
    assert_eq!(csv.lines().count(), 3);
    // The same by ?format=csv (a link, a plain curl); the answer varies by Accept.
    let by_query = s
        .client
        .get(s.url(&format!("/experiments/{id}/metrics?format=csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.headers()["vary"], "accept");
    assert!(
        by_query.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(by_query.text().await.unwrap(), csv);
    let (status, problem) = s
        .get_json(&format!("/experiments/{id}/metrics?format=xml"))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "format", "{problem}");
    let (_, ckpts) = s.get_json(&format!("/experiments/{id}/checkpoints")).await;
    let ckpts = ckpts.as_array().unwrap();
    assert!(!ckpts.is_empty());
    // The list says which checkpoint `best` and `last` name.
    let (_, exp) = s.get_json(&format!("/experiments/{id}")).await;
    let flagged = |k: &str| -> Vec<&Value> {
        ckpts
            .iter()
            .filter(|c| c[k] == true)
            .map(|c| &c["epoch"])
            .collect()
    };
    assert_eq!(flagged("last"), [&json!(2)]);
    assert_eq!(flagged("best"), [&exp["best_epoch"]]);
    let last = s
        .client
        .get(s.url(&format!("/experiments/{id}/checkpoints/last")))
        .send()
        .await
        .unwrap();
    assert_eq!(last.headers()["x-checkpoint-epoch"], "2");
    let ck = Checkpoint::from_bytes(&last.bytes().await.unwrap(), None).unwrap();
    assert_eq!(ck.epoch, 2);

    // Predict real MNIST test images, one raw PNG and twenty in one multipart request.
    let test = &common::mnist().test;
    let r = s
        .client
        .post(s.url(&format!("/predict?experiment={id}&checkpoint=last&top_k=2")))
        .header("content-type", "image/png")
        .body(png(test.image(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["epoch"], 2);
    assert_eq!(p["predictions"][0]["top_k"].as_array().unwrap().len(), 2);
    let sum: f64 = p["predictions"][0]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4);
    let mut form = reqwest::multipart::Form::new();
    for i in 0..20 {
        let part = reqwest::multipart::Part::bytes(png(test.image(i)))
            .file_name(format!("{i}.png"))
            .mime_str("image/png")
            .unwrap();
        form = form.part(format!("image{i}"), part);
    }
    let r = s
        .client
        .post(s.url(&format!("/predict?experiment={id}")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    let preds = p["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 20);
    assert_eq!(preds[3]["filename"], "3.png");
    let correct = preds
        .iter()
        .enumerate()
        .filter(|(i, p)| p["label"] == json!(test.labels[*i]))
        .count();
    assert!(correct >= 12, "{correct}/20 correct");
    assert!(
        preds.iter().all(|p| p["inverted"] == false),
        "MNIST's own are not inverted"
    );

    // Dark ink on white, as people draw and scan: `auto` inverts it back, and the answer
    // is exactly the one for the original; `false` leaves it as it is.
    let ask = |body: Vec<u8>, invert: &str| {
        let url = s.url(&format!("/predict?experiment={id}&invert={invert}"));
        let req = s
            .client
            .post(url)
            .header("content-type", "image/png")
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let original = test.image(0);
    let on_paper: Vec<u8> = original.iter().map(|p| 255 - p).collect();
    let (_, plain) = ask(png(original), "auto").await;
    let (_, auto) = ask(png(&on_paper), "auto").await;
    assert_eq!(auto["predictions"][0]["inverted"], true, "{auto}");
    assert_eq!(
        auto["predictions"][0]["probabilities"],
        plain["predictions"][0]["probabilities"]
    );
    let (_, never) = ask(png(&on_paper), "false").await;
    assert_eq!(never["predictions"][0]["inverted"], false);
    let (_, always) = ask(png(original), "true").await;
    assert_eq!(always["predictions"][0]["inverted"], true);
    let (status, problem) = ask(png(original), "maybe").await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["field"], "invert", "{problem}");
    // A succeeded experiment cannot be cancelled.
    assert_eq!(s.cancel(&id).await.status(), 409);
    s.stop().await;
}

#[sqlx::test]
async fn two_workers_never_train_the_same_experiment(pool: PgPool) {
    let s = TestServer::start(pool.clone(), &[worker_config("a"), worker_config("b")]).await;
    let mut ids = Vec::new();
    for seed in 0..6 {
        let mut spec = tiny(1);
        spec["seed"] = json!(seed);
        spec["dataset"]["train_limit"] = json!(200);
        ids.push(s.submit(&spec).await.1["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        s.wait_status(id, "succeeded", 120).await;
    }
    // Each ran exactly once, on one worker: one claim, one "running" event.
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT e.attempt, (SELECT count(*) FROM experiment_events v
                            WHERE v.experiment_id = e.id AND v.data->>'status' = 'running')
         FROM experiments e",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| *r == (1, 1)), "{rows:?}");
    s.stop().await;
}

/// Trains `epochs` epochs of a spec as a worker would, keeping each checkpoint.
fn train_locally(spec: &Value, stop_after: Option<u32>) -> Vec<Checkpoint> {
    struct Keep(Vec<Checkpoint>, Option<u32>);
    impl Observer for Keep {
        fn on_epoch(&mut self, c: &Checkpoint) -> Result<(), EngineError> {
            self.0.push(c.clone());
            Ok(())
        }
        fn should_stop(&mut self) -> bool {
            self.1.is_some_and(|n| self.0.len() as u32 >= n)
        }
    }
    let spec = trainyard::spec::from_value(spec.clone()).unwrap();
    let summary = trainyard::spec::validate(&spec).unwrap();
    let data = prepare(common::mnist(), &spec.dataset);
    let mut t = Trainer::new(&spec, &summary, &data, &candle_core::Device::Cpu).unwrap();
    let mut keep = Keep(Vec::new(), stop_after);
    t.run(&mut keep).unwrap();
    keep.0
}

#[sqlx::test]
async fn an_expired_lease_is_rescued_and_the_run_resumes_from_its_last_checkpoint(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let spec = tiny(3);
    let (_, exp) = s.submit(&spec).await;
    let id: uuid::Uuid = exp["id"].as_str().unwrap().parse().unwrap();

    // A worker claims it, stores epoch 1, then goes silent (as if stopped).
    let claim = s.store.claim("ghost", 1.0, false).await.unwrap().unwrap();
    assert_eq!(claim.attempt, 1);
    let ghost = train_locally(&claim.spec, Some(1));
    let ghost = trainyard::worker::record::new_epoch(&ghost[0]).unwrap();
    s.store.record_epoch(id, 1, &ghost, false).await.unwrap();
    // A retry of the same write (its answer lost) is a no-op, not a second row.
    s.store.record_epoch(id, 1, &ghost, false).await.unwrap();
    assert_eq!(s.store.metrics(id).await.unwrap().len(), 1);

    // A real worker rescues it after the lease expires and finishes from epoch 1.
    let rx = s.shutdown_receiver();
    let w = TestServer::spawn_worker(&s.store, worker_config("rescuer"), rx).await;
    let done = s.wait_status(&id.to_string(), "succeeded", 120).await;
    assert_eq!(done["rescues"], 1);
    assert_eq!(done["attempt"], 2);

    // The stored curve equals an uninterrupted run of the same spec.
    let full = train_locally(&claim.spec, None);
    let stored = s.store.metrics(id).await.unwrap();
    let untimed = |r: EpochRecord| EpochRecord {
        train_seconds: 0.0,
        images_per_second: 0.0,
        ..r
    };
    let expected: Vec<EpochRecord> = full
        .last()
        .unwrap()
        .history
        .iter()
        .map(|m| untimed(m.into()))
        .collect();
    assert_eq!(
        stored.into_iter().map(untimed).collect::<Vec<_>>(),
        expected
    );

    // The ghost wakes up: every write it tries is refused.
    let late = s.store.record_epoch(id, 1, &ghost, false).await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    assert!(matches!(
        s.store.heartbeat(id, 1, 1.0).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        s.store.finish(id, 1, &Ending::Failed("x".into())).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(
        s.get_json(&format!("/experiments/{id}")).await.1["status"],
        "succeeded"
    );
    drop(w);
    s.stop().await;
}

#[sqlx::test]
async fn cancel_stops_queued_at_once_and_running_at_the_next_batch(pool: PgPool) {
    let s = TestServer::start(pool.clone(), &[]).await;
    let (_, queued) = s.submit(&tiny(1)).await;
    let qid = queued["id"].as_str().unwrap();
    let r = s.cancel(qid).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");

    // A long run on a worker: cancel once it has finished an epoch.
    let mut long = tiny(50);
    long["dataset"]["train_limit"] = json!(2000);
    let (_, running) = s.submit(&long).await;
    let rid = running["id"].as_str().unwrap().to_string();
    let rx = s.shutdown_receiver();
    let _w = TestServer::spawn_worker(&s.store, worker_config("w"), rx).await;
    s.wait_first_epoch(&rid, 60).await;
    let r = s.cancel(&rid).await;
    assert_eq!(r.json::<Value>().await.unwrap()["cancel_requested"], true);
    let done = s.wait_status(&rid, "cancelled", 30).await;
    let kept = done["epochs_done"].as_i64().unwrap();
    assert!((1..50).contains(&kept), "{done}");
    let (_, metrics) = s.get_json(&format!("/experiments/{rid}/metrics")).await;
    assert_eq!(metrics.as_array().unwrap().len() as i64, kept);
    // Cancelling a cancelled experiment again is a no-op.
    assert_eq!(s.cancel(qid).await.status(), 200);
    s.stop().await;
}

#[sqlx::test]
async fn a_cancel_requested_while_the_worker_is_lost_ends_cancelled_not_requeued(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let (_, exp) = s.submit(&tiny(3)).await;
    let id = exp["id"].as_str().unwrap().to_string();
    // A worker claims it and goes silent; the client cancels meanwhile.
    s.store.claim("ghost", 0.5, false).await.unwrap().unwrap();
    let r = s.cancel(&id).await;
    assert_eq!(r.json::<Value>().await.unwrap()["cancel_requested"], true);
    // The rescuer of another worker ends it instead of handing it to someone to train.
    let _w = TestServer::spawn_worker(&s.store, worker_config("w"), s.shutdown_receiver()).await;
    let e = s.wait_status(&id, "cancelled", 30).await;
    assert_eq!(e["attempt"], 1, "never claimed again: {e}");
    s.stop().await;
}

#[sqlx::test]
async fn shutdown_hands_a_running_experiment_back_without_spending_a_rescue(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let mut long = tiny(50);
    long["dataset"]["train_limit"] = json!(2000);
    let (_, exp) = s.submit(&long).await;
    let id = exp["id"].as_str().unwrap().to_string();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let w = TestServer::spawn_worker(&s.store, worker_config("w"), rx).await;
    s.wait_first_epoch(&id, 60).await;
    let t0 = std::time::Instant::now();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), w)
        .await
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        t0.elapsed()
    );
    let e = s.get_json(&format!("/experiments/{id}")).await.1;
    assert_eq!(e["status"], "queued", "{e}");
    assert_eq!(e["rescues"], 0);
    assert!(e["epochs_done"].as_i64().unwrap() >= 1);
    s.stop().await;
}

#[sqlx::test]
async fn idempotency_key_makes_retries_safe(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let post = |body: Value| {
        s.client
            .post(s.url("/experiments"))
            .header("idempotency-key", "retry-1")
            .json(&body)
            .send()
    };
    let a = post(tiny(1)).await.unwrap();
    assert_eq!(a.status(), 201);
    let location = a.headers()["location"].to_str().unwrap().to_string();
    let a: Value = a.json().await.unwrap();
    let b = post(tiny(1)).await.unwrap();
    assert_eq!(b.status(), 201);
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(
        location,
        format!("/experiments/{}", a["id"].as_str().unwrap())
    );
    let c = post(tiny(2)).await.unwrap();
    assert_eq!(c.status(), 409);
    assert_eq!(c.headers()["content-type"], "application/problem+json");
    let (_, list) = s.get_json("/experiments").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[sqlx::test]
async fn an_experiment_cancelled_before_training_says_it_never_will_have_a_checkpoint(
    pool: PgPool,
) {
    let s = TestServer::start(pool, &[]).await;
    let (_, exp) = s.submit(&tiny(1)).await;
    let id = exp["id"].as_str().unwrap();
    let waiting = s
        .client
        .get(s.url(&format!("/experiments/{id}/checkpoints/best")))
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status(), 409);
    let body: Value = waiting.json().await.unwrap();
    assert_eq!(
        body["detail"],
        "the experiment has no checkpoint yet (queued)"
    );

    assert_eq!(s.cancel(id).await.status(), 200);
    let never = "the experiment has no checkpoint and never will (cancelled)";
    for which in ["best", "last"] {
        let r = s
            .client
            .get(s.url(&format!("/experiments/{id}/checkpoints/{which}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(r.json::<Value>().await.unwrap()["detail"], never);
    }
    // /predict says the same, in the same words.
    let body = png(&[0u8; 28 * 28]);
    let r = s
        .client
        .post(s.url(&format!("/predict?experiment={id}")))
        .header("content-type", "image/png")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["detail"], never);
    // An epoch that never was names how many there are.
    let r = s
        .client
        .get(s.url(&format!("/experiments/{id}/checkpoints/3")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["detail"],
        "no checkpoint of epoch 3: the experiment has stored 0 epochs"
    );
    s.stop().await;
}

#[sqlx::test]
async fn last_event_id_resumes_without_gaps_or_repeats(pool: PgPool) {
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let (_, exp) = s.submit(&tiny(3)).await;
    let id = exp["id"].as_str().unwrap();
    let url = s.url(&format!("/experiments/{id}/curve"));
    let all = read_curve(&s.client, &url, None, 120).await;
    let durable: Vec<_> = all.iter().filter(|e| e.event != "progress").collect();
    let first_epoch = durable.iter().position(|e| e.event == "epoch").unwrap();
    let resume_at = durable[first_epoch].id.clone().unwrap();
    let rest = read_curve(&s.client, &url, Some(&resume_at), 30).await;
    let ids = |v: &[&common::service::SseEvent]| {
        v.iter().map(|e| e.id.clone().unwrap()).collect::<Vec<_>>()
    };
    let rest_refs: Vec<_> = rest.iter().collect();
    assert_eq!(ids(&rest_refs), ids(&durable[first_epoch + 1..]));
    // A progress id resumes at its durable prefix.
    let rest2 = read_curve(&s.client, &url, Some(&format!("{resume_at}.7")), 30).await;
    assert_eq!(rest2.len(), rest.len());

    // An id past the end (made up, or another stream's) gets only the end event, and it
    // carries the stream's real last id, not the client's.
    let real_last = durable.last().unwrap().id.clone().unwrap();
    let past = read_curve(&s.client, &url, Some("999999999999"), 30).await;
    assert_eq!(past.len(), 1, "{past:?}");
    assert_eq!(past[0].event, "end");
    assert_eq!(past[0].id.as_deref(), Some(real_last.as_str()));

    // One that does not parse is refused, not taken as "from the start".
    for bad in ["abc", "-3", "12x", "1.2.3", ""] {
        let r = s
            .client
            .get(&url)
            .header("accept", "text/event-stream")
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "Last-Event-ID {bad:?}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains("Last-Event-ID"),
            "{body}"
        );
    }
    s.stop().await;
}

#[sqlx::test]
async fn every_error_status_is_problem_json(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    // Sends a request and checks the status and the problem+json body.
    let check = |method: &str, path: String, ctype: &str, body: Vec<u8>, status: u16| {
        let req = s
            .client
            .request(method.parse().unwrap(), s.url(&path))
            .header("content-type", ctype)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{path}");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            r.json::<Value>().await.unwrap()
        }
    };
    let json_ct = "application/json";

    // 404: unknown or malformed ids.
    let unknown = uuid::Uuid::nil();
    for path in [
        "",
        "/metrics",
        "/checkpoints",
        "/checkpoints/best",
        "/curve",
    ] {
        check(
            "GET",
            format!("/experiments/{unknown}{path}"),
            json_ct,
            vec![],
            404,
        )
        .await;
    }
    check(
        "GET",
        "/experiments/not-a-uuid".into(),
        json_ct,
        vec![],
        404,
    )
    .await;
    check(
        "POST",
        format!("/experiments/{unknown}/cancel"),
        json_ct,
        vec![],
        404,
    )
    .await;

    // 422 names the fields.
    let mut bad = tiny(1);
    bad["model"] = json!({"layers": [{"type": "dense", "units": 10}]});
    bad["epochs"] = json!(0);
    let p = check(
        "POST",
        "/experiments".into(),
        json_ct,
        bad.to_string().into_bytes(),
        422,
    )
    .await;
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["epochs", "model.layers[0]"], "{p}");
    check(
        "POST",
        "/experiments".into(),
        json_ct,
        b"{not json".to_vec(),
        422,
    )
    .await;
    let p = check(
        "GET",
        "/experiments?status=done".into(),
        json_ct,
        vec![],
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "status");

    // 415: wrong media types.
    check(
        "POST",
        "/experiments".into(),
        "text/plain",
        b"{}".to_vec(),
        415,
    )
    .await;
    let (_, exp) = s.submit(&tiny(1)).await;
    let id = exp["id"].as_str().unwrap();
    let predict = format!("/predict?experiment={id}");
    check("POST", predict.clone(), "text/plain", b"hi".to_vec(), 415).await;

    // 409: an experiment without a checkpoint cannot predict; 404: an unknown one.
    let img = png(common::mnist().test.image(0));
    check("POST", predict.clone(), "image/png", img.clone(), 409).await;
    check(
        "POST",
        format!("/predict?experiment={unknown}"),
        "image/png",
        img,
        404,
    )
    .await;

    // 413: bodies over the limits.
    let huge = vec![0u8; trainyard::api::predict::MAX_BODY_BYTES + 1];
    check("POST", predict.clone(), "image/png", huge, 413).await;
    let huge_spec = format!(
        "{{\"pad\": \"{}\"}}",
        "x".repeat(trainyard::api::MAX_JSON_BYTES)
    );
    check(
        "POST",
        "/experiments".into(),
        json_ct,
        huge_spec.into_bytes(),
        413,
    )
    .await;

    // A corrupt image is a 422 naming it, not a crash.
    let corrupt = b"\x89PNG\r\n\x1a\n garbage".to_vec();
    let p = check("POST", predict, "image/png", corrupt, 422).await;
    assert_eq!(p["errors"][0]["field"], "image");
    assert_eq!(s.get_json("/healthz").await.0, 200);
    assert_eq!(s.get_json("/readyz").await.0, 200);
    s.stop().await;
}

#[test]
fn checked_in_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = trainyard::api::openapi::document();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/experiments", "/experiments/{id}/curve", "/predict"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
}

/// Parses an RFC 3339 timestamp from a JSON value.
fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[sqlx::test]
async fn the_curve_carries_timestamps_and_ends_live_when_cancelled(pool: PgPool) {
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let mut long = tiny(50);
    long["dataset"]["train_limit"] = json!(2000);
    let (_, exp) = s.submit(&long).await;
    let id = exp["id"].as_str().unwrap().to_string();
    assert!(exp["training_started_at"].is_null(), "{exp}");
    let url = s.url(&format!("/experiments/{id}/curve"));
    let client = s.client.clone();
    let follower = tokio::spawn(async move { read_curve(&client, &url, None, 120).await });
    s.wait_first_epoch(&id, 60).await;
    assert_eq!(s.cancel(&id).await.status(), 200);
    // The stream ends on the `cancelled` status event it receives live.
    let events = follower.await.unwrap();
    let end = events.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["status"], "cancelled");

    // Queued, claimed, training, each epoch stored, ended: in that order.
    let created = time(&end.data["created_at"]);
    let claimed = time(&end.data["started_at"]);
    let training = time(&end.data["training_started_at"]);
    let finished = time(&end.data["finished_at"]);
    assert!(created <= claimed && claimed <= training, "{}", end.data);
    let epochs: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "epoch")
        .map(|e| &e.data)
        .collect();
    assert!(!epochs.is_empty());
    let mut previous = training;
    for e in &epochs {
        let recorded = time(&e["recorded_at"]);
        assert!(previous <= recorded, "{e}");
        previous = recorded;
    }
    assert!(previous <= finished);
    // Every progress event says when its batch finished, after training began, and the
    // last batch of an epoch before that epoch was stored.
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| &e.data)
        .collect();
    assert!(!progress.is_empty());
    for p in &progress {
        let at = time(&p["at"]);
        assert!(training <= at && at <= finished, "{p}");
        if p["batch"] == p["batches"]
            && let Some(e) = epochs.iter().find(|e| e["epoch"] == p["epoch"])
        {
            assert!(at <= time(&e["recorded_at"]), "{p} then {e}");
        }
    }
    // `/metrics` lists the same rows, `recorded_at` included.
    let (_, metrics) = s.get_json(&format!("/experiments/{id}/metrics")).await;
    assert_eq!(metrics.as_array().unwrap().len(), epochs.len());
    assert_eq!(&metrics[0], epochs[0]);
    s.stop().await;
}

#[sqlx::test]
async fn the_training_start_belongs_to_the_current_attempt(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let (_, exp) = s.submit(&tiny(1)).await;
    let id: uuid::Uuid = exp["id"].as_str().unwrap().parse().unwrap();
    let first = s.store.claim("ghost", 0.2, false).await.unwrap().unwrap();
    let t1 = chrono::Utc::now();
    s.store
        .mark_training_started(id, first.attempt, t1)
        .await
        .unwrap();
    let e = s.store.experiment(id).await.unwrap();
    // Stored to the microsecond.
    assert_eq!(
        e.training_started_at.unwrap().timestamp_micros(),
        t1.timestamp_micros()
    );

    // The lease expires; the next claim starts over: no training start until its own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.store.rescue_expired().await.unwrap(), 1);
    let second = s.store.claim("next", 30.0, false).await.unwrap().unwrap();
    assert_eq!(second.attempt, first.attempt + 1);
    assert_eq!(
        s.store.experiment(id).await.unwrap().training_started_at,
        None
    );
    // The lost attempt cannot write it any more; the current one can.
    let late = s
        .store
        .mark_training_started(id, first.attempt, chrono::Utc::now())
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    let t2 = chrono::Utc::now();
    s.store
        .mark_training_started(id, second.attempt, t2)
        .await
        .unwrap();
    let e = s.store.experiment(id).await.unwrap();
    assert_eq!(
        e.training_started_at.unwrap().timestamp_micros(),
        t2.timestamp_micros()
    );
    s.stop().await;
}
