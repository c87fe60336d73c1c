//! Checks `trainyard::engine::optim::Optimizer` against `torch.optim.SGD`, `Adam` and
//! `AdamW`. The reference trajectories were made by `tests/fixtures/optim/make_fixture.py`
//! (torch version recorded in the JSON): two parameters, five steps of fixed gradients (with
//! zeros, negatives, and one step where the bias has no gradient), the parameters after
//! every step and the final optimizer state.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use serde_json::Value;
use trainyard::engine::optim::Optimizer;
use trainyard::spec::OptimizerSpec;

const ATOL: f32 = 1e-6;
const RTOL: f32 = 1e-5;

fn fixture() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim/pytorch_optim.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a list of floats")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn config<'a>(fx: &'a Value, name: &str) -> &'a Value {
    fx["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no config {name}"))
}

fn spec(c: &Value) -> OptimizerSpec {
    let s = &c["spec"];
    let f = |k: &str| s[k].as_f64().unwrap();
    let betas = || {
        [
            s["betas"][0].as_f64().unwrap(),
            s["betas"][1].as_f64().unwrap(),
        ]
    };
    match s["type"].as_str().unwrap() {
        "sgd" => OptimizerSpec::Sgd {
            learning_rate: f("learning_rate"),
            momentum: f("momentum"),
            nesterov: s["nesterov"].as_bool().unwrap(),
            weight_decay: f("weight_decay"),
        },
        "adam" => OptimizerSpec::Adam {
            learning_rate: f("learning_rate"),
            betas: betas(),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        },
        "adamw" => OptimizerSpec::Adamw {
            learning_rate: f("learning_rate"),
            betas: betas(),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        },
        other => panic!("unknown optimizer {other}"),
    }
}

/// Fresh variables holding the fixture's initial values.
fn initial_vars(fx: &Value) -> Vec<(String, Var)> {
    fx["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let shape: Vec<usize> = p["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let t = Tensor::from_vec(floats(&p["initial"]), shape, &Device::Cpu).unwrap();
            (
                p["name"].as_str().unwrap().to_string(),
                Var::from_tensor(&t).unwrap(),
            )
        })
        .collect()
}

/// The gradients of step `i`: backward of `sum(param * grad_const)` over the parameters that
/// have a gradient at that step, which gives exactly `grad_const` (and none for the others).
fn grads_at(fx: &Value, i: usize, vars: &[(String, Var)]) -> GradStore {
    let step = &fx["grads"][i];
    let mut loss: Option<Tensor> = None;
    for (name, var) in vars {
        let Some(g) = step.get(name) else { continue };
        let g = Tensor::from_vec(floats(g), var.shape(), &Device::Cpu).unwrap();
        let term = (var.as_tensor() * g).unwrap().sum_all().unwrap();
        loss = Some(match loss {
            None => term,
            Some(l) => (l + term).unwrap(),
        });
    }
    loss.expect("some gradient at every step")
        .backward()
        .unwrap()
}

fn num_steps(fx: &Value) -> usize {
    fx["grads"].as_array().unwrap().len()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Asserts `got` matches PyTorch's `want` within `ATOL + RTOL * |want|`; returns the largest
/// absolute difference.
fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(
            d <= ATOL + RTOL * w.abs(),
            "{what}[{i}]: got {g:e}, PyTorch {w:e} (diff {d:e})"
        );
        worst = worst.max(d);
    }
    worst
}

fn check_config(name: &str) {
    let fx = fixture();
    let c = config(&fx, name);
    let vars = initial_vars(&fx);
    let mut opt = Optimizer::new(&spec(c), vars.clone()).unwrap();
    let mut worst = 0f32;
    for i in 0..num_steps(&fx) {
        opt.step(&grads_at(&fx, i, &vars)).unwrap();
        for (pname, var) in &vars {
            let want = floats(&c["params_after_step"][i][pname]);
            worst = worst.max(assert_close(
                &format!("{name} step {} {pname}", i + 1),
                &values(var),
                &want,
            ));
        }
    }
    assert_eq!(opt.steps(), num_steps(&fx) as u64);

    let state: HashMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
    let want_state = c["final_state"].as_object().unwrap();
    let mut got_keys: Vec<_> = state.keys().cloned().collect();
    let mut want_keys: Vec<_> = want_state.keys().cloned().collect();
    got_keys.sort();
    want_keys.sort();
    assert_eq!(
        got_keys, want_keys,
        "{name}: state keys differ from PyTorch's"
    );
    for (key, want) in want_state {
        worst = worst.max(assert_close(
            &format!("{name} state {key}"),
            &values(&state[key]),
            &floats(want),
        ));
    }
    println!("{name}: largest difference from PyTorch {worst:e}");
}

#[test]
fn sgd_plain_matches_pytorch() {
    check_config("sgd_plain");
}

#[test]
fn sgd_momentum_matches_pytorch() {
    check_config("sgd_momentum");
}

#[test]
fn sgd_nesterov_with_weight_decay_matches_pytorch() {
    check_config("sgd_nesterov_wd");
}

#[test]
fn adam_defaults_match_pytorch() {
    check_config("adam_defaults");
}

#[test]
fn adam_with_l2_weight_decay_matches_pytorch() {
    check_config("adam_l2");
}

#[test]
fn adamw_matches_pytorch() {
    check_config("adamw");
}

#[test]
fn adamw_with_other_betas_matches_pytorch() {
    check_config("adamw_betas");
}

#[test]
fn a_parameter_without_gradient_is_left_unchanged() {
    let fx = fixture();
    let skipped = (0..num_steps(&fx))
        .find(|&i| fx["grads"][i].get("conv1.bias").is_none())
        .expect("fixture skips the bias once");
    for c in fx["configs"].as_array().unwrap() {
        let vars = initial_vars(&fx);
        let mut opt = Optimizer::new(&spec(c), vars.clone()).unwrap();
        for i in 0..skipped {
            opt.step(&grads_at(&fx, i, &vars)).unwrap();
        }
        let before = values(&vars[1].1);
        opt.step(&grads_at(&fx, skipped, &vars)).unwrap();
        assert_eq!(
            values(&vars[1].1),
            before,
            "{}: bias moved without a gradient",
            c["name"]
        );
    }
}

/// Round-trips the state through a safetensors file, as a checkpoint does.
fn save_and_reload(opt: &Optimizer) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optim.safetensors");
    let state: HashMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
    candle_core::safetensors::save(&state, &path).unwrap();
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

#[test]
fn resuming_from_saved_state_continues_bitwise_like_an_uninterrupted_run() {
    let fx = fixture();
    let n = num_steps(&fx);
    // Interrupt right after the step where the bias had no gradient, so Adam's per-parameter
    // step counts differ at the save.
    let split = 3;
    for c in fx["configs"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let vars = initial_vars(&fx);
        let mut straight = Optimizer::new(&spec(c), vars.clone()).unwrap();
        for i in 0..n {
            straight.step(&grads_at(&fx, i, &vars)).unwrap();
        }

        let first_vars = initial_vars(&fx);
        let mut first = Optimizer::new(&spec(c), first_vars.clone()).unwrap();
        for i in 0..split {
            first.step(&grads_at(&fx, i, &first_vars)).unwrap();
        }
        let saved = save_and_reload(&first);
        let resumed_vars: Vec<(String, Var)> = first_vars
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
                )
            })
            .collect();
        let mut resumed = Optimizer::new(&spec(c), resumed_vars.clone()).unwrap();
        resumed.load_state(first.steps(), &saved).unwrap();
        assert_eq!(resumed.steps(), split as u64);
        for i in split..n {
            resumed.step(&grads_at(&fx, i, &resumed_vars)).unwrap();
        }

        assert_eq!(resumed.steps(), straight.steps());
        for ((k, a), (_, b)) in vars.iter().zip(&resumed_vars) {
            let (a, b) = (values(a), values(b));
            let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name}: {k} after resume {b:?}, uninterrupted {a:?}");
        }
        let straight_state = straight.state_tensors().unwrap();
        let resumed_state: HashMap<_, _> = resumed.state_tensors().unwrap().into_iter().collect();
        assert_eq!(
            straight_state.len(),
            resumed_state.len(),
            "{name}: state size"
        );
        for (k, t) in &straight_state {
            let bits = |t: &Tensor| values(t).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&resumed_state[k]),
                bits(t),
                "{name}: state {k} after resume"
            );
        }
    }
}

fn adam_after_one_step() -> (Optimizer, HashMap<String, Tensor>) {
    let fx = fixture();
    let vars = initial_vars(&fx);
    let mut opt = Optimizer::new(&spec(config(&fx, "adam_l2")), vars.clone()).unwrap();
    opt.step(&grads_at(&fx, 0, &vars)).unwrap();
    let state = opt.state_tensors().unwrap().into_iter().collect();
    (opt, state)
}

fn load_error(opt: &mut Optimizer, state: &HashMap<String, Tensor>) -> String {
    match opt.load_state(7, state) {
        Ok(()) => panic!("load_state accepted a bad state"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn load_state_names_a_missing_tensor() {
    for key in [
        "conv1.bias.exp_avg_sq",
        "conv1.weight.exp_avg",
        "conv1.bias.step",
    ] {
        let (mut opt, mut state) = adam_after_one_step();
        state.remove(key).unwrap();
        let err = load_error(&mut opt, &state);
        assert!(err.contains(key), "error {err:?} does not name {key}");
        assert_eq!(
            opt.steps(),
            1,
            "a failed load must leave the optimizer as it was"
        );
    }

    let fx = fixture();
    let vars = initial_vars(&fx);
    let mut sgd = Optimizer::new(&spec(config(&fx, "sgd_momentum")), vars).unwrap();
    let err = load_error(&mut sgd, &HashMap::new());
    assert!(
        err.contains("conv1.weight.momentum_buffer"),
        "error {err:?} does not name the buffer"
    );
}

#[test]
fn load_state_names_a_mis_shaped_tensor() -> Result<()> {
    let (mut opt, mut state) = adam_after_one_step();
    state.insert(
        "conv1.weight.exp_avg".into(),
        Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu)?,
    );
    let err = load_error(&mut opt, &state);
    assert!(
        err.contains("conv1.weight.exp_avg"),
        "error {err:?} does not name the tensor"
    );
    Ok(())
}

#[test]
fn plain_sgd_has_no_state_tensors() {
    let fx = fixture();
    let mut opt = Optimizer::new(&spec(config(&fx, "sgd_plain")), initial_vars(&fx)).unwrap();
    assert!(opt.state_tensors().unwrap().is_empty());
    opt.load_state(3, &HashMap::new()).unwrap();
    assert_eq!(opt.steps(), 3);
}
