//! Curve pictures over HTTP, drawn from epochs a real worker trained and stored.

use crate::common;

use serde_json::json;
use sqlx::PgPool;

use common::service::{TestServer, worker_config};

/// The `data-series` names and point counts of the SVG's series paths.
fn series(svg: &str) -> Vec<(String, usize)> {
    let doc = roxmltree::Document::parse(svg).expect("the SVG parses as XML");
    doc.descendants()
        .filter(|n| n.attribute("class") == Some("series"))
        .map(|n| {
            let d = n.attribute("d").unwrap();
            let points = d.matches(['M', 'L']).count();
            (n.attribute("data-series").unwrap().to_string(), points)
        })
        .collect()
}

fn tiny(name: &str) -> serde_json::Value {
    json!({"preset": "torch-cnn", "name": name, "epochs": 2, "batch_size": 50, "device": "cpu",
           "dataset": {"train_limit": 200, "test_limit": 100}})
}

#[sqlx::test]
async fn curve_and_compare_pictures_draw_every_stored_epoch(pool: PgPool) {
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let (_, a) = s.submit(&tiny("run <a> & b")).await;
    let (_, b) = s.submit(&tiny("second")).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    s.wait_status(a, "succeeded", 120).await;
    s.wait_status(b, "succeeded", 120).await;

    let r = s
        .client
        .get(s.url(&format!("/experiments/{a}/curve.svg")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["content-security-policy"], "default-src 'none'");
    let svg = r.text().await.unwrap();
    // torch-cnn validates on the test set: train and validation (test) losses.
    let drawn = series(&svg);
    assert!(!drawn.is_empty(), "{svg}");
    assert!(drawn.iter().all(|(_, n)| *n == 2), "{drawn:?}");
    assert!(svg.contains("run &lt;a&gt; &amp; b"), "the name is escaped");

    let r = s
        .client
        .get(s.url(&format!(
            "/experiments/{a}/curve.png?metric=accuracy&width=300&height=220"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    let png = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((png.width(), png.height()), (300, 220));

    let svg = get_text(&s, &format!("/compare.svg?ids={a},{b}")).await;
    let drawn = series(&svg);
    assert_eq!(drawn.len(), 2 * series_per_run(&s, a).await, "{drawn:?}");
    assert!(
        drawn.iter().any(|(n, _)| n.starts_with("second")),
        "{drawn:?}"
    );
    let r = s
        .client
        .get(s.url(&format!("/compare.png?ids={a},{b}")))
        .send()
        .await
        .unwrap();
    let png = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((png.width(), png.height()), (800, 500));

    for (path, status) in [
        (format!("/experiments/{a}/curve.svg?metric=f1"), 422),
        (format!("/experiments/{a}/curve.png?width=100"), 422),
        (format!("/experiments/{a}/curve.png?height=4001"), 422),
        (
            "/experiments/0193a0b0-c0d0-7e0f-a0b0-c0d0e0f0a0b0/curve.svg".into(),
            404,
        ),
        (format!("/compare.svg?ids={a}"), 422),
        (
            format!("/compare.png?ids={a},0193a0b0-c0d0-7e0f-a0b0-c0d0e0f0a0b0"),
            404,
        ),
    ] {
        let r = s.client.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    s.stop().await;
}

/// How many series one run of these experiments draws (its splits with values).
async fn series_per_run(s: &TestServer, id: &str) -> usize {
    series(&get_text(s, &format!("/experiments/{id}/curve.svg")).await).len()
}

async fn get_text(s: &TestServer, path: &str) -> String {
    let r = s.client.get(s.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}
