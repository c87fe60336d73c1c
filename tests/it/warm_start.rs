//! `warm_start`: training from another experiment's weights, with frozen layers left
//! bit for bit as they were, on both engine paths; and the service's checks of the named
//! experiment and checkpoint at submission.

use crate::common;

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::PgPool;
use trainyard::engine::Checkpoint;
use trainyard::engine::trainer::Silent;
use trainyard::spec::{self, ExperimentSpec};

use common::service::{TestServer, problem_fields, worker_config};
use common::training::{Keep, trainer, untimed, weights};

fn spec_of(v: Value) -> ExperimentSpec {
    spec::from_value(v).unwrap()
}

fn base(extra: Value) -> Value {
    let mut v = json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 600, "test_limit": 200},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50,
        "epochs": 1,
        "seed": 5,
        "device": "cpu"
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
        a.extend(b);
    }
    v
}

#[test]
fn frozen_layers_stay_bit_identical_on_both_paths_and_the_rest_learn() {
    let mut source = trainer(&spec_of(base(json!({}))));
    source.run(&mut Silent).unwrap();
    let start = source.checkpoint().unwrap().weight_map();
    let before = weights(&source);
    for optimizer in [
        json!({"type": "sgd", "learning_rate": 0.05}),
        json!({"type": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
        json!({"type": "adamw", "learning_rate": 0.002}),
    ] {
        let spec = spec_of(base(json!({
            "optimizer": optimizer,
            "epochs": 2,
            "seed": 6,
            "warm_start": {"experiment": "00000000-0000-0000-0000-000000000001",
                           "checkpoint": 1, "freeze": ["conv1", "fc"]}
        })));
        let mut runs = Vec::new();
        for graph in [false, true] {
            let mut t = trainer(&spec);
            if graph {
                t.use_candle_graph();
            }
            t.load_weights(&start).unwrap();
            t.run(&mut Silent).unwrap();
            let after = weights(&t);
            for frozen in ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"] {
                assert!(
                    after[frozen] == before[frozen],
                    "{optimizer} graph={graph}: {frozen} changed"
                );
            }
            assert!(
                after["conv2.weight"] != before["conv2.weight"],
                "{optimizer} graph={graph}: conv2 did not learn"
            );
            // Nothing of the frozen tensors in the optimizer's state.
            let state: Vec<String> = t
                .checkpoint()
                .unwrap()
                .optimizer
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert!(
                state
                    .iter()
                    .all(|k| !k.starts_with("conv1.") && !k.starts_with("fc.")),
                "{state:?}"
            );
            runs.push(t.history()[1].train_loss);
        }
        assert!(
            (runs[0] - runs[1]).abs() < 1e-4 * runs[0],
            "{optimizer}: the kernels and the graph agree: {runs:?}"
        );
    }
}

#[test]
fn a_warm_started_run_with_frozen_layers_resumes_exactly() {
    let mut source = trainer(&spec_of(base(json!({}))));
    source.run(&mut Silent).unwrap();
    let start = source.checkpoint().unwrap().weight_map();
    let spec = spec_of(base(json!({
        "optimizer": {"type": "adam", "learning_rate": 0.002},
        "epochs": 3,
        "warm_start": {"experiment": "00000000-0000-0000-0000-000000000001",
                       "checkpoint": 1, "freeze": ["conv2"]}
    })));
    let mut full = trainer(&spec);
    full.load_weights(&start).unwrap();
    let mut kept = Keep::default();
    full.run(&mut kept).unwrap();
    let mut resumed = trainer(&spec);
    resumed.resume(&kept.epoch(1)).unwrap();
    resumed.run(&mut Silent).unwrap();
    assert_eq!(untimed(&resumed), untimed(&full));
    assert!(weights(&resumed) == weights(&full));
}

#[sqlx::test]
async fn the_service_fine_tunes_a_stored_run_and_names_what_does_not_fit(pool: PgPool) {
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let (code, a) = s.submit(&base(json!({"epochs": 2}))).await;
    assert_eq!(code, 201, "{a}");
    let a_id = a["id"].as_str().unwrap().to_string();
    let a = s.wait_status(&a_id, "succeeded", 240).await;
    let best = a["best_epoch"].as_i64().unwrap();

    let tune = |ws: Value| {
        base(json!({
            // (Fashion-MNIST is not among the test data; a later slice of MNIST is the
            // new task here.)
            "dataset": {"name": "mnist", "train_limit": 1200, "test_limit": 200},
            "optimizer": {"type": "sgd", "learning_rate": 0.01, "momentum": 0.9},
            "epochs": 1,
            "warm_start": ws
        }))
    };
    // What does not fit, each named.
    let (code, p) = s
        .post_json(
            "/specs/validate",
            &tune(json!({"experiment": uuid::Uuid::from_u128(42), "checkpoint": "best"})),
        )
        .await;
    assert_eq!(
        (code, problem_fields(&p)),
        (422, vec!["warm_start.experiment".into()])
    );
    let (code, p) = s
        .post_json(
            "/experiments",
            &tune(json!({"experiment": a_id, "checkpoint": 9})),
        )
        .await;
    assert_eq!(
        (code, problem_fields(&p)),
        (422, vec!["warm_start.checkpoint".into()]),
        "{p}"
    );
    let (code, p) = s
        .post_json(
            "/experiments",
            &tune(json!({"experiment": a_id, "freeze": ["conv1", "conv9"]})),
        )
        .await;
    assert_eq!(
        (code, problem_fields(&p)),
        (422, vec!["warm_start.freeze[1]".into()]),
        "{p}"
    );
    let mut other_model = tune(json!({"experiment": a_id}));
    other_model["model"] = json!({"layers": [
        {"type": "conv2d", "filters": 16, "kernel": 3, "activation": "relu"},
        {"type": "conv2d", "filters": 64, "kernel": 3, "activation": "relu"},
        {"type": "flatten"},
        {"type": "dense", "name": "fc", "units": 10, "activation": "log_softmax"}
    ]});
    let (code, p) = s.post_json("/experiments", &other_model).await;
    assert_eq!(code, 422, "{p}");
    let reasons: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(problem_fields(&p).iter().all(|f| f == "warm_start"), "{p}");
    for tensor in ["conv1.weight", "conv1.bias", "conv2.weight"] {
        assert!(
            reasons.iter().any(|r| r.starts_with(&format!("{tensor}:"))),
            "{tensor} named: {reasons:?}"
        );
    }

    // Fine-tuned: the stored spec names the epoch `best` was; frozen weights unchanged.
    let (code, b) = s
        .submit(&tune(
            json!({"experiment": a_id, "freeze": ["conv1", "conv2"]}),
        ))
        .await;
    assert_eq!(code, 201, "{b}");
    assert_eq!(b["spec"]["warm_start"]["checkpoint"], best, "{b}");
    let b_id = b["id"].as_str().unwrap().to_string();
    s.wait_status(&b_id, "succeeded", 240).await;
    let download = |id: String, epoch: i64| {
        let url = s.url(&format!("/experiments/{id}/checkpoints/{epoch}"));
        let client = s.client.clone();
        async move {
            let bytes = client.get(url).send().await.unwrap().bytes().await.unwrap();
            Checkpoint::from_bytes(&bytes, None).unwrap().weight_map()
        }
    };
    let from = download(a_id.clone(), best).await;
    let tuned = download(b_id, 1).await;
    let v = |m: &HashMap<String, candle_core::Tensor>, k: &str| -> Vec<f32> {
        m[k].flatten_all().unwrap().to_vec1().unwrap()
    };
    for frozen in ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"] {
        assert!(v(&from, frozen) == v(&tuned, frozen), "{frozen} changed");
    }
    assert!(v(&from, "fc.weight") != v(&tuned, "fc.weight"));
    s.stop().await;
}
