//! A server refuses, at submission, a spec that names a built-in dataset its workers do
//! not have (an image built without the optional Fashion-MNIST), instead of queueing a
//! job that could only fail in the worker.

use crate::common;

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use sqlx::PgPool;
use trainyard::data::mnist::Source;

use common::service::{oneshot_json, oneshot_state, problem_fields};

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn spec(dataset: &str) -> Value {
    json!({"preset": "torch-cnn", "epochs": 1, "dataset": {"name": dataset}})
}

#[sqlx::test]
async fn a_built_in_dataset_the_server_lacks_is_a_422_at_dataset_name(pool: PgPool) {
    // A data folder with MNIST and no Fashion-MNIST.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::data_dir().join("mnist"), dir.path().join("mnist")).unwrap();
    let data = dir.path().to_path_buf();
    let app = trainyard::api::app(
        oneshot_state(pool.clone())
            .await
            .with_builtin_data(Source::offline(&data)),
    );
    for path in ["/experiments", "/specs/validate"] {
        let (status, _, problem) = oneshot_json(&app, post(path, &spec("fashion-mnist"))).await;
        assert_eq!(status, 422, "{path}: {problem}");
        assert_eq!(problem_fields(&problem), ["dataset.name"], "{problem}");
        let reason = problem["errors"][0]["reason"].as_str().unwrap();
        assert!(reason.contains("does not have fashion-mnist"), "{reason}");
        assert!(
            !reason.contains(data.to_str().unwrap()),
            "no server path: {reason}"
        );
    }
    let (status, _, body) = oneshot_json(&app, post("/experiments", &spec("mnist"))).await;
    assert_eq!(status, 201, "{body}");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 1, "nothing of the refused specs was queued");

    // A server that may download takes it: the worker fetches the files.
    let app = trainyard::api::app(oneshot_state(pool).await.with_builtin_data(Source {
        download: true,
        ..Source::offline(&data)
    }));
    let (status, _, body) =
        oneshot_json(&app, post("/specs/validate", &spec("fashion-mnist"))).await;
    assert_eq!(status, 200, "{body}");
}
