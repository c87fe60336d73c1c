//! The `trainyard` command as a user runs it: train, resume, predict, validate, plot.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn trainyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(args)
        .env("TRAINYARD_DATA_DIR", common::data_dir())
        .env("TRAINYARD_NO_DOWNLOAD", "true")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn without_timing(mut v: Vec<Value>) -> Vec<Value> {
    for m in &mut v {
        m["train_seconds"] = Value::Null;
        m["images_per_second"] = Value::Null;
    }
    v
}

#[test]
fn train_writes_metrics_and_checkpoints_resume_continues_and_predict_classifies() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("spec.json");
    let spec_json = json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 1000, "test_limit": 200, "validation": {"split": 0.2}},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50, "epochs": 2, "shuffle": true, "device": "cpu"
    });
    std::fs::write(&spec, spec_json.to_string()).unwrap();
    let run = tmp.path().join("run");
    let stdout = ok(trainyard(&[
        "train",
        spec.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]));
    assert!(stdout.contains("29066 parameters"), "{stdout}");
    let m = metrics(&run);
    assert_eq!(m.len(), 2);
    // The keys, in this order, in the file itself.
    let first_line = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let keys = [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "test_loss",
        "test_accuracy",
        "train_seconds",
        "images_per_second",
        "learning_rate",
    ];
    let at: Vec<usize> = keys
        .iter()
        .map(|k| first_line.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{first_line}");
    assert_eq!(m[0].as_object().unwrap().len(), keys.len());
    assert!(m[1]["val_accuracy"].as_f64().unwrap() > 0.5);
    for e in [1, 2] {
        assert!(
            run.join(format!("checkpoints/epoch-{e}.safetensors"))
                .exists()
        );
        assert!(
            run.join(format!("checkpoints/epoch-{e}.optim.safetensors"))
                .exists()
        );
    }

    // Resume from epoch 1 in another folder: the same curve.
    let resumed = tmp.path().join("resumed");
    ok(trainyard(&[
        "train",
        spec.to_str().unwrap(),
        "--out",
        resumed.to_str().unwrap(),
        "--resume",
        run.to_str().unwrap(),
        "--resume-epoch",
        "1",
    ]));
    assert_eq!(without_timing(metrics(&resumed)), without_timing(m));

    // Predict a real MNIST test image written as a PNG.
    let test = &common::mnist().test;
    let png = tmp.path().join("digit.png");
    image::GrayImage::from_raw(28, 28, test.image(0).to_vec())
        .unwrap()
        .save(&png)
        .unwrap();
    let ckpt = run.join("checkpoints/epoch-2.safetensors");
    let out = ok(trainyard(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--json",
        png.to_str().unwrap(),
    ]));
    let p: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(p["class"], json!(test.labels[0]), "{p}");
    let probs: Vec<f64> = serde_json::from_value(p["probabilities"].clone()).unwrap();
    assert_eq!(probs.len(), 10);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);

    // A file that is not an image is refused with a message, not a crash.
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = trainyard(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        junk.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.png"));
}

#[test]
fn validate_prints_the_summary_or_the_precise_error() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.json");
    std::fs::write(&good, json!({"preset": "keras-cnn"}).to_string()).unwrap();
    let out = ok(trainyard(&["validate", good.to_str().unwrap()]));
    assert!(out.contains("9467274 parameters"), "{out}");

    let bad = tmp.path().join("bad.json");
    let mut spec = json!({"preset": "torch-cnn"});
    spec["model"] = json!({"layers": [
        {"type": "conv2d", "filters": 4, "kernel": 3},
        {"type": "max_pool2d", "size": 3},
        {"type": "max_pool2d", "size": 2},
        {"type": "max_pool2d", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10}
    ]});
    std::fs::write(&bad, spec.to_string()).unwrap();
    let out = trainyard(&["validate", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.layers[3]: max_pool2d 2x2 needs at least 2x2 input, got 1x1"),
        "{err}"
    );
}

#[test]
fn presets_prints_both_complete_specs() {
    let out: Value = serde_json::from_str(&ok(trainyard(&["presets"]))).unwrap();
    assert_eq!(out["keras-cnn"]["batch_size"], 32);
    assert_eq!(out["torch-cnn"]["dataset"]["resize"], json!([8, 8]));
    // A printed preset is a valid spec that resolves to itself.
    let again = trainyard::spec::from_value(out["torch-cnn"].clone()).unwrap();
    assert_eq!(serde_json::to_value(again).unwrap(), out["torch-cnn"]);
}

fn tiny_spec(dir: &Path, train_limit: u32, epochs: u32) -> std::path::PathBuf {
    let spec = dir.join("spec.json");
    let v = json!({
        "preset": "torch-cnn", "dataset": {"train_limit": train_limit, "test_limit": 100},
        "batch_size": 50, "epochs": epochs, "device": "cpu"
    });
    std::fs::write(&spec, v.to_string()).unwrap();
    spec
}

#[test]
fn train_says_when_candle_graph_trains_and_why() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("spec.json");
    let v = json!({
        "version": 1,
        "dataset": {"name": "mnist", "train_limit": 100, "test_limit": 50, "resize": [8, 8]},
        "model": {"layers": [
            {"type": "conv2d", "filters": 2, "kernel": 3},
            {"type": "batch_norm"},
            {"type": "flatten"},
            {"type": "dense", "units": 10}
        ]},
        "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "epochs": 1, "batch_size": 50, "device": "cpu"
    });
    std::fs::write(&spec, v.to_string()).unwrap();
    let run = tmp.path().join("run");
    let out = ok(trainyard(&[
        "train",
        spec.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]));
    assert!(
        out.contains("engine: candle-graph (the CPU kernels do not support layer 1: batch_norm)"),
        "{out}"
    );
}

#[test]
fn train_refuses_a_folder_that_holds_a_run_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tiny_spec(tmp.path(), 200, 1);
    let (spec, run) = (spec.to_str().unwrap(), tmp.path().join("run"));
    let run = run.to_str().unwrap();
    let first = ok(trainyard(&["train", spec, "--out", run]));
    assert!(first.contains("device: cpu"), "{first}");
    assert!(first.contains("engine: cpu-kernels"), "{first}");
    let before = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();

    let again = trainyard(&["train", spec, "--out", run]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains(&format!("{run} already holds a run")), "{err}");
    assert!(
        err.contains(&format!("--out {run} --resume {run}")),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let after = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(before, after, "the refused run touched the folder");

    ok(trainyard(&["train", spec, "--out", run, "--force"]));
}

#[test]
fn ctrl_c_stops_train_at_a_batch_and_says_how_to_resume() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let spec = tiny_spec(tmp.path(), 6000, 200);
    let run = tmp.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args([
            "train",
            spec.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .env("TRAINYARD_DATA_DIR", common::data_dir())
        .env("TRAINYARD_NO_DOWNLOAD", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first epoch's row (it starts with the epoch number), then Ctrl-C.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().trim_start().starts_with("1 ") {
            break;
        }
    }
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {rest:?}");
    let last = rest.last().unwrap();
    let (out, spec) = (run.display(), spec.display());
    assert!(
        last.contains(&format!(
            "trainyard train {spec} --out {out} --resume {out}"
        )),
        "{rest:?}"
    );
    let done = metrics(&run).len();
    assert!((1..200).contains(&done), "{done} epochs stored");
}

#[test]
fn predict_given_a_folder_or_an_optimizer_file_says_what_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tiny_spec(tmp.path(), 200, 1);
    let run = tmp.path().join("run");
    ok(trainyard(&[
        "train",
        spec.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]));
    let weights = run.join("checkpoints/epoch-1.safetensors");
    let err = |checkpoint: &Path| {
        let out = trainyard(&[
            "predict",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "x.png",
        ]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for folder in [run.clone(), run.join("checkpoints")] {
        let e = err(&folder);
        assert!(
            e.contains(&format!("{} is a folder", folder.display())),
            "{e}"
        );
        assert!(e.contains(&format!("e.g. {}", weights.display())), "{e}");
    }
    let e = err(&run.join("checkpoints/epoch-1.optim.safetensors"));
    assert!(e.contains("holds optimizer state"), "{e}");
    assert!(e.contains(&format!("are {}", weights.display())), "{e}");
}

#[test]
fn presets_name_prints_that_one_and_an_unknown_name_lists_the_presets() {
    let one: Value = serde_json::from_str(&ok(trainyard(&["presets", "keras-cnn"]))).unwrap();
    let all: Value = serde_json::from_str(&ok(trainyard(&["presets"]))).unwrap();
    assert_eq!(one, all["keras-cnn"]);
    let out = trainyard(&["presets", "resnet"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown preset \"resnet\": the presets are keras-cnn, torch-cnn"),
        "{err}"
    );
}

#[test]
fn validate_of_a_missing_file_names_it() {
    let out = trainyard(&["validate", "/nonexistent/nosuch.json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the spec /nonexistent/nosuch.json"),
        "{err}"
    );
    assert!(err.contains("No such file"), "{err}");
}

/// A run folder as `train` writes it, with `n` epochs of made-up figures.
fn fake_run(dir: &Path, n: u32, val: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("spec.json"),
        json!({"preset": "torch-cnn"}).to_string(),
    )
    .unwrap();
    let lines: Vec<String> = (1..=n)
        .map(|e| {
            let loss = 2.0 / f64::from(e);
            let opt = |v: f64| if val { json!(v) } else { Value::Null };
            json!({
                "epoch": e, "train_loss": loss, "train_accuracy": 1.0 - loss / 3.0,
                "val_loss": opt(loss * 1.1), "val_accuracy": opt(1.0 - loss / 2.5),
                "test_loss": loss * 1.2, "test_accuracy": 1.0 - loss / 2.0,
                "train_seconds": 1.5, "images_per_second": 1000.0
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn plot_draws_run_folders_as_svg_or_png_and_refuses_other_extensions() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("keras-cnn"), tmp.path().join("torch-cnn"));
    fake_run(&a, 4, true);
    fake_run(&b, 3, false);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let svg = tmp.path().join("curves.svg");
    ok(trainyard(&["plot", a, b, "--out", svg.to_str().unwrap()]));
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let series: Vec<(&str, usize)> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("series"))
        .map(|n| {
            let d = n.attribute("d").unwrap();
            let points = d.chars().filter(|c| matches!(c, 'M' | 'L')).count();
            (n.attribute("data-series").unwrap(), points)
        })
        .collect();
    assert_eq!(
        series,
        [
            ("keras-cnn · train", 4),
            ("keras-cnn · validation", 4),
            ("keras-cnn · test", 4),
            ("torch-cnn · train", 3),
            ("torch-cnn · test", 3),
        ]
    );

    let png = tmp.path().join("curves.png");
    ok(trainyard(&[
        "plot",
        a,
        b,
        "--out",
        png.to_str().unwrap(),
        "--metric",
        "accuracy",
        "--width",
        "640",
        "--height",
        "360",
        "--title",
        "two runs",
    ]));
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (640, 360));

    let out = trainyard(&["plot", a, "--out", "curves.jpg"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("curves.jpg") && err.contains(".svg or .png"),
        "{err}"
    );

    // A folder without metrics.jsonl is named.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = trainyard(&[
        "plot",
        empty.to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty/metrics.jsonl"), "{err}");
}

/// A flag's range is clap's: a value outside it, given as a flag or through its
/// environment variable, is refused before anything runs (exit 2, clap's usage error),
/// and the message names the flag. The database URL leads nowhere, so a value that
/// slipped through would fail differently rather than start a server.
#[test]
fn a_flag_out_of_its_range_is_refused_by_clap_naming_the_flag() {
    let refused = |args: &[&str], env: Option<(&str, &str)>, flag: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainyard"));
        cmd.args(args)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/nothing")
            .env("TRAINYARD_DATA_DIR", common::data_dir())
            .env("TRAINYARD_NO_DOWNLOAD", "true");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("invalid value") && stderr.contains(flag),
            "{args:?} {env:?}: {stderr}"
        );
    };
    refused(
        &["serve", "--max-sse-streams", "0"],
        None,
        "--max-sse-streams",
    );
    refused(
        &["serve", "--predict-max-batch", "4097"],
        None,
        "--predict-max-batch",
    );
    refused(&["serve", "--lease-secs", "inf"], None, "--lease-secs");
    refused(
        &["serve", "--body-timeout-secs", "86401"],
        None,
        "--body-timeout-secs",
    );
    refused(
        &["worker", "--db-connections", "0"],
        None,
        "--db-connections",
    );
    refused(
        &["housekeep", "--retention-days=-1"],
        None,
        "--retention-days",
    );
    refused(&["bench", "--warmup", "0"], None, "--warmup");
    refused(
        &["healthcheck", "--timeout-secs", "0"],
        None,
        "--timeout-secs",
    );
    refused(
        &["worker"],
        Some(("TRAINYARD_HEARTBEAT_SECS", "0")),
        "--heartbeat-secs",
    );
}

#[test]
fn train_takes_a_warm_starts_weights_from_init_and_keeps_frozen_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = |extra: Value| {
        let mut v = json!({
            "preset": "torch-cnn",
            "dataset": {"train_limit": 500, "test_limit": 100},
            "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
            "batch_size": 50, "epochs": 1, "device": "cpu"
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let write = |name: &str, v: &Value| {
        let p = tmp.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let first = tmp.path().join("first");
    ok(trainyard(&[
        "train",
        &write("a.json", &spec(json!({}))),
        "--out",
        first.to_str().unwrap(),
    ]));
    let init = first.join("checkpoints/epoch-1.safetensors");
    let tuned = write(
        "b.json",
        &spec(json!({"seed": 9, "warm_start": {
            "experiment": "00000000-0000-0000-0000-000000000001", "freeze": ["conv1"]}})),
    );
    let second = tmp.path().join("second");
    // Without weights to start from, refused with what to do.
    let out = trainyard(&["train", &tuned, "--out", second.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--init FILE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(trainyard(&[
        "train",
        &tuned,
        "--out",
        second.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
    ]));
    let load = |p: &Path| {
        let c = trainyard::engine::Checkpoint::load(p).unwrap();
        c.weight_map()
            .into_iter()
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let (a, b) = (
        load(&init),
        load(&second.join("checkpoints/epoch-1.safetensors")),
    );
    assert!(a["conv1.weight"] == b["conv1.weight"] && a["conv1.bias"] == b["conv1.bias"]);
    assert!(a["conv2.weight"] != b["conv2.weight"]);
}
