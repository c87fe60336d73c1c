//! Initial weights follow the framework's init: compared with weights PyTorch initialised
//! (the parity fixtures: PyTorch defaults for torch-cnn, Keras's glorot_uniform / zero
//! bias rebuilt in PyTorch for the keras-style model). The generators differ, so the
//! comparison is of the distributions: same names and shapes, same range, same spread.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::json;
use trainyard::engine::model::Model;
use trainyard::spec;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parity");

fn stats(t: &Tensor) -> (usize, f64, f64) {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    let n = v.len();
    let max = v.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    (n, max, var.sqrt())
}

/// The bound of the uniform init of `name`: PyTorch's 1/sqrt(fan_in) for weights and
/// biases, Keras's sqrt(6 / (fan_in + fan_out)) for kernels.
fn bound(name: &str, weights: &HashMap<String, Tensor>, keras: bool) -> f64 {
    let w = &weights[&format!("{}.weight", name.rsplit_once('.').unwrap().0)];
    let dims = w.dims();
    let rf: usize = dims[2..].iter().product();
    let (fan_in, fan_out) = (dims[1] * rf, dims[0] * rf);
    if keras {
        (6.0 / (fan_in + fan_out) as f64).sqrt()
    } else {
        1.0 / (fan_in as f64).sqrt()
    }
}

fn compare(spec_json: serde_json::Value, fixture: &str, keras: bool) {
    let spec = spec::from_value(spec_json).unwrap();
    let summary = spec::validate(&spec).unwrap();
    let ours: HashMap<String, Tensor> = Model::new(&spec, &summary, &Device::Cpu)
        .unwrap()
        .state_dict()
        .unwrap()
        .into_iter()
        .collect();
    let theirs =
        candle_core::safetensors::load(format!("{FIXTURE}/{fixture}"), &Device::Cpu).unwrap();
    let mut names: Vec<_> = ours.keys().cloned().collect();
    names.sort();
    let mut theirs_names: Vec<_> = theirs.keys().cloned().collect();
    theirs_names.sort();
    assert_eq!(names, theirs_names);
    for name in names {
        let (a, b) = (&ours[&name], &theirs[&name]);
        assert_eq!(a.dims(), b.dims(), "{name}");
        let (n, max_a, std_a) = stats(a);
        let (_, max_b, std_b) = stats(b);
        if keras && name.ends_with(".bias") {
            assert_eq!((max_a, max_b), (0.0, 0.0), "{name}");
            continue;
        }
        let bound = bound(&name, &ours, keras);
        for (who, max) in [("trainyard", max_a), ("PyTorch", max_b)] {
            assert!(
                max <= bound * (1.0 + 1e-6),
                "{name}: {who} max {max} above the bound {bound}"
            );
        }
        if n >= 300 {
            // n uniform draws: the largest is within a few 1/n of the bound, and the
            // standard deviation is bound / sqrt(3), for PyTorch's weights and ours alike.
            for (who, max, std) in [("trainyard", max_a, std_a), ("PyTorch", max_b, std_b)] {
                assert!(
                    max > bound * (1.0 - 20.0 / n as f64),
                    "{name}: {who} max {max}, bound {bound}"
                );
                let want = bound / 3f64.sqrt();
                assert!(
                    (std / want - 1.0).abs() < 0.1,
                    "{name}: {who} std {std}, expected {want}"
                );
            }
        }
    }
}

#[test]
fn torch_init_has_pytorchs_default_distribution() {
    compare(
        json!({"preset": "torch-cnn"}),
        "torch-cnn.init.safetensors",
        false,
    );
}

#[test]
fn keras_init_has_glorot_uniform_kernels_and_zero_biases() {
    let mut s = spec::presets::preset("keras-cnn").unwrap();
    s["model"]["layers"][4]["units"] = json!(8);
    compare(s, "small-keras-cnn.init.safetensors", true);
}
