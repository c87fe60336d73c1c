//! The fused CPU path against Candle's graph: the same spec, data and seed trained both
//! ways must give the same curve and the same weights, to float rounding. Covers every
//! layer and optimizer the CPU path implements.

use crate::common;
use common::training::{untimed, weights};

use candle_core::Device;
use serde_json::{Value, json};
use trainyard::data::prepare::prepare;
use trainyard::engine::trainer::Silent;
use trainyard::engine::{Trainer, TrainingPath};
use trainyard::spec::{self, ExperimentSpec};

fn spec_of(layers: Value, optimizer: Value, extra: Value) -> ExperimentSpec {
    let mut v = json!({
        "version": 1,
        "dataset": {"name": "mnist", "train_limit": 320, "test_limit": 200,
                    "validation": {"split": 0.25}},
        "model": {"init": "keras", "layers": layers},
        "optimizer": optimizer,
        "epochs": 2,
        "batch_size": 24,
        "shuffle": true,
        "seed": 3,
        "device": "cpu"
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
        a.extend(b);
    }
    spec::from_value(v).unwrap()
}

fn train(spec: &ExperimentSpec, candle_graph: bool) -> Trainer {
    let summary = spec::validate(spec).unwrap();
    let data = prepare(common::mnist(), &spec.dataset);
    let mut t = Trainer::new(spec, &summary, &data, &Device::Cpu).unwrap();
    if candle_graph {
        t.use_candle_graph();
        assert!(!t.uses_cpu_path());
    } else {
        assert!(t.uses_cpu_path(), "the CPU path should take this spec");
    }
    t.run(&mut Silent).unwrap();
    t
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// Trains `spec` both ways and compares every metric and weight.
fn assert_paths_agree(spec: &ExperimentSpec) {
    let graph = train(spec, true);
    let fast = train(spec, false);
    for (g, f) in graph.history().iter().zip(fast.history()) {
        let pairs = [
            ("train_loss", Some(g.train_loss), Some(f.train_loss)),
            (
                "train_accuracy",
                Some(g.train_accuracy),
                Some(f.train_accuracy),
            ),
            ("val_loss", g.val_loss, f.val_loss),
            ("val_accuracy", g.val_accuracy, f.val_accuracy),
            ("test_loss", g.test_loss, f.test_loss),
            ("test_accuracy", g.test_accuracy, f.test_accuracy),
        ];
        for (name, a, b) in pairs {
            assert_eq!(a.is_some(), b.is_some(), "{name}");
            let (Some(a), Some(b)) = (a, b) else { continue };
            assert!(
                close(a, b, 1e-4),
                "epoch {} {name}: graph {a} vs CPU path {b}",
                g.epoch
            );
        }
    }
    let (wg, wf) = (weights(&graph), weights(&fast));
    assert_eq!(wg.len(), wf.len());
    for (k, a) in &wg {
        let b = &wf[k];
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() as f64)
            .fold(0f64, f64::max);
        assert!(
            worst <= 1e-4 * (1.0 + scale),
            "{k}: largest difference {worst}"
        );
    }
    // A real run moved the weights: the comparison is not of two initialisations.
    assert!(graph.history()[0].train_loss.is_finite());
}

#[test]
fn keras_style_cnn_with_softmax_output_matches_the_graph() {
    let spec = spec_of(
        json!([
            {"type": "conv2d", "name": "conv1", "filters": 8, "kernel": 3, "activation": "relu"},
            {"type": "conv2d", "name": "conv2", "filters": 16, "kernel": 3, "activation": "relu"},
            {"type": "max_pool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "name": "fc1", "units": 32, "activation": "relu"},
            {"type": "dense", "name": "fc2", "units": 10, "activation": "softmax"}
        ]),
        json!({"type": "sgd", "learning_rate": 0.05}),
        json!({}),
    );
    assert_paths_agree(&spec);
}

#[test]
fn torch_cnn_with_nesterov_momentum_and_weight_decay_matches_the_graph() {
    let mut v = spec::presets::resolve(json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 600, "test_limit": 200},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9,
                      "nesterov": true, "weight_decay": 0.001},
        "batch_size": 64, "epochs": 2, "device": "cpu"
    }))
    .unwrap();
    v["shuffle"] = json!(true);
    assert_paths_agree(&spec::from_value(v).unwrap());
}

#[test]
fn same_padding_strides_avg_pool_dropout_and_adam_match_the_graph() {
    let spec = spec_of(
        json!([
            {"type": "conv2d", "name": "c1", "filters": 6, "kernel": [3, 2], "stride": [1, 2],
             "padding": "same", "activation": "tanh"},
            {"type": "avg_pool2d", "size": 2, "stride": 1},
            {"type": "conv2d", "name": "c2", "filters": 5, "kernel": 3, "stride": 2,
             "padding": "same", "activation": "sigmoid"},
            {"type": "max_pool2d", "size": 3, "stride": 2},
            {"type": "flatten"},
            {"type": "dropout", "rate": 0.3},
            {"type": "dense", "name": "fc1", "units": 20, "activation": "sigmoid"},
            {"type": "dense", "name": "fc2", "units": 10}
        ]),
        json!({"type": "adam", "learning_rate": 0.003, "weight_decay": 0.01}),
        json!({}),
    );
    assert_paths_agree(&spec);
}

#[test]
fn same_padded_even_kernels_at_stride_one_match_the_graph() {
    // "same" padding of an even kernel pads only the bottom and right: the full-width
    // column path, which takes stride-1 convolutions without top or left padding, must
    // not take these (it once did, and read the next row's pixels for the padding). MNIST's
    // borders are black, so the padded layer comes second, after biases that move.
    let spec = spec_of(
        json!([
            {"type": "conv2d", "name": "c1", "filters": 3, "kernel": 3, "activation": "tanh"},
            {"type": "conv2d", "name": "c2", "filters": 4, "kernel": 2, "padding": "same",
             "activation": "relu"},
            {"type": "max_pool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "name": "fc", "units": 10}
        ]),
        json!({"type": "sgd", "learning_rate": 0.05}),
        json!({}),
    );
    assert_paths_agree(&spec);
}

#[test]
fn pointwise_conv_log_softmax_and_adamw_match_the_graph() {
    let layers = json!([
        {"type": "conv2d", "name": "c1", "filters": 4, "kernel": 5, "stride": 3, "activation": "relu"},
        {"type": "conv2d", "name": "c2", "filters": 6, "kernel": 1, "activation": "none"},
        {"type": "flatten"},
        {"type": "dense", "name": "fc1", "units": 16, "activation": "tanh"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "name": "fc2", "units": 10, "activation": "log_softmax"}
    ]);
    let spec = spec_of(
        layers.clone(),
        json!({"type": "adamw", "learning_rate": 0.002}),
        // PyTorch's init this time.
        json!({"model": {"init": "torch", "layers": layers}}),
    );
    assert_paths_agree(&spec);
}

#[test]
fn batch_norm_specs_train_on_the_graph() {
    let spec = spec_of(
        json!([
            {"type": "conv2d", "name": "c1", "filters": 4, "kernel": 3, "activation": "relu"},
            {"type": "batch_norm", "name": "bn"},
            {"type": "flatten"},
            {"type": "dense", "name": "fc", "units": 10}
        ]),
        json!({"type": "sgd", "learning_rate": 0.01}),
        json!({}),
    );
    let summary = spec::validate(&spec).unwrap();
    let data = prepare(common::mnist(), &spec.dataset);
    let mut t = Trainer::new(&spec, &summary, &data, &Device::Cpu).unwrap();
    assert!(!t.uses_cpu_path());
    assert_eq!(
        t.path(),
        TrainingPath::CandleGraph("the CPU kernels do not support layer 1: batch_norm".into())
    );
    // Forcing Candle's graph changes nothing here, and the reason stays the layer's.
    t.use_candle_graph();
    assert_eq!(t.path().name(), "candle-graph");
    assert!(t.path().reason().unwrap().contains("batch_norm"));
}

#[test]
fn the_path_names_the_cpu_kernels_or_says_the_graph_was_forced() {
    let spec = spec_of(
        json!([
            {"type": "conv2d", "name": "c1", "filters": 4, "kernel": 3, "activation": "relu"},
            {"type": "flatten"},
            {"type": "dense", "name": "fc", "units": 10}
        ]),
        json!({"type": "sgd", "learning_rate": 0.01}),
        json!({}),
    );
    let summary = spec::validate(&spec).unwrap();
    let data = prepare(common::mnist(), &spec.dataset);
    let mut t = Trainer::new(&spec, &summary, &data, &Device::Cpu).unwrap();
    assert_eq!(t.path(), TrainingPath::CpuKernels);
    assert_eq!((t.path().name(), t.path().reason()), ("cpu-kernels", None));
    t.use_candle_graph();
    assert_eq!(
        t.path(),
        TrainingPath::CandleGraph("forced (use_candle_graph)".into())
    );
}

#[test]
fn resuming_on_the_cpu_path_equals_the_uninterrupted_run() {
    let spec = spec_of(
        json!([
            {"type": "conv2d", "name": "conv1", "filters": 4, "kernel": 3, "activation": "relu"},
            {"type": "max_pool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "name": "fc", "units": 10, "activation": "softmax"}
        ]),
        json!({"type": "adam", "learning_rate": 0.01}),
        json!({"epochs": 3}),
    );
    let full = train(&spec, false);
    let summary = spec::validate(&spec).unwrap();
    let data = prepare(common::mnist(), &spec.dataset);
    let mut first = Trainer::new(&spec, &summary, &data, &Device::Cpu).unwrap();
    struct StopAfter(u32);
    impl trainyard::engine::Observer for StopAfter {
        fn on_epoch(
            &mut self,
            c: &trainyard::engine::Checkpoint,
        ) -> Result<(), trainyard::engine::EngineError> {
            if c.epoch >= self.0 {
                return Err(trainyard::engine::EngineError::Observer("stop".into()));
            }
            Ok(())
        }
    }
    assert!(first.run(&mut StopAfter(1)).is_err());
    let ckpt = first.checkpoint().unwrap();
    let mut resumed = Trainer::new(&spec, &summary, &data, &Device::Cpu).unwrap();
    resumed.resume(&ckpt).unwrap();
    assert!(resumed.uses_cpu_path());
    resumed.run(&mut Silent).unwrap();
    assert_eq!(untimed(&resumed), untimed(&full));
    assert_eq!(weights(&resumed), weights(&full));
}

#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    // Shapes that take every split: a per-sample convolution and its fused pooling;
    // dense layers wide enough for column shares, one (300 -> 256) whose shares' operand
    // fits in cache where the whole one does not; plain SGD fused into the backward
    // pass, and Adam's separate gradient (its input gradient a transposed product on the
    // gemm crate).
    for optimizer in [
        json!({"type": "sgd", "learning_rate": 0.05}),
        json!({"type": "adam", "learning_rate": 0.001}),
    ] {
        let spec = spec_of(
            json!([
                {"type": "conv2d", "name": "c1", "filters": 8, "kernel": 3, "activation": "relu"},
                {"type": "max_pool2d", "size": 2},
                {"type": "flatten"},
                {"type": "dense", "name": "fc1", "units": 300, "activation": "relu"},
                {"type": "dense", "name": "fc2", "units": 256, "activation": "relu"},
                {"type": "dense", "name": "fc3", "units": 10, "activation": "softmax"}
            ]),
            optimizer.clone(),
            json!({"epochs": 1}),
        );
        let runs: Vec<_> = [1, 2, 3]
            .into_iter()
            .map(|threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let t = train(&spec, false);
                    (untimed(&t), weights(&t))
                })
            })
            .collect();
        for (i, run) in runs.iter().enumerate().skip(1) {
            assert_eq!(
                run.0,
                runs[0].0,
                "{optimizer}: metrics on {} threads",
                i + 1
            );
            assert!(
                run.1 == runs[0].1,
                "{optimizer}: weights on {} threads differ from one thread's",
                i + 1
            );
        }
    }
}
