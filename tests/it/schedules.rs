//! `lr_schedule` against `torch.optim.lr_scheduler` and `early_stopping` against Keras's
//! `EarlyStopping`, from the figures `tests/fixtures/schedules/make_fixture.py` recorded
//! with those libraries; then both in real training: the rates each epoch trained with,
//! the epoch it stopped at, and a resumed run that equals the uninterrupted one.

use crate::common;

use common::service::{TestServer, worker_config};
use common::training::{Keep, trainer, untimed, weights};
use sqlx::PgPool;

use serde_json::{Value, json};
use trainyard::engine::schedule::{LrScheduler, best_epoch, early_stop, patience};
use trainyard::engine::trainer::Silent;
use trainyard::engine::{EpochMetrics, Outcome};
use trainyard::spec::{self, EarlyStopping, LrSchedule};

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/schedules/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Epochs whose every metric is `v` where `monitor` reads it.
fn epochs_with(monitor: &str, values: &[f64]) -> Vec<EpochMetrics> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let mut m = json!({
                "epoch": i + 1, "train_loss": 1.0, "train_accuracy": 0.5,
                "val_loss": 1.0, "val_accuracy": 0.5, "test_loss": 1.0, "test_accuracy": 0.5,
                "train_seconds": 0.0, "images_per_second": 0.0,
            });
            m[monitor] = json!(v);
            serde_json::from_value(m).unwrap()
        })
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn every_schedule_gives_pytorchs_rate_in_every_epoch() {
    let r = reference();
    let cases = r["schedules"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let schedule: LrSchedule = serde_json::from_value(c["lr_schedule"].clone()).unwrap();
        let base = c["learning_rate"].as_f64().unwrap();
        let want = f64s(&c["rates"]);
        let history = epochs_with(c["monitor"].as_str().unwrap(), &f64s(&c["metric"]));
        let mut s = LrScheduler::new(Some(&schedule), base);
        for (e, (&want, m)) in want.iter().zip(&history).enumerate() {
            let got = s.lr();
            assert!(
                got.to_bits() == want.to_bits(),
                "{name}, epoch {}: {got} vs PyTorch's {want}",
                e + 1
            );
            s.step(m);
        }
        // The rates move (a case that never changes its rate would test nothing).
        assert!(want.iter().any(|&w| w != want[0]), "{name}");
    }
}

#[test]
fn a_replayed_history_gives_the_rate_an_uninterrupted_run_has() {
    let r = reference();
    for c in r["schedules"].as_array().unwrap() {
        let schedule: LrSchedule = serde_json::from_value(c["lr_schedule"].clone()).unwrap();
        let base = c["learning_rate"].as_f64().unwrap();
        let history = epochs_with(c["monitor"].as_str().unwrap(), &f64s(&c["metric"]));
        let mut running = LrScheduler::new(Some(&schedule), base);
        for k in 0..history.len() {
            let replayed = LrScheduler::replay(Some(&schedule), base, &history[..k]);
            assert_eq!(replayed.lr().to_bits(), running.lr().to_bits(), "{k}");
            running.step(&history[k]);
        }
    }
}

#[test]
fn early_stopping_stops_where_keras_stops_and_names_its_best_epoch() {
    let r = reference();
    let cases = r["early_stopping"].as_array().unwrap();
    assert!(cases.iter().any(|c| c["stopped"] == true));
    assert!(cases.iter().any(|c| c["stopped"] == false));
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let es: EarlyStopping = serde_json::from_value(c["early_stopping"].clone()).unwrap();
        let history = epochs_with(es.monitor.name(), &f64s(&c["metric"]));
        let stop = (1..=history.len()).find_map(|k| early_stop(Some(&es), &history[..k]));
        let trained = stop.map_or(history.len(), |s| s.epoch as usize);
        assert_eq!(
            trained as u64,
            c["epochs_trained"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(stop.is_some(), c["stopped"] == true, "{name}");
        let best = patience(&es, &history[..trained]).best_epoch.unwrap();
        assert_eq!(u64::from(best), c["best_epoch"].as_u64().unwrap(), "{name}");
        assert_eq!(best_epoch(Some(&es), &history[..trained]), best, "{name}");
        if let Some(s) = stop {
            assert_eq!(s.best_epoch, best, "{name}");
        }
    }
}

/// A small torch-cnn run with a validation split, a schedule and early stopping that
/// ends it: the loss on 200 held-out images stops falling within a few epochs at this
/// learning rate.
fn scheduled_spec(extra: Value) -> spec::ExperimentSpec {
    let mut v = json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 1000, "test_limit": 200, "validation": {"split": 0.2}},
        "optimizer": {"type": "sgd", "learning_rate": 0.2, "momentum": 0.9},
        "lr_schedule": {"type": "cosine", "t_max": 6, "eta_min": 0.01,
                        "linear_warmup": {"epochs": 2, "start_factor": 0.5}},
        "early_stopping": {"monitor": "val_loss", "patience": 1, "restore_best": true},
        "batch_size": 50,
        "epochs": 30,
        "seed": 3,
        "device": "cpu"
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
        a.extend(b);
    }
    spec::from_value(v).unwrap()
}

#[test]
fn training_records_each_epochs_rate_and_stops_early_and_a_resumed_run_matches() {
    let spec = scheduled_spec(json!({}));
    let mut full = trainer(&spec);
    let mut kept = Keep::default();
    let outcome = full.run(&mut kept).unwrap();
    let Outcome::EarlyStopped { epoch, best_epoch } = outcome else {
        panic!("expected early stopping within 30 epochs, got {outcome:?}");
    };
    let h = full.history();
    assert_eq!(h.len(), epoch as usize);
    assert!(epoch < 30);
    let expected = early_stop(spec.early_stopping.as_ref(), h).unwrap();
    assert_eq!((expected.epoch, expected.best_epoch), (epoch, best_epoch));
    // Each epoch trained with the scheduler's rate.
    let mut s = LrScheduler::new(spec.lr_schedule.as_ref(), 0.2);
    for m in h {
        assert_eq!(m.learning_rate, Some(s.lr()), "epoch {}", m.epoch);
        s.step(m);
    }
    assert_eq!(
        h[0].learning_rate,
        Some(0.1),
        "warmup starts at half the rate"
    );

    // Resumed from epoch 2's checkpoint: the same rates, metrics, stop and weights.
    let mut resumed = trainer(&spec);
    resumed.resume(&kept.epoch(2)).unwrap();
    let again = resumed.run(&mut Silent).unwrap();
    assert_eq!(again, outcome);
    assert_eq!(untimed(&resumed), untimed(&full));
    assert!(
        weights(&resumed) == weights(&full),
        "the resumed run's weights differ"
    );

    // Resumed from the stopping epoch's checkpoint, it stops at once.
    let mut done = trainer(&spec);
    done.resume(&kept.epoch(kept.0.len())).unwrap();
    assert_eq!(done.run(&mut Silent).unwrap(), outcome);
    assert_eq!(done.epochs_done(), epoch);
}

#[test]
fn a_schedule_changes_the_curve_and_the_candle_graph_path_agrees_with_the_cpu_kernels() {
    // Plain SGD trains on the fused kernels (dense layers apply the update themselves);
    // the rate must reach them as it reaches Candle's graph.
    let spec = scheduled_spec(json!({
        "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "lr_schedule": {"type": "step", "step_size": 1, "gamma": 0.1},
        "early_stopping": null,
        "epochs": 3,
    }));
    let mut kernels = trainer(&spec);
    assert!(kernels.uses_cpu_path());
    kernels.run(&mut Silent).unwrap();
    let mut graph = trainer(&spec);
    graph.use_candle_graph();
    graph.run(&mut Silent).unwrap();
    let rates: Vec<_> = kernels.history().iter().map(|m| m.learning_rate).collect();
    assert_eq!(rates, [Some(0.1), Some(0.1 * 0.1), Some(0.1 * 0.1 * 0.1)]);
    for (a, b) in kernels.history().iter().zip(graph.history()) {
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-4 * a.train_loss.abs().max(1.0),
            "{a:?} vs {b:?}"
        );
    }
    let mut constant = trainer(&scheduled_spec(json!({
        "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "lr_schedule": null,
        "early_stopping": null,
        "epochs": 3,
    })));
    constant.run(&mut Silent).unwrap();
    assert_eq!(constant.history()[2].learning_rate, Some(0.1));
    assert_ne!(
        constant.history()[2].train_loss,
        kernels.history()[2].train_loss,
        "a rate a hundred times smaller trains differently"
    );
}

/// What the service shows of an early-stopped experiment: its stop reason and epoch, the
/// rate of every stored epoch, `best` at Keras's best epoch, and which checkpoint
/// `/predict` serves without being told.
#[sqlx::test]
async fn the_service_shows_the_stop_and_each_epochs_rate_and_serves_as_restore_best_says(
    pool: PgPool,
) {
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let spec = |restore: bool| {
        let mut v = json!({
            "preset": "torch-cnn",
            "dataset": {"train_limit": 1000, "test_limit": 200, "validation": {"split": 0.2}},
            "optimizer": {"type": "sgd", "learning_rate": 0.2, "momentum": 0.9},
            "lr_schedule": {"type": "exponential", "gamma": 0.9},
            "early_stopping": {"monitor": "val_loss", "patience": 1, "restore_best": restore},
            "batch_size": 50,
            "epochs": 30,
            "seed": 3,
            "device": "cpu"
        });
        v["name"] = json!(format!("restore {restore}"));
        v
    };
    let png = {
        let mut buf = std::io::Cursor::new(Vec::new());
        image::GrayImage::new(28, 28)
            .write_to(&mut buf, image::ImageFormat::Png)
            .unwrap();
        buf.into_inner()
    };
    for restore in [true, false] {
        let (code, e) = s.submit(&spec(restore)).await;
        assert_eq!(code, 201, "{e}");
        let id = e["id"].as_str().unwrap().to_string();
        let e = s.wait_status(&id, "succeeded", 300).await;
        assert_eq!(e["stop_reason"], "early_stopping", "{e}");
        let stopped = e["stopped_epoch"].as_i64().unwrap();
        assert_eq!(e["epochs_done"], stopped);
        assert!(stopped < 30);
        let (_, m) = s.get_json(&format!("/experiments/{id}/metrics")).await;
        let epochs: Vec<EpochMetrics> = serde_json::from_value(m.clone()).unwrap();
        assert_eq!(epochs.len() as i64, stopped);
        let rates: Vec<_> = epochs.iter().map(|m| m.learning_rate.unwrap()).collect();
        let mut lr = LrScheduler::new(
            Some(&serde_json::from_value(spec(restore)["lr_schedule"].clone()).unwrap()),
            0.2,
        );
        for (m, r) in epochs.iter().zip(&rates) {
            assert_eq!(*r, lr.lr());
            lr.step(m);
        }
        let es: EarlyStopping =
            serde_json::from_value(spec(restore)["early_stopping"].clone()).unwrap();
        let best = i64::from(best_epoch(Some(&es), &epochs));
        assert_eq!(e["best_epoch"], best);
        let r = s
            .client
            .post(s.url(&format!("/predict?experiment={id}")))
            .header("content-type", "image/png")
            .body(png.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let served: Value = r.json().await.unwrap();
        let want = if restore { best } else { stopped };
        assert_eq!(served["epoch"], want, "restore_best {restore}: {served}");
        if restore {
            assert!(best < stopped, "the stop came after the best epoch");
        }
    }
    s.stop().await;
}
