//! Real data nobody here made: scikit-learn's bundled `digits` (1,797 8x8 scans, ten
//! classes), exported as class folders by `tests/fixtures/digits/export.py`, uploaded
//! over HTTP, and learnt by the torch-cnn preset far above 90% on the held-out fifth.
//!
//! `#[ignore]`d because it needs the exported zip: `tests/run.sh` makes it (in a venv
//! with scikit-learn from PyPI) and runs this with `TRAINYARD_DIGITS_ZIP` set.

use serde_json::json;
use sqlx::PgPool;

use crate::common::service::{TestServer, worker_config};
use crate::datasets::upload;

#[sqlx::test]
#[ignore = "needs TRAINYARD_DIGITS_ZIP (tests/run.sh exports scikit-learn's digits)"]
async fn scikit_learn_digits_uploaded_as_class_folders_are_learnt_above_90_percent(pool: PgPool) {
    let path = std::env::var("TRAINYARD_DIGITS_ZIP").expect("TRAINYARD_DIGITS_ZIP");
    let zip = std::fs::read(&path).unwrap();
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let (status, d) = upload(&s, "?name=digits&seed=3", "application/zip", zip).await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(
        d["class_names"],
        json!(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
    );
    assert_eq!(
        (d["height"].as_i64(), d["channels"].as_i64()),
        (Some(8), Some(1))
    );
    let (train, test) = (
        d["train_samples"].as_i64().unwrap(),
        d["test_samples"].as_i64().unwrap(),
    );
    assert_eq!(train + test, 1797);
    // A stratified fifth: each class's test share within one image of 20%.
    for (tr, te) in d["train_counts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(d["test_counts"].as_array().unwrap())
    {
        let (tr, te) = (tr.as_f64().unwrap(), te.as_f64().unwrap());
        assert!((te - 0.2 * (tr + te)).abs() <= 1.0, "{tr} + {te}");
    }
    // The article's PyTorch model, as it is (its resize to 8x8 is these images' size).
    let spec = json!({
        "preset": "torch-cnn",
        "dataset": {"id": d["id"]},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "epochs": 20,
        "batch_size": 32,
        "shuffle": true,
        "device": "cpu"
    });
    let (status, exp) = s.submit(&spec).await;
    assert_eq!(status, 201, "{exp}");
    let id = exp["id"].as_str().unwrap();
    let done = s.wait_status(id, "succeeded", 600).await;
    let acc = done["best_test_accuracy"].as_f64().unwrap();
    println!("digits: best test accuracy {acc:.4} over {test} held-out images");
    assert!(acc > 0.9, "{done}");
    s.stop().await;
}
