//! The inference forward against the training forward (`Model::forward` in eval mode) on
//! specs covering every layer kind, padding, unequal strides and each last activation.

use candle_core::{Device, Tensor};
use serde_json::{Value, json};

use super::Predictor;

const SOURCE_SIDE: usize = 28;
use crate::data::prepare::Preprocess;
use crate::engine::checkpoint::Checkpoint;
use crate::engine::model::Model;
use crate::engine::trainer::probabilities;
use crate::spec::{from_value, validate};

fn spec(layers: Value, dataset: Value) -> crate::spec::ExperimentSpec {
    let mut v = json!({"preset": "torch-cnn", "seed": 7, "device": "cpu"});
    v["model"] = json!({"init": "torch", "layers": layers});
    v["dataset"] = dataset;
    from_value(v).unwrap()
}

/// Deterministic test images with every byte value.
fn images(n: usize) -> Vec<u8> {
    (0..n * SOURCE_SIDE * SOURCE_SIDE)
        .map(|i| ((i * 37 + i / 784 * 11) % 256) as u8)
        .collect()
}

fn check(spec: crate::spec::ExperimentSpec) {
    let summary = validate(&spec).unwrap();
    let dev = Device::Cpu;
    let mut model = Model::new(&spec, &summary, &dev).unwrap();
    // Non-trivial batch-norm statistics, so eval mode really uses them.
    let mut weights = model.state_dict().unwrap();
    for (k, t) in weights.iter_mut() {
        *t = t.copy().unwrap(); // the model's own tensors cannot be loaded into it
        if k.ends_with("running_mean") {
            *t = (t.ones_like().unwrap() * 0.3).unwrap();
        } else if k.ends_with("running_var") {
            *t = (t.ones_like().unwrap() * 2.5).unwrap();
        }
    }
    model
        .load_state_dict(&weights.iter().cloned().collect())
        .unwrap();
    let ckpt = Checkpoint {
        spec: spec.clone(),
        data: crate::spec::DatasetName::Mnist.info(),
        epoch: 3,
        history: vec![],
        weights,
        optimizer_steps: 0,
        optimizer: vec![],
    };
    let predictor = Predictor::new(&ckpt, &dev).unwrap();
    assert_eq!(predictor.epoch(), 3);

    let n = 5;
    let px = images(n);
    let got = predictor.predict(&px).unwrap();

    let pre = Preprocess::new(&spec.dataset, 1, SOURCE_SIDE, SOURCE_SIDE);
    let (h, w) = pre.output_size();
    let mut x = Vec::new();
    pre.extend(&px, &mut x);
    // The float path: the spec's preprocessing, then the forward, gives the same bits.
    assert_eq!(predictor.input_shape(), [1, h, w]);
    assert_eq!(predictor.classes(), 10);
    let mut prepared = Vec::new();
    predictor.prepare(&px, &mut prepared).unwrap();
    assert_eq!(prepared, x);
    assert_eq!(predictor.predict_prepared(&prepared).unwrap(), got);
    assert!(predictor.predict_prepared(&prepared[1..]).is_err());
    assert!(predictor.predict_prepared(&[]).is_err());
    assert!(predictor.prepare(&px[1..], &mut Vec::new()).is_err());
    let x = Tensor::from_vec(x, (n, 1, h, w), &dev).unwrap();
    let f = model.forward(&x, false, None).unwrap();
    let want = probabilities(&f).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(got.len(), n);
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= 1e-6, "{g:?} vs {w:?}");
        }
    }
    // One image at a time gives the same answers as the batch.
    for (i, g) in got.iter().enumerate() {
        let one = predictor.predict(&px[i * 784..(i + 1) * 784]).unwrap();
        for (a, b) in one[0].iter().zip(g) {
            assert!((a - b).abs() <= 1e-6, "{one:?} vs {g:?}");
        }
    }
}

#[test]
fn infer_matches_the_training_forward_on_the_presets_layers() {
    check(spec(
        json!([
            {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
            {"type": "conv2d", "filters": 6, "kernel": 3, "activation": "relu"},
            {"type": "max_pool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dropout", "rate": 0.5},
            {"type": "dense", "units": 16, "activation": "relu"},
            {"type": "dense", "units": 10, "activation": "softmax"}
        ]),
        json!({"name": "mnist"}),
    ));
    check(spec(
        json!([
            {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
            {"type": "max_pool2d", "size": 1},
            {"type": "flatten"},
            {"type": "dense", "units": 10, "activation": "log_softmax"}
        ]),
        json!({"name": "mnist", "resize": [8, 8], "normalize": {"mean": 0.1307, "std": 0.3081}}),
    ));
}

#[test]
fn infer_matches_the_training_forward_on_every_other_layer_kind() {
    check(spec(
        json!([
            {"type": "conv2d", "filters": 3, "kernel": [3, 2], "stride": [2, 1],
             "padding": "same", "activation": "tanh"},
            {"type": "batch_norm"},
            {"type": "max_pool2d", "size": [3, 2], "stride": [1, 2]},
            {"type": "conv2d", "filters": 4, "kernel": 2, "stride": 2, "activation": "sigmoid"},
            {"type": "avg_pool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 12, "activation": "none"},
            {"type": "batch_norm"},
            {"type": "dense", "units": 10, "activation": "none"}
        ]),
        json!({"name": "fashion-mnist", "resize": [20, 16]}),
    ));
}
