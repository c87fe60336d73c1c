//! The API keeps its OpenAPI contract on input nobody should send: each case here is a
//! defect that generated requests (tests/schemathesis.sh) or probing around them found,
//! pinned so it stays fixed. Every answer is a documented status with an RFC 9457
//! problem body, never a 5xx and never axum's plain-text rejections.

use crate::common;

use common::service::TestServer;
use serde_json::{Value, json};
use sqlx::PgPool;

/// Status, Content-Type and JSON body of a request.
async fn send(req: reqwest::RequestBuilder) -> (u16, String, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map(|e| e.iter().map(|f| f["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn queued_spec() -> Value {
    json!({"preset": "torch-cnn", "epochs": 1})
}

#[sqlx::test]
async fn path_segment_that_is_not_utf8_is_a_404_problem(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    for path in [
        "/experiments/%FF",
        "/experiments/%C3%28/metrics",
        "/experiments/%FF/checkpoints",
        "/experiments/%FF/checkpoints/best",
        "/experiments/%FF/curve",
    ] {
        let (status, ct, body) = send(s.client.get(s.url(path))).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(ct, "application/problem+json", "{path}");
        assert_eq!(body["status"], 404, "{path}");
    }
    let (status, ct, _) = send(s.client.post(s.url("/experiments/%FF/cancel"))).await;
    assert_eq!((status, ct.as_str()), (404, "application/problem+json"));
    s.stop().await;
}

#[sqlx::test]
async fn wrong_method_on_a_known_path_is_a_405_problem_that_lists_the_allowed_ones(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let r = s.client.delete(s.url("/experiments")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let allow = r.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 405);

    let (status, ct, _) = send(s.client.put(s.url("/predict"))).await;
    assert_eq!((status, ct.as_str()), (405, "application/problem+json"));
    // An unknown path is still a 404 whatever the method.
    let (status, ct, _) = send(s.client.delete(s.url("/nowhere"))).await;
    assert_eq!((status, ct.as_str()), (404, "application/problem+json"));
    s.stop().await;
}

#[sqlx::test]
async fn cursor_naming_a_time_the_database_cannot_store_is_a_422_not_a_500(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    assert_eq!(s.submit(&queued_spec()).await.0, 201);
    let id = "0193a0b0c0d0e0f0a0b0c0d0e0f0a0b0";
    for cursor in [
        format!("-8000000000000000000_{id}"),
        format!("-1_{id}"),
        format!("9000000000000000000_{id}"),
        format!("1_{id}x"),
    ] {
        let (status, ct, body) = send(
            s.client
                .get(s.url("/experiments"))
                .query(&[("cursor", &cursor)]),
        )
        .await;
        assert_eq!(status, 422, "{cursor}: {body}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(fields(&body), ["cursor"], "{cursor}");
    }
    // A cursor the API returned still pages.
    assert_eq!(s.submit(&queued_spec()).await.0, 201);
    let (_, first) = s.get_json("/experiments?limit=1").await;
    let next = first["next_cursor"].as_str().unwrap().to_string();
    let (status, _, second) = send(
        s.client
            .get(s.url("/experiments"))
            .query(&[("cursor", &next), ("limit", &"1".to_string())]),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_ne!(second["items"][0]["id"], first["items"][0]["id"]);
    s.stop().await;
}

#[sqlx::test]
async fn query_parameter_that_does_not_parse_gets_a_422_naming_that_parameter(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    for (query, field) in [
        ("limit=abc", "limit"),
        ("limit=99999999999999999999", "limit"),
        ("limit=1&limit=2", "limit"),
        ("status=sleeping", "status"),
    ] {
        let (status, _, body) = send(s.client.get(s.url(&format!("/experiments?{query}")))).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(fields(&body), [field], "{query}: {body}");
    }
    for (query, field) in [
        ("priority=high", "priority"),
        ("priority=3000000000", "priority"),
        ("priority=101", "priority"),
    ] {
        let (status, _, body) = send(
            s.client
                .post(s.url(&format!("/experiments?{query}")))
                .json(&queued_spec()),
        )
        .await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(fields(&body), [field], "{query}: {body}");
    }
    let (status, _, body) = send(
        s.client
            .post(s.url("/predict?experiment=0193a0b0-c0d0-e0f0-a0b0-c0d0e0f0a0b0&top_k=x"))
            .header("content-type", "image/png")
            .body(vec![0u8; 8]),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(fields(&body), ["top_k"], "{body}");
    s.stop().await;
}

/// The document says what the server does: query parameters are in the query, the
/// media types `/predict` and `/metrics` answer to are all listed, and the curve's
/// events have a schema a client can check.
#[test]
fn document_places_parameters_and_media_types_where_the_server_reads_them() {
    let doc: Value = serde_json::from_str(&trainyard::api::openapi::document()).unwrap();
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let location = |op: &Value, name: &str| {
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))["in"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (path, method, name) in [
        ("/experiments", "get", "status"),
        ("/experiments", "get", "cursor"),
        ("/experiments", "get", "limit"),
        ("/experiments", "post", "priority"),
        ("/predict", "post", "experiment"),
        ("/predict", "post", "checkpoint"),
        ("/predict", "post", "top_k"),
    ] {
        assert_eq!(
            location(&op(path, method), name),
            "query",
            "{method} {path} {name}"
        );
    }
    let predict_body = op("/predict", "post")["requestBody"]["content"].clone();
    let mut types: Vec<&str> = predict_body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "image/jpeg",
            "image/png",
            "image/x-portable-graymap",
            "multipart/form-data"
        ]
    );
    let metrics = op("/experiments/{id}/metrics", "get")["responses"]["200"]["content"].clone();
    assert!(metrics.get("application/json").is_some() && metrics.get("text/csv").is_some());
    let curve = &op("/experiments/{id}/curve", "get")["responses"]["200"]["content"]["text/event-stream"]
        ["schema"]["$ref"];
    assert_eq!(curve, "#/components/schemas/CurveEvent");
}

/// Operation ids name one operation each (OpenAPI requires it): clients generate
/// functions from them, and links name their target by them. Handlers named alike in
/// different modules (`list`, `create`) would otherwise share one.
#[test]
fn every_operation_id_is_unique() {
    let doc: Value = serde_json::from_str(&trainyard::api::openapi::document()).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            if let Some(other) = seen.insert(id.to_string(), format!("{method} {path}")) {
                panic!("operationId {id} names both {other} and {method} {path}");
            }
        }
    }
}
