//! Sweeps: a grid queues exactly its children and ranks them by what they measured; a
//! sweep with one bad child queues nothing and names the field; cancel and delete reach
//! every child; an ablation of the two presets queues one child per difference and ranks
//! the differences by how far each moves A towards B.

use crate::common;

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use common::service::{TestServer, problem_fields, worker_config};

fn tiny(preset: &str) -> Value {
    json!({
        "preset": preset,
        "epochs": 1,
        "dataset": {"train_limit": 300, "test_limit": 100},
        "seed": 5,
        "device": "cpu"
    })
}

async fn experiment_count(s: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(s.store.pool())
        .await
        .unwrap()
}

/// Polls the sweep until every child has ended.
async fn wait_finished(s: &TestServer, id: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, v) = s.get_json(&format!("/sweeps/{id}")).await;
        assert_eq!(code, 200, "{v}");
        if v["state"] == "finished" {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished after {secs}s: {}",
            v["counts"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An experiment's last stored value of `metric`, read from its metrics, not the sweep.
async fn last(s: &TestServer, id: &str, metric: &str) -> f64 {
    let (_, m) = s.get_json(&format!("/experiments/{id}/metrics")).await;
    m.as_array().unwrap().last().unwrap()[metric]
        .as_f64()
        .unwrap()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (m, var.sqrt())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

#[sqlx::test]
async fn a_grid_sweep_queues_exactly_its_children_and_ranks_them(pool: PgPool) {
    let s = TestServer::start(pool, &[worker_config("w1"), worker_config("w2")]).await;
    let (code, sweep) = s
        .post_json(
            "/sweeps",
            &json!({
                "base": tiny("torch-cnn"),
                "grid": {"optimizer.learning_rate": [0.2, 0.0001]},
                "repeats": 2,
                "metric": "test_loss",
                "name": "rates",
                "tags": ["grid"]
            }),
        )
        .await;
    assert_eq!(code, 201, "{sweep}");
    let id = sweep["id"].as_str().unwrap().to_string();
    let children = sweep["children"].as_array().unwrap();
    assert_eq!(children.len(), 4);
    assert_eq!(experiment_count(&s).await, 4);
    // Each child is the base with its point set, on seeds 5 and 6.
    let mut seen = Vec::new();
    for c in children {
        let (_, e) = s
            .get_json(&format!("/experiments/{}", c["id"].as_str().unwrap()))
            .await;
        assert_eq!(e["sweep_id"], id);
        assert_eq!(e["tags"], json!(["grid"]));
        assert!(e["name"].as_str().unwrap().starts_with("rates · "), "{e}");
        seen.push((
            e["spec"]["optimizer"]["learning_rate"].as_f64().unwrap(),
            e["spec"]["seed"].as_u64().unwrap(),
            e["spec"]["epochs"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        seen,
        [(0.2, 5, 1), (0.2, 6, 1), (0.0001, 5, 1), (0.0001, 6, 1)]
    );

    let done = wait_finished(&s, &id, 300).await;
    assert_eq!(done["counts"], json!({"succeeded": 4}), "{done}");
    let ranking = done["ranking"].as_array().unwrap();
    assert_eq!(ranking.len(), 2);
    let mut means = Vec::new();
    for (i, r) in ranking.iter().enumerate() {
        assert_eq!(r["rank"], i + 1);
        let ids: Vec<&str> = r["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 2);
        let mut values = Vec::new();
        for id in ids {
            values.push(last(&s, id, "test_loss").await);
        }
        let (mean, std) = mean_std(&values);
        let m = &r["metric"];
        assert_eq!(m["n"], 2);
        assert!(close(m["mean"].as_f64().unwrap(), mean), "{m} vs {mean}");
        assert!(close(m["std"].as_f64().unwrap(), std), "{m} vs {std}");
        means.push(mean);
    }
    assert!(
        means[0] <= means[1],
        "best (lowest test_loss) first: {means:?}"
    );
    // The list shows it finished.
    let (_, list) = s.get_json("/sweeps").await;
    assert_eq!(list["items"][0]["id"], id);
    assert_eq!(list["items"][0]["state"], "finished");
    s.stop().await;
}

#[sqlx::test]
async fn a_sweep_with_one_bad_child_queues_nothing_and_names_the_field(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let cases = [
        (
            json!({"base": tiny("torch-cnn"), "grid": {"batch_size": [32, 0]}}),
            "grid[\"batch_size\"]",
        ),
        (
            json!({"base": tiny("torch-cnn"), "grid": {"optimizer.nope": [1]}}),
            "grid[\"optimizer.nope\"]",
        ),
        (
            json!({"base": tiny("torch-cnn"), "grid": {"nothing.here": [1]}}),
            "grid[\"nothing.here\"]",
        ),
        (
            json!({"base": {"preset": "torch-cnn", "epochs": 0}, "grid": {"batch_size": [8]}}),
            "base.epochs",
        ),
        (
            json!({"base": tiny("torch-cnn"), "random": {"n": 3, "space": {
                "batch_size": {"int_uniform": [0, 0]}}}}),
            "random.space[\"batch_size\"]",
        ),
        (
            json!({"base": tiny("torch-cnn"), "grid": {"batch_size": [8]}, "metric": "val_loss"}),
            "metric",
        ),
        (
            json!({"base": tiny("torch-cnn"), "grid": {"seed": (0..100).collect::<Vec<_>>()},
                   "repeats": 3}),
            "grid",
        ),
        (
            json!({"ablate": {"from": uuid::Uuid::now_v7(), "to": uuid::Uuid::now_v7()}}),
            "ablate.from",
        ),
    ];
    for (body, field) in cases {
        let (code, p) = s.post_json("/sweeps", &body).await;
        assert_eq!(code, 422, "{body}: {p}");
        assert_eq!(problem_fields(&p)[0], field, "{body}: {p}");
    }
    assert_eq!(experiment_count(&s).await, 0, "nothing was queued");
    // The same random search draws the same points.
    let random = json!({"base": tiny("torch-cnn"), "random": {"n": 3, "seed": 9, "space": {
        "optimizer.learning_rate": {"log_uniform": [1e-4, 1e-1]},
        "batch_size": {"int_uniform": [16, 64]}}}});
    let points = |v: &Value| -> Vec<Value> {
        v["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["point"].clone())
            .collect()
    };
    let (code, a) = s.post_json("/sweeps", &random).await;
    assert_eq!(code, 201, "{a}");
    let (_, b) = s.post_json("/sweeps", &random).await;
    assert_eq!(points(&a), points(&b));
    assert_eq!(a["kind"], "random");
    assert_eq!(
        a["metric"], "test_loss",
        "no validation split: the test loss"
    );
    s.stop().await;
}

#[sqlx::test]
async fn cancel_and_delete_reach_every_child(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let (code, sweep) = s
        .post_json(
            "/sweeps",
            &json!({"base": tiny("torch-cnn"), "grid": {"batch_size": [16, 32, 64]}}),
        )
        .await;
    assert_eq!(code, 201, "{sweep}");
    let id = sweep["id"].as_str().unwrap();
    let r = s
        .client
        .delete(s.url(&format!("/sweeps/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "children are queued");
    let (code, after) = s
        .post_json(&format!("/sweeps/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["counts"], json!({"cancelled": 3}));
    let r = s
        .client
        .delete(s.url(&format!("/sweeps/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(experiment_count(&s).await, 0);
    let (code, _) = s.get_json(&format!("/sweeps/{id}")).await;
    assert_eq!(code, 404);
    for c in sweep["children"].as_array().unwrap() {
        let (code, _) = s
            .get_json(&format!("/experiments/{}", c["id"].as_str().unwrap()))
            .await;
        assert_eq!(code, 404);
    }
    s.stop().await;
}

#[sqlx::test]
async fn an_ablation_of_the_presets_queues_one_child_per_difference_and_ranks_them(pool: PgPool) {
    let s = TestServer::start(pool, &[worker_config("w1"), worker_config("w2")]).await;
    let (code, a) = s.submit(&tiny("keras-cnn")).await;
    assert_eq!(code, 201, "{a}");
    let (code, b) = s.submit(&tiny("torch-cnn")).await;
    assert_eq!(code, 201, "{b}");
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let (code, sweep) = s
        .post_json(
            "/sweeps",
            &json!({"ablate": {"from": a_id, "to": b_id}, "repeats": 2}),
        )
        .await;
    assert_eq!(code, 201, "{sweep}");
    let want = [
        "batch_size",
        "dataset.validation",
        "dataset.normalize",
        "dataset.resize",
        "model.init",
        "model.layers",
        "shuffle",
    ];
    let children = sweep["children"].as_array().unwrap();
    assert_eq!(children.len(), (want.len() + 2) * 2, "{sweep}");
    assert_eq!(sweep["skipped"], json!([]));
    // Each change child is A with exactly that one field of B's (seeds aside).
    for c in children {
        let (_, e) = s
            .get_json(&format!("/experiments/{}", c["id"].as_str().unwrap()))
            .await;
        let diff = trainyard::spec::diff::differences(&[a["spec"].clone(), e["spec"].clone()]);
        let paths: Vec<&str> = diff
            .iter()
            .filter(|d| !d.derived && d.path != "seed" && d.path != "model.preset")
            .map(|d| d.path.as_str())
            .collect();
        match c["point"]["role"].as_str().unwrap() {
            "from" => assert!(paths.is_empty(), "{paths:?}"),
            "to" => {
                let mut b_spec = b["spec"].clone();
                b_spec["seed"] = e["spec"]["seed"].clone();
                assert_eq!(e["spec"], b_spec);
            }
            _ => {
                let changed = c["label"].as_str().unwrap();
                assert!(want.contains(&changed), "{changed}");
                assert!(
                    paths.iter().all(|p| p.starts_with(changed)) && !paths.is_empty(),
                    "{changed}: {paths:?}"
                );
            }
        }
        assert_eq!(
            e["spec"]["seed"].as_u64().unwrap(),
            5 + c["repeat"].as_u64().unwrap()
        );
    }

    let done = wait_finished(&s, sweep["id"].as_str().unwrap(), 600).await;
    assert_eq!(
        done["counts"],
        json!({"succeeded": 18}),
        "{}",
        done["counts"]
    );
    let ab = &done["ablation"];
    let base_a: Vec<f64> = ab["baseline_from"]["loss"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let base_b: Vec<f64> = ab["baseline_to"]["loss"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let diffs = ab["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), want.len());
    let mut sizes = Vec::new();
    for (i, d) in diffs.iter().enumerate() {
        assert_eq!(d["rank"], i + 1);
        // The effect, recomputed from each child's own metrics, repeat by repeat.
        let ids: Vec<&str> = d["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut deltas = Vec::new();
        for (r, id) in ids.iter().enumerate() {
            let v = last(&s, id, "test_loss").await;
            let delta = v - base_a[r];
            deltas.push(delta);
            let f = d["loss"]["fraction"]["values"][r].as_f64().unwrap();
            assert!(close(f, delta / (base_b[r] - base_a[r])), "{d}");
        }
        let (mean, _) = mean_std(&deltas);
        assert!(
            close(d["loss"]["delta"]["mean"].as_f64().unwrap(), mean),
            "{d}"
        );
        assert_eq!(d["loss"]["metric"], "test_loss");
        assert_eq!(d["accuracy"]["metric"], "test_accuracy");
        sizes.push(mean.abs());
    }
    assert!(
        sizes.windows(2).all(|w| w[0] >= w[1]),
        "the largest effect first: {sizes:?}"
    );
    s.stop().await;
}
