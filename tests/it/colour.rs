//! Colour input through the engine: a dataset of RGB images with its own classes is
//! planned from its shape, trains on the CPU kernels and on Candle's graph to the same
//! curve and weights, and is learnt.
//!
//! The images are generated here: a red or green square or cross on a noisy background,
//! four classes, so that neither the colour alone nor the shape alone tells them apart.

use candle_core::{DType, Device};
use serde_json::json;
use trainyard::data::mnist::{Dataset, Split};
use trainyard::data::prepare::prepare;
use trainyard::engine::rng::Rng;
use trainyard::engine::trainer::Silent;
use trainyard::engine::{EngineError, Trainer};
use trainyard::spec::{self, DataShape, ExperimentSpec};

const SIDE: usize = 12;
const SHAPE: DataShape = DataShape {
    channels: 3,
    height: SIDE,
    width: SIDE,
    classes: 4,
};

/// The classes by label: 2 * shape + colour.
pub const CLASSES: [&str; 4] = ["red-square", "green-square", "red-cross", "green-cross"];

/// `n` images (CHW) with labels: class = 2 * shape + colour.
pub fn shapes(n: usize, seed: u64) -> Split {
    let mut rng = Rng::derive(seed, "colour-shapes", 0);
    let mut int = |hi: usize| (rng.next_f64() * hi as f64) as usize;
    let plane = SIDE * SIDE;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (shape, colour) = (int(2), int(2));
        let mut img: Vec<u8> = (0..3 * plane).map(|_| int(40) as u8).collect();
        let (top, left) = (int(SIDE - 5), int(SIDE - 5));
        for r in 0..5 {
            for c in 0..5 {
                let on = shape == 0 || r == 2 || c == 2;
                if on {
                    let at = (top + r) * SIDE + left + c;
                    img[colour * plane + at] = 200 + int(56) as u8;
                }
            }
        }
        images.extend(img);
        labels.push((2 * shape + colour) as u8);
    }
    Split {
        images,
        labels,
        len: n,
        channels: 3,
        rows: SIDE,
        cols: SIDE,
    }
}

fn dataset() -> Dataset {
    Dataset {
        train: shapes(800, 1),
        test: shapes(200, 2),
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
        sha256: None,
    }
}

fn spec_with(last_units: usize) -> ExperimentSpec {
    spec::from_value(json!({
        "version": 1,
        "dataset": {"name": "mnist", "validation": {"split": 0.25}},
        "model": {"init": "torch", "layers": [
            {"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same", "activation": "relu"},
            {"type": "max_pool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": last_units, "activation": "log_softmax"}
        ]},
        "optimizer": {"type": "adam", "learning_rate": 0.01},
        "epochs": 4,
        "batch_size": 32,
        "seed": 5,
        "device": "cpu"
    }))
    .unwrap()
}

fn train(spec: &ExperimentSpec, data: &Dataset, graph: bool) -> Trainer {
    let plan = spec::validate_for(spec, SHAPE).unwrap();
    let mut t = Trainer::new(spec, &plan, &prepare(data, &spec.dataset), &Device::Cpu).unwrap();
    if graph {
        t.use_candle_graph();
    }
    assert_eq!(t.uses_cpu_path(), !graph);
    t.run(&mut Silent).unwrap();
    t
}

#[test]
fn an_rgb_dataset_plans_three_input_channels_and_its_own_classes() {
    let plan = spec::validate_for(&spec_with(4), SHAPE).unwrap();
    assert_eq!(plan.input, [3, SIDE, SIDE]);
    assert_eq!(plan.layers[0].tensors[0].shape, [8, 3, 3, 3]);
    assert_eq!(plan.classes(), 4);

    let e = spec::validate_for(&spec_with(10), SHAPE).unwrap_err();
    assert_eq!(e.0[0].field, "model.layers[3]");
    assert_eq!(
        e.0[0].reason,
        "the model must end with 4 outputs, one per class, got 10"
    );
}

#[test]
fn coloured_shapes_train_alike_on_both_paths_and_are_learnt() {
    let (spec, data) = (spec_with(4), dataset());
    let fast = train(&spec, &data, false);
    let graph = train(&spec, &data, true);
    for (f, g) in fast.history().iter().zip(graph.history()) {
        assert!((f.train_loss - g.train_loss).abs() < 1e-4, "{f:?} {g:?}");
        let (ft, gt) = (f.test_loss.unwrap(), g.test_loss.unwrap());
        assert!((ft - gt).abs() < 1e-4, "{f:?} {g:?}");
    }
    let weights = |t: &Trainer| -> Vec<Vec<f32>> {
        t.checkpoint()
            .unwrap()
            .weights
            .iter()
            .filter(|(_, w)| w.dtype() == DType::F32)
            .map(|(_, w)| w.flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    for (a, b) in weights(&fast).iter().zip(weights(&graph)) {
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-3 * (1.0 + x.abs()), "{x} {y}");
        }
    }
    let last = fast.history().last().unwrap();
    assert!(last.test_accuracy.unwrap() > 0.95, "{last:?}");
}

#[test]
fn a_label_beyond_the_models_classes_is_refused_before_training() {
    let spec = spec_with(4);
    let mut data = dataset();
    data.train.labels[7] = 4;
    let plan = spec::validate_for(&spec, SHAPE).unwrap();
    let prepared = prepare(&data, &spec.dataset);
    match Trainer::new(&spec, &plan, &prepared, &Device::Cpu) {
        Err(EngineError::Label {
            label: 4,
            classes: 4,
        }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("trained on label 4 of a 4-class model"),
    }
}
