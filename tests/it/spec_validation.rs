//! Spec parsing and validation: presets' shapes and sizes, and precise errors.

use serde_json::json;
use trainyard::spec::{self, FieldError};

fn errors(v: serde_json::Value) -> Vec<FieldError> {
    match spec::from_value(v) {
        Err(e) => e.0,
        Ok(s) => spec::validate(&s).expect_err("spec should be invalid").0,
    }
}

fn custom(layers: serde_json::Value) -> serde_json::Value {
    json!({
        "version": 1,
        "dataset": {"name": "mnist"},
        "model": {"layers": layers},
        "optimizer": {"type": "sgd", "learning_rate": 0.01},
        "epochs": 1,
        "batch_size": 32
    })
}

#[test]
fn keras_cnn_preset_has_the_articles_shapes_and_9_467_274_parameters() {
    let s = spec::from_value(json!({"model": {"preset": "keras-cnn"}})).unwrap();
    let sum = spec::validate(&s).unwrap();
    let shapes: Vec<Vec<usize>> = sum.layers.iter().map(|l| l.output.clone()).collect();
    assert_eq!(
        shapes,
        [
            vec![32, 26, 26],
            vec![64, 24, 24],
            vec![64, 12, 12],
            vec![9216],
            vec![1024],
            vec![10]
        ]
    );
    let params: Vec<u64> = sum.layers.iter().map(|l| l.parameters).collect();
    assert_eq!(params, [320, 18_496, 0, 0, 9_438_208, 10_250]);
    assert_eq!(sum.parameters, 9_467_274);
    assert_eq!(s.batch_size, 32);
    assert_eq!(s.dataset.validation.split(), Some(0.3));
}

#[test]
fn torch_cnn_preset_has_the_articles_shapes_and_29_066_parameters() {
    let s = spec::from_value(json!({"preset": "torch-cnn"})).unwrap();
    let sum = spec::validate(&s).unwrap();
    assert_eq!(sum.input, [1, 8, 8]);
    let shapes: Vec<Vec<usize>> = sum.layers.iter().map(|l| l.output.clone()).collect();
    assert_eq!(
        shapes,
        [
            vec![32, 6, 6],
            vec![64, 4, 4],
            vec![64, 4, 4],
            vec![1024],
            vec![10]
        ]
    );
    assert_eq!(sum.parameters, 29_066);
    assert_eq!(
        sum.flops_per_sample,
        2 * (6 * 6 * 32 * 9 + 4 * 4 * 64 * 288 + 1024 * 10)
    );
    let names: Vec<_> = sum.layers.iter().filter_map(|l| l.name.clone()).collect();
    assert_eq!(names, ["conv1", "conv2", "fc"]);
}

#[test]
fn a_preset_field_can_be_overridden() {
    let s = spec::from_value(
        json!({"preset": "keras-cnn", "optimizer": {"type": "adam"}, "epochs": 2}),
    )
    .unwrap();
    assert_eq!(s.epochs, 2);
    assert!(
        matches!(s.optimizer, spec::OptimizerSpec::Adam { learning_rate, .. } if learning_rate == 1e-3)
    );
    assert_eq!(s.model.layers.len(), 6);
}

#[test]
fn pooling_a_too_small_input_names_the_layer_and_sizes() {
    let e = errors(custom(json!([
        {"type": "conv2d", "filters": 4, "kernel": 3},
        {"type": "max_pool2d", "size": 13},
        {"type": "max_pool2d", "size": 2},
        {"type": "max_pool2d", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10}
    ])));
    assert_eq!(e[0].field, "model.layers[3]");
    assert_eq!(
        e[0].reason,
        "max_pool2d 2x2 needs at least 2x2 input, got 1x1"
    );
    assert_eq!(
        e[0].to_string(),
        "model.layers[3]: max_pool2d 2x2 needs at least 2x2 input, got 1x1"
    );
}

#[test]
fn dense_on_an_image_asks_for_a_flatten() {
    let e = errors(custom(json!([{"type": "dense", "units": 10}])));
    assert_eq!(e[0].field, "model.layers[0]");
    assert!(
        e[0].reason.contains("add a flatten layer"),
        "{}",
        e[0].reason
    );
}

#[test]
fn a_model_must_end_with_ten_outputs() {
    let e = errors(custom(
        json!([{"type": "flatten"}, {"type": "dense", "units": 7}]),
    ));
    assert_eq!(e[0].field, "model.layers[1]");
    assert!(e[0].reason.contains("10 outputs"));
}

#[test]
fn type_errors_carry_the_json_path() {
    let mut v = custom(json!([{"type": "flatten"}, {"type": "dense", "units": "ten"}]));
    let e = errors(v.clone());
    assert_eq!(e[0].field, "model.layers[1].units");
    v["model"]["layers"][1] = json!({"type": "dense", "units": 10, "activaton": "relu"});
    let e = errors(v.clone());
    assert!(e[0].field.starts_with("model.layers[1]"), "{:?}", e[0]);
    assert!(e[0].reason.contains("activaton"));
    v["model"]["layers"][1] = json!({"type": "conv3d"});
    assert!(errors(v)[0].reason.contains("conv3d"));
}

#[test]
fn limits_reject_abuse_with_every_problem_listed() {
    let mut v = custom(
        json!([{"type": "flatten"}, {"type": "dense", "units": 65536}, {"type": "dense", "units": 10}]),
    );
    v["epochs"] = json!(100000);
    v["batch_size"] = json!(0);
    v["dataset"]["resize"] = json!([4096, 4096]);
    v["optimizer"]["learning_rate"] = json!(-1.0);
    let e = errors(v);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "dataset.resize",
        "epochs",
        "batch_size",
        "optimizer.learning_rate",
        "model",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    let params = e.iter().find(|e| e.field == "model").unwrap();
    assert!(
        params.reason.contains("parameters exceed"),
        "{}",
        params.reason
    );
}

#[test]
fn bad_values_name_their_field() {
    let mut v = json!({"preset": "torch-cnn"});
    v["dataset"] = json!({"validation": {"split": 1.5}, "normalize": {"mean": 0.1, "std": 0.0}});
    v["optimizer"] = json!({"type": "sgd", "learning_rate": 0.1, "nesterov": true});
    v["device"] = json!("cpu");
    let e = errors(v);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "dataset.normalize.std",
            "dataset.validation.split",
            "optimizer.nesterov"
        ]
    );
    let e = errors(json!({"preset": "torch-cnn", "device": "tpu"}));
    assert_eq!(e[0].field, "device");
    let e = errors(json!({"preset": "torch-cnn", "version": 2}));
    assert_eq!(e[0].field, "version");
}

#[test]
fn softmax_is_only_allowed_at_the_end_and_names_must_be_unique() {
    let e = errors(custom(json!([
        {"type": "flatten"},
        {"type": "dense", "name": "a", "units": 32, "activation": "softmax"},
        {"type": "dense", "name": "a", "units": 10}
    ])));
    assert_eq!(e[0].field, "model.layers[1].activation");
    assert_eq!(e[1].field, "model.layers[2].name");
    assert!(e[1].reason.contains("model.layers[1]"));
}

#[test]
fn same_padding_strides_and_every_layer_kind_infer_shapes() {
    let s = spec::from_value(custom(json!([
        {"type": "conv2d", "filters": 8, "kernel": [3, 5], "stride": 2, "padding": "same", "activation": "tanh"},
        {"type": "batch_norm"},
        {"type": "avg_pool2d", "size": 3, "stride": 2},
        {"type": "dropout", "rate": 0.25},
        {"type": "flatten"},
        {"type": "dense", "units": 16, "activation": "sigmoid"},
        {"type": "dense", "units": 10, "activation": "log_softmax"}
    ])))
    .unwrap();
    let sum = spec::validate(&s).unwrap();
    let shapes: Vec<Vec<usize>> = sum.layers.iter().map(|l| l.output.clone()).collect();
    assert_eq!(shapes[0], [8, 14, 14]);
    assert_eq!(shapes[2], [8, 6, 6]);
    assert_eq!(shapes[4], [288]);
    let names: Vec<_> = sum.layers.iter().filter_map(|l| l.name.clone()).collect();
    assert_eq!(names, ["conv1", "bn1", "fc1", "fc2"]);
}

#[test]
fn sizes_and_validation_say_what_they_expect() {
    let e = errors(custom(
        json!([{"type": "conv2d", "filters": 4, "kernel": "3x3"}]),
    ));
    assert_eq!(e[0].field, "model.layers[0].kernel");
    assert!(e[0].reason.contains("[height, width]"), "{}", e[0].reason);
    let e = errors(json!({"preset": "torch-cnn", "dataset": {"validation": "holdout"}}));
    assert_eq!(e[0].field, "dataset.validation");
    assert!(
        e[0].reason.contains(r#""test" or "none""#),
        "{}",
        e[0].reason
    );
}

#[test]
fn a_batch_too_large_for_memory_is_refused() {
    let e = errors(json!({"preset": "keras-cnn", "batch_size": 65536}));
    assert_eq!(e[0].field, "batch_size");
    assert!(
        e[0].reason.contains("GiB of activations"),
        "{}",
        e[0].reason
    );
    let s = spec::from_value(json!({"preset": "keras-cnn", "batch_size": 1024})).unwrap();
    assert!(spec::validate(&s).is_ok());
}

#[test]
fn schedules_and_early_stopping_name_the_field_at_fault() {
    let with = |extra: serde_json::Value| {
        let mut v = custom(json!([{"type": "flatten"}, {"type": "dense", "units": 10}]));
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        errors(v)
    };
    let fields = |e: Vec<FieldError>| e.into_iter().map(|e| e.field).collect::<Vec<_>>();
    assert_eq!(
        fields(with(json!({"lr_schedule": {"type": "warp", "gamma": 0.5}}))),
        ["lr_schedule.type"]
    );
    assert_eq!(
        fields(with(json!({"lr_schedule": {"gamma": 0.5}}))),
        ["lr_schedule.type"]
    );
    assert_eq!(
        fields(with(
            json!({"lr_schedule": {"type": "exponential", "gamma": "fast"}})
        )),
        ["lr_schedule.gamma"]
    );
    assert_eq!(
        fields(with(json!({"lr_schedule": {"type": "cosine", "t_max": 5,
            "linear_warmup": {"epochs": 0, "start_factor": 2}}}))),
        [
            "lr_schedule.linear_warmup.epochs",
            "lr_schedule.linear_warmup.start_factor"
        ]
    );
    assert_eq!(
        fields(with(
            json!({"lr_schedule": {"type": "step", "step_size": 0, "gamma": -1}})
        )),
        ["lr_schedule.step_size", "lr_schedule.gamma"]
    );
    assert_eq!(
        fields(with(
            json!({"lr_schedule": {"type": "reduce_on_plateau", "factor": 1.5}})
        )),
        ["lr_schedule.factor", "lr_schedule.monitor"],
        "and val_loss (the default) needs a validation split this spec lacks"
    );
    let e = with(json!({"early_stopping": {"patience": 3, "min_delta": -0.1}}));
    assert_eq!(
        fields(e.clone()),
        ["early_stopping.min_delta", "early_stopping.monitor"]
    );
    assert!(e[1].reason.contains("validation split"), "{}", e[1].reason);
    assert_eq!(
        fields(with(json!({"early_stopping": {"monitor": "val_los"}}))),
        ["early_stopping.monitor"]
    );
    assert_eq!(
        fields(with(
            json!({"early_stopping": {"monitor": "test_loss", "patiense": 2}})
        )),
        ["early_stopping.patiense"]
    );
    // With a split, val_loss is there to watch.
    let mut ok = custom(json!([{"type": "flatten"}, {"type": "dense", "units": 10}]));
    ok["dataset"]["validation"] = json!({"split": 0.1});
    ok["early_stopping"] = json!({"patience": 2, "restore_best": true});
    ok["lr_schedule"] = json!({"type": "reduce_on_plateau", "patience": 1});
    let s = spec::from_value(ok).unwrap();
    spec::validate(&s).unwrap();
}
