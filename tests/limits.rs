//! What the network needs from the service: every response and problem names its
//! request, and the server's log lines carry that id.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

use common::procs::{Harness, Proc, Timing};
use common::service::oneshot_app;

/// `trainyard serve` with no workers, keys off and `flags`; its process and address
/// (`host:port`).
fn serve(h: &Harness, flags: &[&str]) -> (Proc, String) {
    let mut extra = vec!["--auth", "off"];
    extra.extend_from_slice(flags);
    let (p, base) = h.serve_with("serve", 0, "127.0.0.1:0", &extra);
    let addr = base.strip_prefix("http://").unwrap().to_string();
    (p, addr)
}

/// A request through `oneshot_app` with `x-request-id` values `ids`.
fn get_with_ids(uri: &str, ids: &[&str]) -> Request<Body> {
    let mut b = Request::get(uri);
    for id in ids {
        b = b.header("x-request-id", *id);
    }
    b.body(Body::empty()).unwrap()
}

#[sqlx::test]
async fn every_response_carries_a_request_id_and_a_problem_names_it(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let mut ids = Vec::new();
    for uri in ["/healthz", "/no/such/route", "/experiments/not-an-id"] {
        let res = app.clone().oneshot(get_with_ids(uri, &[])).await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(id.parse::<uuid::Uuid>().is_ok(), "{uri}: {id}");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        if status != StatusCode::OK {
            let problem: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                problem["instance"],
                format!("urn:trainyard:request:{id}"),
                "{uri}"
            );
        }
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids repeat: {ids:?}");
}

#[sqlx::test]
async fn a_safe_client_request_id_is_kept_and_any_other_replaced(pool: PgPool) {
    let app = oneshot_app(pool).await;
    let safe = "client-42.run_7";
    let res = app
        .clone()
        .oneshot(get_with_ids("/nope", &[safe]))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], safe);
    let problem: Value =
        serde_json::from_slice(&axum::body::to_bytes(res.into_body(), 4096).await.unwrap())
            .unwrap();
    assert_eq!(problem["instance"], format!("urn:trainyard:request:{safe}"));

    let long = "a".repeat(65);
    for ids in [
        vec!["has space"],
        vec!["semi;colon"],
        vec![long.as_str()],
        vec!["a", "b"],
        vec![""],
    ] {
        let res = app
            .clone()
            .oneshot(get_with_ids("/healthz", &ids))
            .await
            .unwrap();
        let all: Vec<_> = res.headers().get_all("x-request-id").iter().collect();
        assert_eq!(all.len(), 1, "{ids:?}: {all:?}");
        let id = all[0].to_str().unwrap();
        assert!(id.parse::<uuid::Uuid>().is_ok(), "{ids:?} gave {id}");
    }
}

#[sqlx::test]
async fn the_servers_log_lines_of_a_request_carry_its_id_route_and_account(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (p, addr) = serve(&h, &[]);
    let id = "log-trace-1";
    let res = reqwest::Client::new()
        .get(format!(
            "http://{addr}/experiments/{}",
            uuid::Uuid::now_v7()
        ))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-request-id"], id);

    let span_of = |l: &Value| -> Option<Value> {
        l["spans"]
            .as_array()?
            .iter()
            .find(|s| s["request_id"] == id)
            .cloned()
    };
    p.wait_log(|l| span_of(l).is_some(), Duration::from_secs(10));
    let lines: Vec<Value> = p
        .log_lines()
        .into_iter()
        .filter(|l| span_of(l).is_some())
        .collect();
    let done = lines
        .iter()
        .find(|l| l["fields"]["status"] == 404)
        .unwrap_or_else(|| panic!("no line with the response's status: {lines:?}"));
    let span = span_of(done).unwrap();
    assert_eq!(span["method"], "GET", "{span}");
    assert_eq!(span["path"], "/experiments/{id}", "{span}");
    assert_eq!(span["account"], "default", "{span}");
}
