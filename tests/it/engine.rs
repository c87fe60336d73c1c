//! The training engine end to end on small slices of the real MNIST files.

use crate::common;
use common::training::{Keep, trainer, untimed, weights};

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor};
use serde_json::json;
use trainyard::engine::infer::Predictor;
use trainyard::engine::model::Model;
use trainyard::engine::rng::Rng;
use trainyard::engine::trainer::Silent;
use trainyard::engine::{Checkpoint, Observer, Outcome};
use trainyard::spec::{self, ExperimentSpec};

/// A small, fast spec: torch-cnn's 8x8 model with a quicker optimizer.
fn small_spec(extra: serde_json::Value) -> ExperimentSpec {
    let mut v = json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 2000, "test_limit": 500},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50,
        "epochs": 2,
        "shuffle": true,
        "seed": 7,
        "device": "cpu"
    });
    merge(&mut v, extra);
    spec::from_value(v).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        // An object of another "type" (an optimizer) replaces the old one.
        (serde_json::Value::Object(a), serde_json::Value::Object(b))
            if b.get("type").is_none_or(|t| Some(t) == a.get("type")) =>
        {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[test]
fn training_on_2000_images_lifts_accuracy_well_above_chance() {
    let mut t = trainer(&small_spec(json!({})));
    assert_eq!(
        t.run(&mut Silent).unwrap(),
        Outcome::Completed { epochs: 2 }
    );
    let h = t.history();
    assert_eq!(h.len(), 2);
    let last = &h[1];
    assert!(last.test_accuracy.unwrap() > 0.75, "{last:?}");
    assert!(last.train_loss < h[0].train_loss);
    assert!(
        last.val_loss.is_none(),
        "validation \"test\" reports test metrics only"
    );
    assert!(last.images_per_second > 0.0);
}

#[test]
fn same_spec_and_seed_give_identical_metrics_and_weights() {
    // Dropout and shuffling exercise every random stream.
    let spec = small_spec(json!({
        "epochs": 1,
        "dataset": {"validation": {"split": 0.2}},
        "model": {"layers": [
            {"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"},
            {"type": "dropout", "rate": 0.3},
            {"type": "flatten"},
            {"type": "batch_norm"},
            {"type": "dense", "units": 10, "activation": "softmax"}
        ]}
    }));
    let mut a = trainer(&spec);
    let mut b = trainer(&spec);
    a.run(&mut Silent).unwrap();
    b.run(&mut Silent).unwrap();
    assert_eq!(untimed(&a), untimed(&b));
    assert!(a.history()[0].val_accuracy.is_some());
    assert_eq!(weights(&a), weights(&b));
    let mut other = small_spec(json!({"epochs": 1, "seed": 8}));
    other.model = spec.model.clone();
    other.dataset = spec.dataset.clone();
    let mut c = trainer(&other);
    c.run(&mut Silent).unwrap();
    assert_ne!(weights(&a), weights(&c), "another seed gives another run");
}

#[test]
fn resuming_from_epoch_k_equals_the_uninterrupted_run() {
    let spec = small_spec(json!({
        "epochs": 3,
        "optimizer": {"type": "adam", "learning_rate": 0.003},
        "model": {"layers": [
            {"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"},
            {"type": "max_pool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dropout", "rate": 0.2},
            {"type": "dense", "units": 10, "activation": "log_softmax"}
        ]}
    }));
    let mut full = trainer(&spec);
    let mut kept = Keep::default();
    full.run(&mut kept).unwrap();

    let (w, o) = &kept.0[0];
    let ckpt = Checkpoint::from_bytes(w, Some(o)).unwrap();
    assert_eq!(ckpt.epoch, 1);
    let mut resumed = trainer(&ckpt.spec);
    resumed.resume(&ckpt).unwrap();
    resumed.run(&mut Silent).unwrap();
    assert_eq!(untimed(&resumed), untimed(&full));
    assert_eq!(weights(&resumed), weights(&full));
}

#[test]
fn stopping_between_batches_drops_the_partial_epoch() {
    struct StopAfter(usize);
    impl Observer for StopAfter {
        fn should_stop(&mut self) -> bool {
            self.0 = self.0.saturating_sub(1);
            self.0 == 0
        }
    }
    let mut t = trainer(&small_spec(json!({})));
    // 2000 images / 50 = 40 batches per epoch: stop in the middle of epoch 2.
    assert_eq!(
        t.run(&mut StopAfter(60)).unwrap(),
        Outcome::Stopped { epochs_done: 1 }
    );
    assert_eq!(t.history().len(), 1);
}

#[test]
fn checkpoint_save_then_load_gives_identical_predictions() {
    let spec = small_spec(json!({"epochs": 1}));
    let mut t = trainer(&spec);
    t.run(&mut Silent).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = t.checkpoint().unwrap();
    let path = ckpt.save(dir.path()).unwrap();
    assert_eq!(
        Checkpoint::latest_in(dir.path()).unwrap(),
        Some(path.clone())
    );
    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded.spec, spec);
    assert_eq!(loaded.epoch, 1);
    assert_eq!(loaded.history, ckpt.history);

    let test = &common::mnist().test;
    let images = &test.images[..100 * 784];
    let before = Predictor::new(&ckpt, &Device::Cpu)
        .unwrap()
        .predict(images)
        .unwrap();
    let after = Predictor::new(&loaded, &Device::Cpu)
        .unwrap()
        .predict(images)
        .unwrap();
    assert_eq!(before, after);
    // And the predictions are the model's: its accuracy on these images is the run's.
    let correct = after
        .iter()
        .zip(&test.labels)
        .filter(|(p, y)| trainyard::engine::infer::argmax(p) == **y as usize)
        .count();
    assert!(correct > 60, "{correct}/100");
    let sum: f32 = after[0].iter().sum();
    assert!((sum - 1.0).abs() < 1e-5);
}

#[test]
fn loading_weights_of_another_model_names_the_mismatch() {
    let mut t = trainer(&small_spec(json!({"epochs": 1})));
    let w = HashMap::from([(
        "conv1.weight".to_string(),
        Tensor::zeros((4, 1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    )]);
    let e = t.load_weights(&w).unwrap_err().to_string();
    assert!(e.contains("conv1.weight"), "{e}");
}

/// Loss of a model on fixed inputs, in f64.
fn loss(model: &mut Model, x: &Tensor, y: &Tensor) -> Tensor {
    let f = model.forward(x, true, None).unwrap();
    let logp = candle_nn::ops::log_softmax(&f.loss_input, D::Minus1).unwrap();
    logp.gather(&y.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap()
}

#[test]
fn numeric_gradients_match_backprop_for_a_small_conv_net() {
    let spec = spec::from_value(json!({
        "version": 1,
        "dataset": {"name": "mnist", "resize": [11, 11]},
        "model": {"init": "keras", "layers": [
            {"type": "conv2d", "filters": 3, "kernel": 3, "padding": "same", "activation": "tanh"},
            {"type": "max_pool2d", "size": 2, "stride": 2},
            {"type": "conv2d", "filters": 4, "kernel": [2, 3], "stride": [1, 2], "activation": "sigmoid"},
            {"type": "avg_pool2d", "size": 2, "stride": 1},
            {"type": "flatten"},
            {"type": "dense", "units": 6, "activation": "tanh"},
            {"type": "dense", "units": 10, "activation": "softmax"}
        ]},
        "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "epochs": 1,
        "batch_size": 4,
        "seed": 3
    }))
    .unwrap();
    let summary = spec::validate(&spec).unwrap();
    let mut model = Model::with_dtype(&spec, &summary, &Device::Cpu, DType::F64).unwrap();
    let mut rng = Rng::new(11);
    let x: Vec<f64> = (0..4 * 121).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let x = Tensor::from_vec(x, (4, 1, 11, 11), &Device::Cpu).unwrap();
    let y = Tensor::new(&[3u32, 0, 9, 5], &Device::Cpu).unwrap();

    let grads = loss(&mut model, &x, &y).backward().unwrap();
    let params = model.params().to_vec();
    assert_eq!(params.len(), 8);
    let h = 1e-6;
    for (name, var) in &params {
        let analytic: Vec<f64> = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        // Every element of small tensors, a spread of the larger ones.
        let step = (base.len() / 25).max(1);
        for i in (0..base.len()).step_by(step) {
            let mut at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&mut model, &x, &y).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            let a = analytic[i];
            assert!(
                (numeric - a).abs() <= 1e-6 + 1e-4 * a.abs().max(numeric.abs()),
                "{name}[{i}]: numeric {numeric:e}, backprop {a:e}"
            );
        }
        var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}
