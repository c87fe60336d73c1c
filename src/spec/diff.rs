//! What differs between resolved specs: the answer to "why do these curves differ?".
//!
//! The article that trainyard grew from trained "the same" classifier in Keras and in
//! PyTorch and got different curves; the reasons were defaults nobody wrote down. A
//! resolved spec writes every one of them out, so comparing resolved specs field by
//! field finds them all: the init, the batch size, the input's resize and
//! normalisation, the layers. Two more rows say what a field-by-field walk cannot see
//! directly: the last layer's activation (layer lists of different lengths put it at
//! different indices) and the loss formulation that follows from it.

use serde::Serialize;
use serde_json::Value;

use super::{Activation, ExperimentSpec, LayerSpec};

/// A field whose value is not the same in every spec.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    /// A JSON path into the resolved spec (`model.layers[4].units`), or for a derived
    /// row a path that names what it derives (`model.layers[-1].activation`,
    /// `loss.formulation`, `parameters`).
    pub path: String,
    /// Each spec's value, in the order given; `null` where a spec has no such field.
    #[schema(value_type = Vec<Object>)]
    pub values: Vec<Value>,
    /// True for a row computed from the spec rather than read from one field.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub derived: bool,
}

/// Every field that differs between `specs` (resolved specs, as stored), in document
/// order, then the derived rows that differ.
pub fn differences(specs: &[Value]) -> Vec<Difference> {
    let mut out = Vec::new();
    let refs: Vec<Option<&Value>> = specs.iter().map(Some).collect();
    walk("", &refs, &mut out);
    let parsed: Vec<Option<ExperimentSpec>> = specs
        .iter()
        .map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    let derived: [(&str, Derive); 3] = [
        ("model.layers[-1].activation", |s| {
            serde_json::to_value(last_activation(s)).unwrap_or(Value::Null)
        }),
        ("loss.formulation", |s| {
            Value::from(formulation(last_activation(s)))
        }),
        ("parameters", |s| {
            super::validate(s).map_or(Value::Null, |sum| Value::from(sum.parameters))
        }),
    ];
    for (path, f) in derived {
        let values: Vec<Value> = parsed
            .iter()
            .map(|s| s.as_ref().map_or(Value::Null, f))
            .collect();
        if !all_equal(&values) {
            out.push(Difference {
                path: path.to_string(),
                values,
                derived: true,
            });
        }
    }
    out
}

/// A fact computed from a parsed spec.
type Derive = fn(&ExperimentSpec) -> Value;

fn all_equal(values: &[Value]) -> bool {
    values.windows(2).all(|w| w[0] == w[1])
}

/// Descends while every spec has an object (or every one an array) here; otherwise
/// reports the whole value at this path if the specs disagree (so a `normalize` only
/// one spec has shows as that object against `null`).
fn walk(path: &str, values: &[Option<&Value>], out: &mut Vec<Difference>) {
    let objects: Option<Vec<_>> = values
        .iter()
        .map(|v| match v {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        })
        .collect();
    // Objects of different `type` (a conv2d against a dense layer, SGD against Adam)
    // differ as wholes: their fields mean different things.
    let same_kind = |objects: &Vec<&serde_json::Map<String, Value>>| {
        objects
            .windows(2)
            .all(|w| w[0].get("type") == w[1].get("type"))
    };
    if let Some(objects) = objects.filter(same_kind) {
        let mut keys: Vec<&String> = Vec::new();
        for m in &objects {
            for k in m.keys() {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        for k in keys {
            let child: Vec<Option<&Value>> = objects.iter().map(|m| m.get(k)).collect();
            walk(&join_key(path, k), &child, out);
        }
        return;
    }
    let arrays: Option<Vec<_>> = values
        .iter()
        .map(|v| match v {
            Some(Value::Array(a)) => Some(a),
            _ => None,
        })
        .collect();
    if let Some(arrays) = arrays {
        let len = arrays.iter().map(|a| a.len()).max().unwrap_or(0);
        // Layer lists are compared position by position (a layer only one spec has
        // shows whole); short lists of numbers such as `resize` or `betas` read
        // better whole.
        let by_index = path.ends_with("layers") || arrays.iter().all(|a| a.len() == len);
        let numbers = arrays.iter().flat_map(|a| a.iter()).all(|v| !v.is_object());
        if by_index && !(numbers && len <= 4) {
            for i in 0..len {
                let child: Vec<Option<&Value>> = arrays.iter().map(|a| a.get(i)).collect();
                walk(&format!("{path}[{i}]"), &child, out);
            }
            return;
        }
    }
    let owned: Vec<Value> = values
        .iter()
        .map(|v| v.cloned().unwrap_or(Value::Null))
        .collect();
    if !all_equal(&owned) {
        out.push(Difference {
            path: path.to_string(),
            values: owned,
            derived: false,
        });
    }
}

fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::from(key)),
    }
}

fn last_activation(spec: &ExperimentSpec) -> Activation {
    match spec.model.layers.iter().rev().find_map(|l| match l {
        LayerSpec::Dense(d) => Some(d.activation),
        LayerSpec::Conv2d(c) => Some(c.activation),
        _ => None,
    }) {
        Some(a) => a,
        None => Activation::None,
    }
}

/// How cross-entropy is computed given the last activation (see [`super::Loss`]).
fn formulation(last: Activation) -> &'static str {
    match last {
        Activation::Softmax => {
            "cross-entropy of the softmax probabilities, computed from the logits (Keras)"
        }
        Activation::LogSoftmax => {
            "cross-entropy applied to log-probabilities: log_softmax then CrossEntropyLoss, \
             a second log_softmax (PyTorch article)"
        }
        Activation::None => "cross-entropy on the logits",
        _ => "cross-entropy on the last activation's output taken as logits",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn preset(name: &str) -> Value {
        let spec = crate::spec::from_value(json!({ "preset": name })).unwrap();
        serde_json::to_value(spec).unwrap()
    }

    fn paths(d: &[Difference]) -> Vec<&str> {
        d.iter().map(|d| d.path.as_str()).collect()
    }

    #[test]
    fn the_article_presets_differ_where_the_article_could_not_see() {
        let d = differences(&[preset("keras-cnn"), preset("torch-cnn")]);
        let p = paths(&d);
        for want in [
            "model.init",
            "batch_size",
            "dataset.resize",
            "dataset.normalize",
            "dataset.validation",
            "shuffle",
            "model.layers[2].size",
            "model.layers[4].units",
            "model.layers[5]",
            "model.layers[-1].activation",
            "loss.formulation",
            "parameters",
        ] {
            assert!(p.contains(&want), "{want} missing from {p:?}");
        }
        let init = d.iter().find(|d| d.path == "model.init").unwrap();
        assert_eq!(init.values, [json!("keras"), json!("torch")]);
        let resize = d.iter().find(|d| d.path == "dataset.resize").unwrap();
        assert_eq!(resize.values, [Value::Null, json!([8, 8])]);
        let last = d
            .iter()
            .find(|d| d.path == "model.layers[-1].activation")
            .unwrap();
        assert_eq!(last.values, [json!("softmax"), json!("log_softmax")]);
        assert!(last.derived);
        assert!(!p.contains(&"loss"), "both say cross_entropy: {p:?}");
        assert!(!p.contains(&"epochs"));
    }

    #[test]
    fn equal_specs_have_no_differences() {
        assert!(differences(&[preset("torch-cnn"), preset("torch-cnn")]).is_empty());
    }

    #[test]
    fn a_third_spec_changes_only_its_own_fields() {
        let mut third = preset("torch-cnn");
        third["optimizer"]["learning_rate"] = json!(0.1);
        let d = differences(&[preset("torch-cnn"), preset("torch-cnn"), third]);
        assert_eq!(paths(&d), ["optimizer.learning_rate"]);
        assert_eq!(d[0].values, [json!(0.01), json!(0.01), json!(0.1)]);
    }

    #[test]
    fn keys_that_are_not_names_are_quoted() {
        let d = differences(&[json!({"a.b": 1}), json!({"a.b": 2})]);
        assert_eq!(paths(&d), ["[\"a.b\"]"]);
    }
}
