//! Fashion-MNIST uploaded as IDX pairs trains to the very curve of the built-in
//! `fashion-mnist` with the same spec and seed: the upload decodes the same tensors in the
//! same order, and nothing downstream can tell where they came from.
//!
//! `#[ignore]`d because it needs Debian's `dataset-fashion-mnist` (its files in
//! /usr/share/datasets/fashion-mnist); `tests/run.sh` installs it and runs this.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::service::{TestServer, worker_config};

const DIR: &str = "/usr/share/datasets";

#[sqlx::test]
#[ignore = "needs the dataset-fashion-mnist Debian package"]
async fn fashion_mnist_uploaded_as_idx_trains_the_same_curve_as_the_built_in(pool: PgPool) {
    let mut cfg = worker_config("w");
    cfg.data_dir = DIR.into();
    let s = TestServer::start(pool, &[cfg]).await;
    let file = |n: &str| std::fs::read(format!("{DIR}/fashion-mnist/{n}.gz")).unwrap();
    let part = |n: &str, bytes: Vec<u8>| {
        reqwest::multipart::Part::bytes(bytes).file_name(format!("{n}.gz"))
    };
    let form = reqwest::multipart::Form::new()
        .part(
            "train_images",
            part("train-images-idx3-ubyte", file("train-images-idx3-ubyte")),
        )
        .part(
            "train_labels",
            part("train-labels-idx1-ubyte", file("train-labels-idx1-ubyte")),
        )
        .part(
            "test_images",
            part("t10k-images-idx3-ubyte", file("t10k-images-idx3-ubyte")),
        )
        .part(
            "test_labels",
            part("t10k-labels-idx1-ubyte", file("t10k-labels-idx1-ubyte")),
        );
    let started = std::time::Instant::now();
    let r = s
        .client
        .post(s.url("/datasets?name=fashion&class_names=T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle%20boot"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let d: Value = r.json().await.unwrap();
    println!(
        "fashion-mnist IDX upload stored in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (d["train_samples"].as_i64(), d["test_samples"].as_i64()),
        (Some(60000), Some(10000))
    );
    assert_eq!(d["format"], "idx");
    assert_eq!(d["held_out"], Value::Null);
    assert_eq!(d["class_names"][9], "Ankle boot");

    let spec = |dataset: Value| {
        json!({
            "version": 1,
            "dataset": dataset,
            "model": {"init": "torch", "layers": [
                {"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"},
                {"type": "max_pool2d", "size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 10, "activation": "log_softmax"}
            ]},
            "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
            "epochs": 2,
            "batch_size": 64,
            "seed": 11,
            "device": "cpu"
        })
    };
    let limits = json!({"train_limit": 3000, "test_limit": 1000, "validation": {"split": 0.2}});
    let mut built_in = limits.clone();
    built_in["name"] = json!("fashion-mnist");
    let mut uploaded = limits;
    uploaded["id"] = d["id"].clone();
    let mut curves = Vec::new();
    for dataset in [built_in, uploaded] {
        let (status, exp) = s.submit(&spec(dataset)).await;
        assert_eq!(status, 201, "{exp}");
        let id = exp["id"].as_str().unwrap().to_string();
        s.wait_status(&id, "succeeded", 300).await;
        let (_, rows) = s.get_json(&format!("/experiments/{id}/metrics")).await;
        let losses: Vec<Value> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                json!([
                    r["train_loss"],
                    r["train_accuracy"],
                    r["val_loss"],
                    r["val_accuracy"],
                    r["test_loss"],
                    r["test_accuracy"]
                ])
            })
            .collect();
        curves.push(losses);
    }
    println!("built-in: {:?}\nuploaded: {:?}", curves[0], curves[1]);
    assert_eq!(curves[0], curves[1], "bit-identical curves");
    s.stop().await;
}
