//! The bound on open curve streams: past `--max-sse-streams` a client gets a 503 problem
//! with Retry-After, and a stream's slot is free again as soon as its client leaves.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use trainyard::api::{AppState, app};
use trainyard::store::Store;
use trainyard::store::listen::Hub;

#[sqlx::test]
async fn streams_past_the_limit_get_503_until_one_closes(pool: PgPool) {
    let store = Store::from_pool(pool);
    let (_shutdown, rx) = watch::channel(false);
    let hub = Hub::start(store.pool()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app(AppState::new(store, hub, rx).with_max_sse_streams(2));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::new();

    // No worker: the experiment stays queued and its curve stays open.
    let exp: serde_json::Value = client
        .post(format!("{base}/experiments"))
        .json(&json!({"preset": "torch-cnn", "device": "cpu"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let curve = format!("{base}/experiments/{}/curve", exp["id"].as_str().unwrap());
    let open = || {
        client
            .get(&curve)
            .header("accept", "text/event-stream")
            .send()
    };
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    let third = open().await.unwrap();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    assert_eq!(third.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = third.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("2 curve streams"),
        "{problem}"
    );

    // The first client leaves: its slot frees once the server notices the closed stream.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = open().await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
}
