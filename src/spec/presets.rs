//! The seed models of the article trainyard grew from, as complete specs.
//!
//! Each preset writes out every default its framework fills in (Keras: glorot_uniform with
//! zero biases, batch 32, `validation_split` taking the last 30% before shuffling, softmax
//! output with categorical cross-entropy; PyTorch: kaiming_uniform(a = sqrt(5)) init,
//! DataLoader batch 512 without shuffling, log_softmax output fed to CrossEntropyLoss), so
//! that a preset is exactly the model the article trained, and a user who overrides one
//! field changes only that field.

use serde_json::{Value, json};

use super::SpecErrors;

pub const PRESET_NAMES: [&str; 2] = ["keras-cnn", "torch-cnn"];

/// Every preset, resolved and parsed as a spec would be (every default written out), by
/// name: what `trainyard presets` prints and `GET /specs/presets` answers.
pub fn resolved_all() -> Result<serde_json::Map<String, Value>, SpecErrors> {
    PRESET_NAMES
        .iter()
        .map(|n| {
            let spec = super::from_value(json!({ "preset": n }))?;
            let value = serde_json::to_value(spec).expect("a spec serializes");
            Ok((n.to_string(), value))
        })
        .collect()
}

/// The full spec of a preset, or `None` for an unknown name.
pub fn preset(name: &str) -> Option<Value> {
    match name {
        "keras-cnn" => Some(json!({
            "version": 1,
            "dataset": {
                "name": "mnist",
                "validation": {"split": 0.3}
            },
            "model": {
                "preset": "keras-cnn",
                "init": "keras",
                "layers": [
                    {"type": "conv2d", "name": "conv1", "filters": 32, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
                    {"type": "conv2d", "name": "conv2", "filters": 64, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
                    {"type": "max_pool2d", "size": 2, "stride": 2},
                    {"type": "flatten"},
                    {"type": "dense", "name": "fc1", "units": 1024, "activation": "relu"},
                    {"type": "dense", "name": "fc2", "units": 10, "activation": "softmax"}
                ]
            },
            "loss": "cross_entropy",
            "optimizer": {"type": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": false, "weight_decay": 0.0},
            "epochs": 5,
            "batch_size": 32,
            "shuffle": true,
            "seed": 0,
            "device": "auto",
            "keep_all_checkpoints": false
        })),
        "torch-cnn" => Some(json!({
            "version": 1,
            "dataset": {
                "name": "mnist",
                "resize": [8, 8],
                "normalize": {"mean": 0.1307, "std": 0.3081},
                "validation": "test"
            },
            "model": {
                "preset": "torch-cnn",
                "init": "torch",
                "layers": [
                    {"type": "conv2d", "name": "conv1", "filters": 32, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
                    {"type": "conv2d", "name": "conv2", "filters": 64, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
                    {"type": "max_pool2d", "size": 1, "stride": 1},
                    {"type": "flatten"},
                    {"type": "dense", "name": "fc", "units": 10, "activation": "log_softmax"}
                ]
            },
            "loss": "cross_entropy",
            "optimizer": {"type": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": false, "weight_decay": 0.0},
            "epochs": 5,
            "batch_size": 512,
            "shuffle": false,
            "seed": 0,
            "device": "auto",
            "keep_all_checkpoints": false
        })),
        _ => None,
    }
}

/// Expands a spec that names a preset (`"model": {"preset": NAME}` or a top-level
/// `"preset": NAME`): the preset's full spec with the given JSON merged over it (RFC 7386
/// merge patch: objects merge, everything else replaces). A spec without a preset is
/// returned unchanged.
pub fn resolve(mut value: Value) -> Result<Value, SpecErrors> {
    let Some(obj) = value.as_object_mut() else {
        return Err(SpecErrors::one("", "a spec must be a JSON object"));
    };
    let top = obj.remove("preset");
    let from_model = obj
        .get("model")
        .and_then(|m| m.get("preset"))
        .cloned()
        .filter(|_| {
            // A model that lists its own layers only records where it came from.
            obj.get("model").and_then(|m| m.get("layers")).is_none()
        });
    let (field, name) = match (top, from_model) {
        (Some(n), _) => ("preset", n),
        (None, Some(n)) => ("model.preset", n),
        (None, None) => return Ok(value),
    };
    let Some(name) = name.as_str() else {
        return Err(SpecErrors::one(field, "must be a string"));
    };
    let Some(mut base) = preset(name) else {
        return Err(SpecErrors::one(
            field,
            format!(
                "unknown preset {name:?}; known presets: {}",
                PRESET_NAMES.join(", ")
            ),
        ));
    };
    // Naming other data (`id` or `path`) replaces the preset's `name`: a spec names one.
    let other_data = value
        .get("dataset")
        .and_then(|d| d.as_object())
        .is_some_and(|d| {
            !d.contains_key("name") && (d.contains_key("id") || d.contains_key("path"))
        });
    if other_data && let Some(d) = base.get_mut("dataset").and_then(|d| d.as_object_mut()) {
        d.remove("name");
    }
    merge(&mut base, value);
    Ok(base)
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        // A tagged object (an optimizer) of another type replaces the preset's whole.
        (Value::Object(b), Value::Object(p))
            if p.get("type").is_none_or(|t| Some(t) == b.get("type")) =>
        {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_a_preset_merges_overrides_over_it() {
        let v = resolve(
            json!({"model": {"preset": "torch-cnn"}, "epochs": 2, "dataset": {"train_limit": 100}}),
        )
        .unwrap();
        assert_eq!(v["epochs"], 2);
        assert_eq!(v["dataset"]["train_limit"], 100);
        assert_eq!(v["dataset"]["resize"], json!([8, 8]));
        assert_eq!(v["batch_size"], 512);
    }

    #[test]
    fn an_uploaded_dataset_replaces_the_presets_built_in_one() {
        let id = "0190f5a0-0000-7000-8000-000000000001";
        let v = resolve(json!({"preset": "keras-cnn", "dataset": {"id": id}})).unwrap();
        assert_eq!(v["dataset"]["id"], id);
        assert!(v["dataset"].get("name").is_none(), "{v}");
        assert_eq!(v["dataset"]["validation"], json!({"split": 0.3}));
        let spec = super::super::from_value(v).unwrap();
        assert_eq!(
            spec.dataset.source,
            super::super::DataSource::Uploaded(id.parse().unwrap())
        );
    }

    #[test]
    fn an_unknown_preset_names_the_field() {
        let e = resolve(json!({"preset": "resnet"})).unwrap_err();
        assert_eq!(e.0[0].field, "preset");
        assert!(e.0[0].reason.contains("keras-cnn"));
    }
}
