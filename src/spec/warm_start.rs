//! `warm_start`: training that begins from another experiment's weights (fine-tuning,
//! MNIST to Fashion-MNIST, a longer run of a short one) instead of the initialisation,
//! with some layers kept as they are (`freeze`).
//!
//! The spec names the experiment and its checkpoint; the service resolves `best` or
//! `last` to an epoch number when the spec is submitted, so the stored spec says exactly
//! which weights it started from, and checks each tensor's shape against the model's plan
//! ([`check_weights`]) so that a mismatch is a 422 naming the tensor, not a failed run.
//! `model.init` stays what it was: the scheme for whatever the checkpoint does not hold
//! (nothing, as checked here: every tensor of the plan must come from the checkpoint).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::FieldError;
use super::plan::Plan;
use super::validate::err;

/// Which checkpoint of the other experiment: `best`, `last` or an epoch number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointRef {
    #[default]
    Best,
    Last,
    Epoch(u32),
}

impl Serialize for CheckpointRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CheckpointRef::Best => s.serialize_str("best"),
            CheckpointRef::Last => s.serialize_str("last"),
            CheckpointRef::Epoch(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for CheckpointRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Epoch(u32),
        }
        let expected = "\"best\", \"last\" or an epoch number (1, 2, ...)";
        match Raw::deserialize(d) {
            Ok(Raw::Name(n)) if n == "best" => Ok(CheckpointRef::Best),
            Ok(Raw::Name(n)) if n == "last" => Ok(CheckpointRef::Last),
            Ok(Raw::Epoch(n)) if n >= 1 => Ok(CheckpointRef::Epoch(n)),
            _ => Err(serde::de::Error::custom(format!("expected {expected}"))),
        }
    }
}

impl schemars::JsonSchema for CheckpointRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CheckpointRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`best`, `last` or an epoch number",
            "oneOf": [
                {"type": "string", "enum": ["best", "last"]},
                {"type": "integer", "minimum": 1}
            ]
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WarmStart {
    /// An experiment of the same account with a checkpoint.
    pub experiment: Uuid,
    /// `best` (default), `last` or an epoch number; stored as the epoch it resolved to.
    #[serde(default)]
    pub checkpoint: CheckpointRef,
    /// Layers (by name: `conv1`, `fc1`, ...) whose weights stay as the checkpoint has
    /// them; the optimizer never touches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
}

/// Checks `freeze` against the plan: each name a layer with weights, none twice.
pub(crate) fn validate_freeze(ws: &WarmStart, plan: &Plan, e: &mut Vec<FieldError>) {
    let names: Vec<&str> = plan
        .layers
        .iter()
        .filter(|l| l.tensors.iter().any(|t| t.role.trainable()))
        .filter_map(|l| l.name.as_deref())
        .collect();
    for (i, f) in ws.freeze.iter().enumerate() {
        let field = format!("warm_start.freeze[{i}]");
        if !names.contains(&f.as_str()) {
            err(
                e,
                field,
                format!(
                    "no layer with weights is named {f:?}; the model's are {}",
                    names.join(", ")
                ),
            );
        } else if ws.freeze[..i].contains(f) {
            err(e, field, format!("{f:?} is listed twice"));
        }
    }
}

/// The tensors the optimizer leaves alone: each frozen layer's weight and bias.
pub fn frozen_tensors(spec: &super::ExperimentSpec, plan: &Plan) -> Vec<String> {
    let Some(ws) = &spec.warm_start else {
        return Vec::new();
    };
    plan.layers
        .iter()
        .filter(|l| l.name.as_ref().is_some_and(|n| ws.freeze.contains(n)))
        .flat_map(|l| &l.tensors)
        .filter(|t| t.role.trainable())
        .map(|t| t.name.clone())
        .collect()
}

/// Compares a checkpoint's tensors (name and shape) with the plan's state dict: one error
/// per tensor that is missing or has another shape, all at `warm_start`.
pub fn check_weights(plan: &Plan, tensors: &[(String, Vec<usize>)]) -> Vec<FieldError> {
    let mut e = Vec::new();
    for t in plan.state_dict() {
        match tensors.iter().find(|(n, _)| *n == t.name) {
            None => err(
                &mut e,
                "warm_start",
                format!("{}: the checkpoint has no such tensor", t.name),
            ),
            Some((_, shape)) if *shape != t.shape => err(
                &mut e,
                "warm_start",
                format!(
                    "{}: the checkpoint's is {:?}, this model's {:?}",
                    t.name, shape, t.shape
                ),
            ),
            Some(_) => {}
        }
    }
    e
}
