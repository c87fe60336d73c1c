use serde_json::json;

use super::*;

fn request(v: Value) -> Result<SweepRequest, SpecErrors> {
    SweepRequest::from_value(v)
}

fn fields(e: &SpecErrors) -> Vec<&str> {
    e.0.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn a_grid_is_every_combination_and_repeats_count_seeds_up() {
    let r = request(json!({
        "base": {"preset": "torch-cnn"},
        "grid": {"optimizer.learning_rate": [0.1, 0.01], "batch_size": [32, 64, 128]},
        "repeats": 2
    }))
    .unwrap();
    assert_eq!(r.kind(), Kind::Grid);
    let points = r.points().unwrap();
    assert_eq!(points.len(), 6);
    let base = json!({"seed": 5, "batch_size": 1, "optimizer": {"learning_rate": 1.0}});
    let kids = children(&base, &points, r.repeats, "grid").unwrap();
    assert_eq!(kids.len(), 12);
    let combos: Vec<(f64, u64, u64)> = kids
        .iter()
        .map(|k| {
            (
                k.spec["optimizer"]["learning_rate"].as_f64().unwrap(),
                k.spec["batch_size"].as_u64().unwrap(),
                k.spec["seed"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for lr in [0.1, 0.01] {
        for b in [32, 64, 128] {
            for seed in [5, 6] {
                want.push((lr, b, seed));
            }
        }
    }
    // serde_json's map orders keys: batch_size is the outer axis.
    let mut got = combos.clone();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap());
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(got, want);
    assert_eq!(
        kids[0].point.label(),
        "batch_size=32, optimizer.learning_rate=0.1"
    );
}

#[test]
fn a_random_search_draws_the_same_points_from_the_same_seed() {
    let body = json!({
        "base": {"preset": "torch-cnn"},
        "random": {"n": 5, "seed": 3, "space": {
            "optimizer.learning_rate": {"log_uniform": [1e-4, 1e-1]},
            "batch_size": {"choice": [32, 64]}
        }}
    });
    let a = request(body.clone()).unwrap().points().unwrap();
    let b = request(body).unwrap().points().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 5);
    let rates: Vec<f64> = a
        .iter()
        .map(|p| p.set["optimizer.learning_rate"].as_f64().unwrap())
        .collect();
    assert!(rates.iter().all(|r| (1e-4..=1e-1).contains(r)));
    assert!(rates.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn a_sweep_over_the_limit_is_refused_before_anything_is_built() {
    let values: Vec<u32> = (1..=17).collect();
    let e = request(json!({
        "base": {"preset": "torch-cnn"},
        "grid": {"batch_size": values, "epochs": values},
    }))
    .unwrap()
    .points()
    .unwrap_err();
    assert_eq!(fields(&e), ["grid"]);
    assert!(e.0[0].reason.contains("289 children"), "{e}");
    let e = request(json!({
        "base": {}, "random": {"n": 100, "space": {"epochs": {"int_uniform": [1, 3]}}},
        "repeats": 3
    }))
    .unwrap()
    .points()
    .unwrap_err();
    assert_eq!(fields(&e), ["random.n"]);
}

#[test]
fn bad_requests_name_the_field_at_fault() {
    let e = request(json!({"grid": {"a": [1]}})).unwrap_err();
    assert_eq!(fields(&e), ["base"]);
    let e = request(json!({"base": {}})).unwrap_err();
    assert_eq!(fields(&e), [""]);
    let e = request(json!({"base": {}, "grid": {"a": [1]}, "repeats": 0})).unwrap_err();
    assert_eq!(fields(&e), ["repeats"]);
    let e = request(json!({"base": {}, "grid": {"a": [1]}, "bogus": 1})).unwrap_err();
    assert_eq!(fields(&e), ["bogus"]);
    let e = request(json!({"base": {}, "grid": {"a..b": [1], "c": [], "d": 3}}))
        .unwrap()
        .points()
        .unwrap_err();
    assert_eq!(fields(&e), ["grid[\"a..b\"]", "grid[\"c\"]", "grid[\"d\"]"]);
    let e = request(json!({"base": {}, "random": {"n": 1, "space": {
        "x": {"log_uniform": [0, 1]}, "y": {"normal": [0, 1]}
    }}}))
    .unwrap()
    .points()
    .unwrap_err();
    assert_eq!(fields(&e)[0], "random.space[\"x\"]");
    assert!(fields(&e)[1].starts_with("random.space[\"y\"]"), "{e}");
    let e = request(json!({"ablate": {"from": Uuid::nil(), "to": Uuid::nil()}, "base": {}}))
        .unwrap_err();
    assert_eq!(fields(&e), ["base"]);
}

#[test]
fn a_path_the_base_lacks_is_an_error_at_that_path() {
    let points = vec![Point {
        role: None,
        set: Map::from_iter([("model.layers[9].units".to_string(), json!(3))]),
    }];
    let base = json!({"model": {"layers": [{}]}});
    let e = children(&base, &points, 1, "grid").unwrap_err();
    assert_eq!(fields(&e), ["grid[\"model.layers[9].units\"]"]);
}
