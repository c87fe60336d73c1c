use serde_json::json;

use super::*;
use crate::spec::{self, Activation};

fn plan_of(layers: serde_json::Value) -> Plan {
    let s = spec::from_value(json!({
        "version": 1,
        "dataset": {"name": "mnist"},
        "model": {"layers": layers},
        "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "epochs": 1,
        "batch_size": 8
    }))
    .unwrap();
    spec::validate(&s).unwrap()
}

#[test]
fn every_layer_kind_is_resolved_with_its_shapes_padding_and_tensors() {
    let p = plan_of(json!([
        {"type": "conv2d", "filters": 8, "kernel": [3, 4], "stride": [2, 1], "padding": "same", "activation": "tanh"},
        {"type": "batch_norm", "momentum": 0.2},
        {"type": "avg_pool2d", "size": 3, "stride": 2},
        {"type": "max_pool2d", "size": 1},
        {"type": "dropout", "rate": 0.25},
        {"type": "flatten"},
        {"type": "dense", "units": 16, "activation": "sigmoid"},
        {"type": "dense", "name": "out", "units": 10, "activation": "log_softmax"}
    ]));
    assert_eq!(p.input, [1, 28, 28]);
    let LayerKind::Conv2d(c) = &p.layers[0].kind else {
        panic!("{:?}", p.layers[0].kind)
    };
    // 28 rows at stride 2 give 14 (one row of padding, at the bottom); 28 columns of a
    // 4-wide kernel at stride 1 give 28 (1 left, 2 right).
    assert_eq!((c.out_h, c.out_w), (14, 28));
    assert_eq!(
        c.pad,
        Pad {
            top: 0,
            bottom: 1,
            left: 1,
            right: 2
        }
    );
    assert_eq!((c.fan_in(), c.fan_out()), (12, 96));
    assert_eq!(p.layers[0].input, [1, 28, 28]);
    assert_eq!(p.layers[0].output, [8, 14, 28]);
    let shapes: Vec<_> = p.layers[0].tensors.iter().map(|t| &t.shape).collect();
    assert_eq!(shapes, [&vec![8, 1, 3, 4], &vec![8]]);

    let LayerKind::BatchNorm(n) = &p.layers[1].kind else {
        panic!()
    };
    assert_eq!((n.channels, n.momentum), (8, 0.2));
    let names: Vec<_> = p.layers[1]
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked"
        ]
    );
    assert_eq!(p.layers[1].parameters, 16);

    let LayerKind::AvgPool2d(a) = &p.layers[2].kind else {
        panic!()
    };
    assert_eq!((a.out_h, a.out_w, a.is_identity()), (6, 13, false));
    let LayerKind::MaxPool2d(m) = &p.layers[3].kind else {
        panic!()
    };
    assert!(m.is_identity(), "a 1x1 pool with its default stride");
    assert_eq!(p.layers[4].kind, LayerKind::Dropout { rate: 0.25 });
    assert_eq!(p.layers[5].output, [8 * 6 * 13]);
    let LayerKind::Dense(d) = &p.layers[6].kind else {
        panic!()
    };
    assert_eq!((d.inputs, d.units), (624, 16));
    assert_eq!(p.layers[6].flops, 2 * 624 * 16);
    assert_eq!(p.layers[7].name.as_deref(), Some("out"));
    assert_eq!(p.output_activation(), Activation::LogSoftmax);
    assert_eq!(p.classes(), 10);
    assert_eq!(
        p.parameters,
        p.layers.iter().map(|l| l.parameters).sum::<u64>()
    );
}

#[test]
fn the_state_dict_lists_batch_counters_last_and_trainable_tensors_in_layer_order() {
    let p = plan_of(json!([
        {"type": "conv2d", "filters": 2, "kernel": 3},
        {"type": "batch_norm"},
        {"type": "flatten"},
        {"type": "batch_norm"},
        {"type": "dense", "units": 10}
    ]));
    let names: Vec<_> = p.state_dict().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "conv1.bias",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn2.weight",
            "bn2.bias",
            "bn2.running_mean",
            "bn2.running_var",
            "fc1.weight",
            "fc1.bias",
            "bn1.num_batches_tracked",
            "bn2.num_batches_tracked"
        ]
    );
    let trainable: Vec<_> = p.trainable().map(|t| t.name.as_str()).collect();
    assert_eq!(
        trainable,
        [
            "conv1.weight",
            "conv1.bias",
            "bn1.weight",
            "bn1.bias",
            "bn2.weight",
            "bn2.bias",
            "fc1.weight",
            "fc1.bias"
        ]
    );
}

#[test]
fn same_padding_is_tensorflows_with_the_odd_pixel_after() {
    assert_eq!(same_padding(28, 3, 1), (1, 1));
    assert_eq!(same_padding(28, 2, 1), (0, 1));
    assert_eq!(same_padding(7, 3, 2), (1, 1));
    assert_eq!(same_padding(8, 3, 2), (0, 1));
    let p = Pad::resolve(Padding::Same, (8, 7), (3, 3), (2, 2));
    assert_eq!(p.as_array(), [0, 1, 1, 1]);
    assert_eq!(
        Pad::resolve(Padding::Valid, (8, 7), (3, 3), (2, 2)),
        Pad::default()
    );
}

#[test]
fn the_plan_serializes_as_the_api_summary() {
    let p = plan_of(json!([
        {"type": "conv2d", "filters": 2, "kernel": 3},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 10}
    ]));
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({
            "input": [1, 28, 28],
            "layers": [
                {"kind": "conv2d", "name": "conv1", "output": [2, 26, 26], "parameters": 20, "flops": 24336},
                {"kind": "flatten", "output": [1352], "parameters": 0, "flops": 0},
                {"kind": "dropout", "output": [1352], "parameters": 0, "flops": 0},
                {"kind": "dense", "name": "fc1", "output": [10], "parameters": 13530, "flops": 27040}
            ],
            "parameters": 13550,
            "flops_per_sample": 51376,
            "activations_per_sample": 784 + 1352 * 3 + 10
        })
    );
    assert_eq!(format!("[{:<8}]", p.layers[0].kind), "[conv2d  ]");
}
