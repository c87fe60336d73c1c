//! Generated specs against validation and the real `POST /experiments`.
//!
//! Each case starts from a preset (its full spec, or the short `{"preset": ...}` form) and
//! applies a few of the mutations a careless or hostile client makes: a field set to a
//! value of the wrong type, a huge or negative number, a NaN-ish string, a string with a
//! NUL, a deeply nested value; fields removed or added; a random layer list. Validation
//! must never panic, and the API must answer each case as validation does: 201 for a
//! valid spec, otherwise a 422 problem+json in which every error names its field by a path
//! into the spec (`model.layers[3].units`). A case is a few milliseconds, so the cases
//! are few enough that the whole file runs in seconds.

use crate::common;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use sqlx::PgPool;
use trainyard::spec::{self, presets};

// ---------------------------------------------------------------- generated values

/// Scalars a client should not send, and a few it should.
fn hostile_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-3i64..70).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(u32::MAX as u64 + 1),
            json!(1e308),
            json!(-1e308),
            json!(5e-324),
            json!(-0.0),
            json!(0.5),
            json!(1.0),
            json!(10.000001),
        ]),
        any::<f64>().prop_filter_map("JSON has no NaN", |f| f.is_finite().then(|| json!(f))),
        prop::sample::select(vec![
            "NaN",
            "nan",
            "inf",
            "-Infinity",
            "1e999",
            "",
            "\u{0}",
            "a\u{0}b",
            "null",
            "3",
            "[3, 3]",
            "relu",
            "softmax",
            "same",
            "valid",
            "auto",
            "cpu",
            "cuda:4294967296",
            "cuda:-1",
            "fashion-mnist",
            "test",
            "none",
            "keras-cnn",
            "torch-cnn",
            "adam",
            "conv2d",
            "dense",
        ])
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    hostile_scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const LAYER_FIELDS: [&str; 12] = [
    "filters",
    "kernel",
    "stride",
    "padding",
    "activation",
    "units",
    "size",
    "rate",
    "momentum",
    "eps",
    "name",
    "dilation",
];

/// A plausible value for a layer field (so that some random layer lists are valid).
fn plausible(field: &str, seed: u8) -> Value {
    let s = seed as usize;
    match field {
        "filters" | "units" => json!([1, 2, 8, 10, 10, 32, 0, 70_000][s % 8]),
        "kernel" | "size" | "stride" => match s % 6 {
            5 => json!([1 + s % 3, 1 + s / 3 % 3]),
            n => json!([1, 1, 2, 3, 65][n]),
        },
        "padding" => json!(["valid", "same", "full"][s % 3]),
        "activation" => json!(["relu", "none", "softmax", "log_softmax", "tanh", "gelu"][s % 6]),
        "rate" | "momentum" => json!(s as f64 / 200.0),
        "eps" => json!([1e-5, 0.0, -1.0][s % 3]),
        "name" => json!(["conv1", "fc1", "fc", "bn1", "a b", ""][s % 6]),
        _ => json!(s),
    }
}

fn layer() -> impl Strategy<Value = Value> {
    let kind = prop::sample::select(vec![
        "conv2d",
        "conv2d",
        "max_pool2d",
        "avg_pool2d",
        "flatten",
        "flatten",
        "dense",
        "dense",
        "dropout",
        "batch_norm",
        "lstm",
    ]);
    let field = (
        prop::sample::select(LAYER_FIELDS.to_vec()),
        any::<u8>(),
        prop::bool::weighted(0.8),
        hostile_scalar(),
    );
    (
        kind,
        prop::collection::vec(field, 0..5),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(kind, fields, drop_type)| {
            let mut layer = serde_json::Map::new();
            if !drop_type {
                layer.insert("type".into(), json!(kind));
            }
            for (name, seed, plausibly, hostile) in fields {
                let v = if plausibly {
                    plausible(name, seed)
                } else {
                    hostile
                };
                layer.insert(name.into(), v);
            }
            Value::Object(layer)
        })
}

fn layers() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::collection::vec(layer(), 0..8).prop_map(Value::Array),
        // A small valid network with one field changed: often valid, sometimes not.
        4 => (any::<u8>(), prop::sample::select(LAYER_FIELDS.to_vec()), 0usize..4).prop_map(
            |(seed, field, at)| {
                let mut l = json!([
                    {"type": "conv2d", "filters": 4, "kernel": 3},
                    {"type": "max_pool2d", "size": 2},
                    {"type": "flatten"},
                    {"type": "dense", "units": 10}
                ]);
                l[at][field] = plausible(field, seed);
                l
            }
        ),
        // Over the layer limit.
        1 => (60usize..70).prop_map(|n| {
            let mut l = vec![json!({"type": "flatten"}); n];
            l.push(json!({"type": "dense", "units": 10}));
            Value::Array(l)
        }),
    ]
}

/// One segment of a path into a JSON value.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(Seg::Key(k.clone()));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                prefix.push(Seg::Index(i));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::Index(i) => &mut v[*i],
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at the `n`th path (not the root).
    Set(usize, Value),
    /// Remove the `n`th path (not the root).
    Remove(usize),
    /// Add a key to the `n`th object.
    Add(usize, String, Value),
    Layers(Value),
    /// Wrap the `n`th value in `depth` arrays or objects.
    Nest(usize, usize, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        5 => (any::<usize>(), hostile_value()).prop_map(|(n, v)| Mutation::Set(n, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        2 => (any::<usize>(), "[a-z_]{1,10}|\\PC{0,6}", hostile_value())
            .prop_map(|(n, k, v)| Mutation::Add(n, k, v)),
        3 => layers().prop_map(Mutation::Layers),
        1 => (any::<usize>(), 1usize..100, any::<bool>()).prop_map(|(n, d, a)| Mutation::Nest(n, d, a)),
    ]
}

fn apply(spec: &mut Value, m: Mutation) {
    let mut all = Vec::new();
    paths(spec, &mut Vec::new(), &mut all);
    let inner = &all[1..];
    match m {
        Mutation::Set(n, v) if !inner.is_empty() => *at(spec, &inner[n % inner.len()]) = v,
        Mutation::Remove(n) if !inner.is_empty() => {
            let path = &inner[n % inner.len()];
            let (last, parent) = path.split_last().unwrap();
            match (at(spec, parent), last) {
                (Value::Object(m), Seg::Key(k)) => {
                    m.remove(k);
                }
                (Value::Array(a), Seg::Index(i)) => {
                    a.remove(*i);
                }
                _ => unreachable!(),
            }
        }
        Mutation::Add(n, key, v) => {
            let objects: Vec<Vec<Seg>> = all
                .iter()
                .filter(|p| at(spec, p).is_object())
                .cloned()
                .collect();
            at(spec, &objects[n % objects.len()])[key.as_str()] = v;
        }
        Mutation::Layers(l) => {
            if !spec["model"].is_object() {
                spec["model"] = json!({});
            }
            spec["model"]["layers"] = l;
        }
        Mutation::Nest(n, depth, arrays) if !inner.is_empty() => {
            let slot = at(spec, &inner[n % inner.len()]);
            let mut v = slot.take();
            for _ in 0..depth {
                v = if arrays { json!([v]) } else { json!({"x": v}) };
            }
            *slot = v;
        }
        _ => {}
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A preset, whole or in the short form, with 1 to 4 mutations.
fn spec_value() -> impl Strategy<Value = Value> {
    let base = prop_oneof![
        prop::sample::select(presets::PRESET_NAMES.to_vec())
            .prop_map(|n| presets::preset(n).unwrap()),
        prop::sample::select(presets::PRESET_NAMES.to_vec()).prop_map(|n| json!({
            "preset": n,
            "epochs": 2,
            "dataset": {"train_limit": 100},
            "optimizer": {"type": "adam"}
        })),
    ];
    (base, prop::collection::vec(mutation(), 1..5)).prop_map(|(mut v, ms)| {
        for m in ms {
            let before = v.clone();
            apply(&mut v, m);
            // Deeper than the JSON parser takes is another test's case.
            if depth(&v) > 110 {
                v = before;
            }
        }
        v
    })
}

// ---------------------------------------------------------------- the checks

/// Every field name the spec format has: a path may end in one of these even where the
/// spec leaves it out (a missing required field, or a default at fault).
const SPEC_FIELDS: [&str; 36] = [
    "version",
    "dataset",
    "model",
    "loss",
    "optimizer",
    "epochs",
    "batch_size",
    "shuffle",
    "seed",
    "device",
    "keep_all_checkpoints",
    "preset",
    "name",
    "train_limit",
    "test_limit",
    "resize",
    "normalize",
    "mean",
    "std",
    "validation",
    "split",
    "init",
    "layers",
    "type",
    "filters",
    "kernel",
    "stride",
    "padding",
    "activation",
    "units",
    "size",
    "rate",
    "momentum",
    "eps",
    "learning_rate",
    "betas",
];

/// Whether `field` is a path into the submitted spec (or the preset it resolves to): every
/// segment but the last exists, and the last either exists or is a field of the format.
fn names_a_field(field: &str, submitted: &Value) -> bool {
    let Some(segments) = parse_path(field) else {
        return false;
    };
    let (last, parents) = segments.split_last().unwrap();
    let resolved = presets::resolve(submitted.clone()).ok();
    [Some(submitted), resolved.as_ref()]
        .into_iter()
        .flatten()
        .any(|root| {
            let mut v = root;
            for s in parents {
                let next = match (s, v) {
                    (Seg::Key(k), Value::Object(m)) => m.get(k),
                    (Seg::Index(i), Value::Array(a)) => a.get(*i),
                    _ => None,
                };
                match next {
                    Some(n) => v = n,
                    None => return false,
                }
            }
            match (last, v) {
                (Seg::Key(k), Value::Object(m)) => {
                    m.contains_key(k) || SPEC_FIELDS.contains(&k.as_str())
                }
                (Seg::Index(i), Value::Array(a)) => *i < a.len(),
                _ => false,
            }
        })
}

/// `model.layers[3].units`, `dataset["a.b"]` into segments; `None` if it is no such path.
fn parse_path(field: &str) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    let mut rest = field;
    while !rest.is_empty() {
        if rest.starts_with("[\"") {
            // A quoted key: a JSON string.
            let mut de = serde_json::Deserializer::from_str(&rest[1..]).into_iter::<String>();
            let key = de.next()?.ok()?;
            let used = 1 + de.byte_offset();
            out.push(Seg::Key(key));
            rest = rest[used..].strip_prefix(']')?;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            out.push(Seg::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            if !out.is_empty() && r.len() == rest.len() {
                return None;
            }
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return None;
            }
            out.push(Seg::Key(key.to_string()));
            rest = &r[end..];
        }
    }
    (!out.is_empty()).then_some(out)
}

/// POSTs a spec to the app; returns the status, content type and JSON body.
async fn post(router: axum::Router, body: Vec<u8>) -> (u16, String, Value) {
    let req = Request::post("/experiments")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    common::service::oneshot_json(&router, req).await
}

fn check_answer(
    submitted: &Value,
    expected: Result<(), spec::SpecErrors>,
    (status, ct, answer): (u16, String, Value),
) -> Result<(), TestCaseError> {
    match expected {
        Ok(()) => prop_assert_eq!(status, 201, "a valid spec was refused: {}", answer),
        Err(e) => {
            prop_assert_eq!(status, 422, "{}", answer);
            prop_assert_eq!(ct, "application/problem+json");
            prop_assert_eq!(&answer["status"], 422);
            let errors = answer["errors"].as_array().cloned().unwrap_or_default();
            prop_assert!(!errors.is_empty(), "no errors listed: {}", answer);
            prop_assert_eq!(&Value::Array(errors.clone()), &json!(e.0));
            for err in &errors {
                let field = err["field"].as_str().unwrap();
                prop_assert!(
                    names_a_field(field, submitted),
                    "{:?} names no field of {}: {}",
                    field,
                    submitted,
                    err
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- the properties

proptest! {
    #![proptest_config(Config { cases: 2000, ..Config::default() })]

    /// Parsing and validating any generated spec returns, never panics, and a valid
    /// spec's summary is within the limits.
    #[test]
    fn validation_never_panics_and_valid_specs_are_within_limits(v in spec_value()) {
        let text = serde_json::to_string(&v).unwrap();
        if let Ok((_, summary)) = spec::parse_and_validate(&text) {
            use spec::validate::limits::*;
            prop_assert!(summary.parameters <= MAX_PARAMETERS);
            prop_assert!(summary.flops_per_sample <= MAX_FLOPS_PER_SAMPLE);
            prop_assert!(summary.layers.len() <= MAX_LAYERS);
        }
    }
}

/// Every generated spec, POSTed: 201 when valid, otherwise a 422 problem+json naming the
/// fields at fault, the same errors validation gives.
#[sqlx::test]
async fn every_invalid_generated_spec_gets_a_422_naming_its_fields(pool: PgPool) {
    let router = common::service::oneshot_app(pool).await;
    let handle = tokio::runtime::Handle::current();
    // proptest drives the cases synchronously: each one waits for the async app on this
    // test's runtime.
    let outcome = tokio::task::spawn_blocking(move || {
        let mut runner = TestRunner::new(Config {
            cases: 300,
            ..Config::default()
        });
        let valid = std::sync::atomic::AtomicUsize::new(0);
        let result = runner.run(&spec_value(), |v| {
            let body = serde_json::to_vec(&v).unwrap();
            let expected =
                spec::parse_and_validate(std::str::from_utf8(&body).unwrap()).map(|_| ());
            valid.fetch_add(
                usize::from(expected.is_ok()),
                std::sync::atomic::Ordering::Relaxed,
            );
            let answer = handle.block_on(post(router.clone(), body));
            check_answer(&v, expected, answer)
        });
        (result, valid.into_inner())
    })
    .await
    .unwrap();
    let (result, valid) = outcome;
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator reaches both sides of validation.
    assert!(valid > 0, "no generated spec was valid");
}

/// A body nested past the JSON parser's depth limit is refused as a whole document (the
/// empty path), quickly and without exhausting the stack.
#[sqlx::test]
async fn a_spec_nested_a_hundred_thousand_deep_gets_a_422_for_the_document(pool: PgPool) {
    let router = common::service::oneshot_app(pool).await;
    let depth = 100_000;
    let body = format!(
        "{{\"preset\": \"torch-cnn\", \"epochs\": {}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let started = std::time::Instant::now();
    let (status, ct, answer) = post(router, body.into_bytes()).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(answer["errors"][0]["field"], "");
    assert!(
        answer["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{answer}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

/// A spec's only free text is `model.preset` (where a model with its own layers came
/// from). It is stored as jsonb, which refuses a NUL: that was a 500.
#[sqlx::test]
async fn a_nul_in_the_model_preset_gets_a_422_not_a_500(pool: PgPool) {
    let router = common::service::oneshot_app(pool).await;
    for preset in ["a\u{0}b", "", &"x".repeat(65)] {
        let mut v = presets::preset("torch-cnn").unwrap();
        v["model"]["preset"] = json!(preset);
        let (status, _, answer) = post(router.clone(), serde_json::to_vec(&v).unwrap()).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["errors"][0]["field"], "model.preset", "{answer}");
    }
    let mut v = presets::preset("torch-cnn").unwrap();
    v["model"]["preset"] = json!("my torch-cnn, wider");
    let (status, _, answer) = post(router, serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(status, 201, "{answer}");
}

#[test]
fn paths_are_parsed_as_the_errors_write_them() {
    let p = parse_path("model.layers[3].units").unwrap();
    assert!(
        matches!(&p[..], [Seg::Key(m), Seg::Key(l), Seg::Index(3), Seg::Key(u)]
        if m == "model" && l == "layers" && u == "units")
    );
    let p = parse_path(r#"dataset["a.b"]"#).unwrap();
    assert!(matches!(&p[..], [Seg::Key(d), Seg::Key(k)] if d == "dataset" && k == "a.b"));
    assert!(parse_path("").is_none());
    assert!(parse_path("model..layers").is_none());
    assert!(parse_path("model.layers[x]").is_none());
    let spec = json!({"model": {"layers": [{"type": "dense"}]}});
    assert!(names_a_field("model.layers[0].units", &spec));
    assert!(!names_a_field("model.layers[1].units", &spec));
    assert!(!names_a_field("model.?", &spec));
}
