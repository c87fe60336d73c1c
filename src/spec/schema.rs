//! The spec's JSON Schema, derived from the same Rust types serde reads a spec into.
//!
//! Deriving it (schemars reads the serde attributes: tags, renames, defaults, unknown
//! fields refused) means the schema cannot drift from the parser. It describes a spec's
//! shape; the limits and the shape inference through the layers are validation's
//! ([`super::validate`]), which a schema cannot express, so a spec can match the schema
//! and still get a 422 naming the field at fault.
//!
//! What a client submits is a little wider than a resolved spec: a preset name with
//! any overrides, and a `name` and `tags` beside the spec's fields. [`submission`] says
//! that, for the OpenAPI document's request bodies.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::ExperimentSpec;
use super::presets::PRESET_NAMES;

/// The JSON Schema (draft 2020-12) of a resolved spec, its definitions under `$defs`.
pub fn document() -> Value {
    let mut schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<ExperimentSpec>()
        .to_value();
    schema["title"] = json!("trainyard experiment spec");
    schema
}

/// The schemas a submission needs, keyed for an OpenAPI document's
/// `components.schemas` (references point there): `ExperimentSpec`, its parts, and
/// `Submission`, which is either a whole spec or a preset with overrides, each with
/// the `extra` properties beside the spec's (the experiment's name and tags).
pub fn submission(extra: &Map<String, Value>) -> Map<String, Value> {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    let spec = generator.subschema_for::<ExperimentSpec>();
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    // The whole spec again, with the labels beside its fields.
    let mut whole = spec.to_value();
    if let Some(r) = whole.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default().to_string();
        whole = schemas[&name].clone();
    }
    if let Some(props) = whole.get_mut("properties").and_then(Value::as_object_mut) {
        props.extend(extra.clone());
    }
    let mut preset_props = extra.clone();
    preset_props.insert(
        "preset".into(),
        json!({"enum": PRESET_NAMES, "description": "Start from this preset's full spec"}),
    );
    let preset = preset_props["preset"].clone();
    schemas.insert(
        "Submission".into(),
        json!({
            "description": "An experiment spec with every field written out, or a preset with \
                any fields to change merged over it (JSON merge patch); `name` and `tags` are \
                the experiment's, not the spec's",
            "anyOf": [
                whole,
                {
                    "type": "object",
                    "required": ["preset"],
                    "properties": preset_props,
                },
                {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {
                            "type": "object",
                            "required": ["preset"],
                            "properties": {"preset": preset},
                            "not": {"required": ["layers"]},
                        }
                    },
                }
            ]
        }),
    );
    // A sweep's body: its `base` is a submission, its other fields derived as the spec's.
    let mut generator = {
        let mut settings = SchemaSettings::draft2020_12();
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
        settings.into_generator()
    };
    let mut sweep = generator
        .subschema_for::<super::sweep::SweepRequest>()
        .to_value();
    for (name, schema) in generator.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    if let Some(r) = sweep.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default().to_string();
        sweep = schemas.remove(&name).unwrap_or(sweep);
    }
    if let Some(props) = sweep.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "base".into(),
            json!({"$ref": "#/components/schemas/Submission"}),
        );
        props.extend(extra.clone());
        let dist = generator
            .subschema_for::<super::sweep::Distribution>()
            .to_value();
        if let Some(space) = props
            .get_mut("random")
            .and_then(|r| r.get_mut("properties"))
            .and_then(|p| p.get_mut("space"))
        {
            space["additionalProperties"] = dist;
        }
    }
    for (name, schema) in generator.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    schemas.insert("SweepRequest".into(), sweep);
    schemas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_describes_the_layers_and_refuses_unknown_fields() {
        let doc = document();
        let text = doc.to_string();
        for kind in [
            "conv2d",
            "max_pool2d",
            "flatten",
            "dense",
            "dropout",
            "batch_norm",
        ] {
            assert!(text.contains(&format!("\"{kind}\"")), "{kind} missing");
        }
        assert_eq!(doc["additionalProperties"], json!(false));
        assert!(
            doc["required"]
                .as_array()
                .unwrap()
                .contains(&json!("epochs"))
        );
    }

    #[test]
    fn submission_references_stay_inside_the_components() {
        let schemas = submission(&Map::new());
        let text = Value::Object(schemas.clone()).to_string();
        for r in text.split("\"$ref\":\"").skip(1) {
            let target = r.split('"').next().unwrap();
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a reference outside the components: {target}"));
            assert!(
                schemas.contains_key(name),
                "{name} is referenced, not defined"
            );
        }
        assert!(schemas.contains_key("Submission"));
    }
}
