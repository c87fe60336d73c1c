//! Names, tags, search, deletion, comparison and spec checking: what a person needs to
//! keep many experiments apart, on the real app and a `#[sqlx::test]` database.

use crate::common;

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use sqlx::PgPool;

use common::service::{oneshot_app, oneshot_json};

fn post(uri: &str, body: &Value) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn patch(uri: &str, ct: &str, body: &Value) -> Request<Body> {
    Request::patch(uri)
        .header("content-type", ct)
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn delete(uri: &str) -> Request<Body> {
    Request::delete(uri).body(Body::empty()).unwrap()
}

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map(|e| e.iter().map(|e| e["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

async fn submit(app: &axum::Router, body: Value) -> Value {
    let (status, _, exp) = oneshot_json(app, post("/experiments", &body)).await;
    assert_eq!(status, 201, "{exp}");
    exp
}

fn names(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap_or("-"))
        .collect()
}

#[sqlx::test]
async fn name_and_tags_are_kept_beside_the_spec_not_in_it(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let exp = submit(
        &app,
        json!({"preset": "torch-cnn", "name": "<script>alert(1)</script>", "tags": ["article", "cpu"]}),
    )
    .await;
    assert_eq!(exp["name"], "<script>alert(1)</script>");
    assert_eq!(exp["tags"], json!(["article", "cpu"]));
    assert!(exp["spec"].get("name").is_none() && exp["spec"].get("tags").is_none());
    assert_eq!(exp["epochs"], 5);
    assert_eq!(exp["model"]["preset"], "torch-cnn");
    assert_eq!(exp["model"]["parameters"], 29066);
    assert!(
        exp["model"]["layers"]
            .as_str()
            .unwrap()
            .starts_with("conv2d 32 3x3 relu · conv2d 64 3x3 relu"),
        "{}",
        exp["model"]
    );
    let layer_flops: u64 = exp["summary"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["flops"].as_u64().unwrap())
        .sum();
    assert_eq!(
        layer_flops,
        exp["summary"]["flops_per_sample"].as_u64().unwrap()
    );

    let (status, _, problem) = oneshot_json(
        &app,
        post(
            "/experiments",
            &json!({"preset": "torch-cnn", "name": "", "tags": ["x".repeat(65)]}),
        ),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(fields(&problem), ["name", "tags[0]"]);
}

#[sqlx::test]
async fn patch_renames_and_retags_and_null_clears(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let id = submit(&app, json!({"preset": "torch-cnn", "name": "first"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!("/experiments/{id}");
    let (status, _, exp) = oneshot_json(
        &app,
        patch(
            &uri,
            "application/merge-patch+json",
            &json!({"name": "second", "tags": ["b", "a"]}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{exp}");
    assert_eq!(
        (exp["name"].as_str(), &exp["tags"]),
        (Some("second"), &json!(["b", "a"]))
    );
    // Only what the patch names changes.
    let (_, _, exp) = oneshot_json(
        &app,
        patch(&uri, "application/json", &json!({"tags": ["c"]})),
    )
    .await;
    assert_eq!(
        (exp["name"].as_str(), &exp["tags"]),
        (Some("second"), &json!(["c"]))
    );
    let (_, _, exp) = oneshot_json(
        &app,
        patch(
            &uri,
            "application/json",
            &json!({"name": null, "tags": null}),
        ),
    )
    .await;
    assert_eq!((&exp["name"], &exp["tags"]), (&Value::Null, &json!([])));

    let (status, _, problem) =
        oneshot_json(&app, patch(&uri, "application/json", &json!({"epochs": 2}))).await;
    assert_eq!((status, fields(&problem)), (422, vec!["epochs"]));
    let (status, ..) = oneshot_json(&app, patch(&uri, "text/plain", &json!({}))).await;
    assert_eq!(status, 415);
    let unknown = "/experiments/0193a0b0-c0d0-7e0f-a0b0-c0d0e0f0a0b0";
    let (status, ..) = oneshot_json(&app, patch(unknown, "application/json", &json!({}))).await;
    assert_eq!(status, 404);
}

#[sqlx::test]
async fn list_filters_by_tag_and_by_name_text(pool: PgPool) {
    let app = oneshot_app(pool).await;
    submit(
        &app,
        json!({"preset": "torch-cnn", "name": "Baseline 50%", "tags": ["a"]}),
    )
    .await;
    submit(
        &app,
        json!({"preset": "torch-cnn", "name": "baseline_lr", "tags": ["a", "b"]}),
    )
    .await;
    submit(
        &app,
        json!({"preset": "keras-cnn", "name": "keras run", "tags": ["b"]}),
    )
    .await;
    submit(&app, json!({"preset": "keras-cnn"})).await;

    let (_, _, page) = oneshot_json(&app, get("/experiments?tag=b")).await;
    assert_eq!(names(&page), ["keras run", "baseline_lr"]);
    let (_, _, page) = oneshot_json(&app, get("/experiments?q=BASELINE")).await;
    assert_eq!(names(&page), ["baseline_lr", "Baseline 50%"]);
    // LIKE's wildcards are plain characters in a search.
    let (_, _, page) = oneshot_json(&app, get("/experiments?q=50%25")).await;
    assert_eq!(names(&page), ["Baseline 50%"]);
    let (_, _, page) = oneshot_json(&app, get("/experiments?q=_")).await;
    assert_eq!(names(&page), ["baseline_lr"]);
    let (_, _, page) = oneshot_json(&app, get("/experiments?q=baseline&tag=a&status=queued")).await;
    assert_eq!(names(&page), ["baseline_lr", "Baseline 50%"]);
    let (_, _, page) = oneshot_json(&app, get("/experiments?q=baseline&status=running")).await;
    assert_eq!(names(&page), Vec::<&str>::new());

    let (status, _, problem) = oneshot_json(&app, get("/experiments?tag=")).await;
    assert_eq!((status, fields(&problem)), (422, vec!["tag"]));
    let long = "q".repeat(201);
    let (status, _, problem) = oneshot_json(&app, get(&format!("/experiments?q={long}"))).await;
    assert_eq!((status, fields(&problem)), (422, vec!["q"]));
}

#[sqlx::test]
async fn delete_removes_an_ended_experiment_with_all_it_owns_and_refuses_a_queued_one(
    pool: PgPool,
) {
    let app = oneshot_app(pool.clone()).await;
    let id = submit(&app, json!({"preset": "torch-cnn"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!("/experiments/{id}");
    let (status, _, problem) = oneshot_json(&app, delete(&uri)).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("queued"));

    let (status, ..) = oneshot_json(&app, post(&format!("{uri}/cancel"), &json!({}))).await;
    assert_eq!(status, 200);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM experiment_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(events >= 2);
    let (status, ..) = oneshot_json(&app, delete(&uri)).await;
    assert_eq!(status, 204);
    let (status, ..) = oneshot_json(&app, get(&uri)).await;
    assert_eq!(status, 404);
    // Nothing of it is left but the record of its deletion.
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM experiment_events WHERE kind <> 'deleted')
              + (SELECT count(*) FROM experiments)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    let deleted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM experiment_events WHERE kind = 'deleted'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(deleted, 1);
    let (status, ..) = oneshot_json(&app, delete(&uri)).await;
    assert_eq!(status, 404);
}

#[sqlx::test]
async fn compare_lists_each_experiment_and_the_spec_difference_of_the_article(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let keras = submit(&app, json!({"preset": "keras-cnn", "name": "keras"})).await;
    let torch = submit(&app, json!({"preset": "torch-cnn", "name": "torch"})).await;
    let ids = format!(
        "{},{}",
        keras["id"].as_str().unwrap(),
        torch["id"].as_str().unwrap()
    );
    let (status, _, cmp) = oneshot_json(&app, get(&format!("/compare?ids={ids}"))).await;
    assert_eq!(status, 200, "{cmp}");
    let exps = cmp["experiments"].as_array().unwrap();
    assert_eq!(
        exps.iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["keras", "torch"]
    );
    assert_eq!(exps[0]["metrics"], json!([]));
    assert!(exps[1]["summary"]["layers"].is_array());
    let diff = cmp["diff"].as_array().unwrap();
    let row = |path: &str| {
        diff.iter()
            .find(|d| d["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {diff:?}"))["values"]
            .clone()
    };
    assert_eq!(row("model.init"), json!(["keras", "torch"]));
    assert_eq!(row("batch_size"), json!([32, 512]));
    assert_eq!(row("dataset.resize"), json!([null, [8, 8]]));
    assert_eq!(
        row("model.layers[-1].activation"),
        json!(["softmax", "log_softmax"])
    );
    assert!(
        row("loss.formulation")[1]
            .as_str()
            .unwrap()
            .contains("log_softmax")
    );
}

#[sqlx::test]
async fn compare_names_unknown_ids_and_takes_two_to_eight(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let a = submit(&app, json!({"preset": "torch-cnn"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let missing = "0193a0b0-c0d0-7e0f-a0b0-c0d0e0f0a0b0";
    let (status, _, problem) =
        oneshot_json(&app, get(&format!("/compare?ids={a},{missing},nonsense"))).await;
    assert_eq!(status, 404);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(missing) && detail.contains("nonsense"),
        "{detail}"
    );
    assert!(!detail.contains(&a), "{detail}");

    for ids in [a.clone(), [a.as_str(); 9].join(","), format!("{a},{a}")] {
        let (status, _, problem) = oneshot_json(&app, get(&format!("/compare?ids={ids}"))).await;
        assert_eq!((status, fields(&problem)), (422, vec!["ids"]), "{ids}");
    }
    let (status, ..) = oneshot_json(&app, get("/compare")).await;
    assert_eq!(status, 422);
}

#[sqlx::test]
async fn validate_answers_like_submit_and_stores_nothing(pool: PgPool) {
    let app = oneshot_app(pool.clone()).await;
    let good = json!({"preset": "keras-cnn", "epochs": 2, "name": "n"});
    let (status, _, v) = oneshot_json(&app, post("/specs/validate", &good)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["spec"]["epochs"], 2);
    assert_eq!(v["spec"]["model"]["init"], "keras");
    assert_eq!(v["summary"]["parameters"], 9467274);

    let bad =
        json!({"preset": "torch-cnn", "model": {"layers": [{"type": "dense", "units": "ten"}]}});
    let (s1, _, p1) = oneshot_json(&app, post("/specs/validate", &bad)).await;
    let (s2, _, p2) = oneshot_json(&app, post("/experiments", &bad)).await;
    assert_eq!((s1, s2), (422, 422));
    assert_eq!(p1["errors"], p2["errors"]);
    assert_eq!(fields(&p1), ["model.layers[0].units"]);

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[sqlx::test]
async fn schema_and_presets_describe_what_submit_takes(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let (status, ct, schema) = oneshot_json(&app, get("/specs/schema")).await;
    assert_eq!((status, ct.as_str()), (200, "application/schema+json"));
    assert_eq!(schema["type"], "object");
    assert!(schema["$defs"]["LayerSpec"].is_object(), "{schema}");
    let (_, _, presets) = oneshot_json(&app, get("/specs/presets")).await;
    assert_eq!(presets["keras-cnn"]["batch_size"], 32);
    // Each preset, as printed, is itself a spec the server takes.
    for (_, spec) in presets.as_object().unwrap() {
        let (status, _, v) = oneshot_json(&app, post("/specs/validate", spec)).await;
        assert_eq!(status, 200, "{v}");
    }
    let (_, _, doc) = oneshot_json(&app, get("/openapi.json")).await;
    assert_eq!(
        doc["paths"]["/experiments"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/Submission"
    );
}
