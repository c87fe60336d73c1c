//! Ablation: which of the differences between two experiments moves the curve?
//!
//! The article's two "same" models differ in a handful of fields nobody wrote down
//! ([`crate::spec::diff`] finds them). Training A with one of them set to B's value, for
//! each in turn, and A and B themselves as baselines, all on the same seeds, measures
//! how much of the distance from A's result to B's each difference accounts for.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Child, Point, Role, path};
use crate::spec::diff;

/// Fields that change nothing a run computes: where a model came from, the device (the
/// results match across devices), what is kept, and the seed (repeats vary it alike for
/// every child).
const IGNORED: [&str; 5] = [
    "version",
    "model.preset",
    "device",
    "keep_all_checkpoints",
    "seed",
];

/// Fields whose parts only make sense together: each is one difference, set whole.
const WHOLE: [&str; 2] = ["model.layers", "warm_start"];

/// One difference between A and B, as an ablation sets it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub path: String,
    /// A's value (`null`: A has no such field).
    pub from: Value,
    /// B's value, which the child takes (`null`: the child drops the field).
    pub to: Value,
}

/// Every difference between the resolved specs `a` and `b` that an ablation tries, in
/// the order of the stored JSON's keys.
pub fn changes(a: &Value, b: &Value) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for d in diff::differences(&[a.clone(), b.clone()]) {
        if d.derived {
            continue;
        }
        let whole = WHOLE.iter().find(|w| {
            d.path == **w
                || d.path
                    .strip_prefix(**w)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        });
        let p = whole.map_or(d.path.clone(), |w| w.to_string());
        if IGNORED.contains(&p.as_str()) || out.iter().any(|c| c.path == p) {
            continue;
        }
        let steps = path::parse(&p).unwrap_or_default();
        out.push(Change {
            from: path::get(a, &steps).cloned().unwrap_or(Value::Null),
            to: path::get(b, &steps).cloned().unwrap_or(Value::Null),
            path: p,
        });
    }
    out
}

/// The children of an ablation: A and B as baselines, then A with each change, every
/// one `repeats` times on A's seeds (B's own seed is one of the ignored differences).
pub fn children(a: &Value, b: &Value, changes: &[Change], repeats: u32) -> Vec<Child> {
    let seed = a.get("seed").cloned().unwrap_or(Value::from(0));
    let mut b = b.clone();
    if let Some(obj) = b.as_object_mut() {
        obj.insert("seed".into(), seed);
    }
    let baseline = |role| Point {
        role: Some(role),
        set: Map::new(),
    };
    let mut out = super::children(a, &[baseline(Role::From)], repeats, "ablate")
        .expect("an empty point sets nothing");
    out.extend(
        super::children(&b, &[baseline(Role::To)], repeats, "ablate")
            .expect("an empty point sets nothing"),
    );
    for c in changes {
        let point = Point {
            role: Some(Role::Change),
            set: Map::from_iter([(c.path.clone(), c.to.clone())]),
        };
        // The path came from walking `a`, so setting it cannot fail.
        if let Ok(more) = super::children(a, &[point], repeats, "ablate") {
            out.extend(more);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn preset(name: &str) -> Value {
        serde_json::to_value(crate::spec::from_value(json!({ "preset": name })).unwrap()).unwrap()
    }

    #[test]
    fn the_presets_differ_in_seven_fields_the_layer_list_counted_once() {
        let c = changes(&preset("keras-cnn"), &preset("torch-cnn"));
        let paths: Vec<&str> = c.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "batch_size",
                "dataset.validation",
                "dataset.normalize",
                "dataset.resize",
                "model.init",
                "model.layers",
                "shuffle"
            ]
        );
        let layers = c.iter().find(|c| c.path == "model.layers").unwrap();
        assert_eq!(layers.to, preset("torch-cnn")["model"]["layers"]);
        let resize = c.iter().find(|c| c.path == "dataset.resize").unwrap();
        assert_eq!((&resize.from, &resize.to), (&Value::Null, &json!([8, 8])));
    }

    #[test]
    fn every_child_of_an_ablation_trains_on_a_seeds() {
        let (mut a, b) = (preset("keras-cnn"), preset("torch-cnn"));
        a["seed"] = json!(7);
        let c = changes(&a, &b);
        let kids = children(&a, &b, &c, 2);
        assert_eq!(kids.len(), (2 + c.len()) * 2);
        let seeds: Vec<u64> = kids
            .iter()
            .map(|k| k.spec["seed"].as_u64().unwrap())
            .collect();
        assert!(seeds.chunks(2).all(|s| s == [7, 8]), "{seeds:?}");
        let to = &kids[2];
        assert_eq!(to.point.role, Some(Role::To));
        assert_eq!(to.spec["model"]["layers"], b["model"]["layers"]);
        let resize = kids
            .iter()
            .find(|k| k.point.set.contains_key("dataset.resize"))
            .unwrap();
        assert_eq!(resize.spec["dataset"]["resize"], json!([8, 8]));
        assert_eq!(resize.spec["model"], a["model"]);
        // Setting B's `null` drops A's field.
        let back = changes(&b, &a);
        let kids = children(&b, &a, &back, 1);
        let no_resize = kids
            .iter()
            .find(|k| k.point.set.contains_key("dataset.resize"))
            .unwrap();
        assert!(no_resize.spec["dataset"].get("resize").is_none());
    }
}
