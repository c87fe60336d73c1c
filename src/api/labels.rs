//! Names and tags: read from a submission's body or a `PATCH`, checked once here.
//!
//! They travel beside the spec in the same JSON object (`{"preset": "torch-cnn",
//! "name": "baseline", "tags": ["article"]}`) because that is what a person writes; they
//! are taken out before the spec is parsed, so the spec stays exactly what was trained
//! and two runs of one spec under different names have no spec difference.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::spec::{FieldError, SpecErrors};
use crate::store::{Labels, LabelsPatch};

pub const MAX_NAME_CHARS: usize = 200;
const MAX_TAGS: usize = 16;
pub const MAX_TAG_CHARS: usize = 64;
/// [`text`]'s rule as a regular expression, for the OpenAPI document.
const PATTERN: &str = "^[^\\u0000]*[^ \\u0000][^\\u0000]*$";

/// Takes `name` and `tags` out of a submission's top-level object.
pub fn take(body: &mut Value) -> Result<Labels, ApiError> {
    let Some(obj) = body.as_object_mut() else {
        return Ok(Labels::default());
    };
    let mut errors = Vec::new();
    let name = match obj.remove("name") {
        None | Some(Value::Null) => None,
        Some(v) => push_err(&mut errors, name_of(&v)),
    };
    let tags = match obj.remove("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => push_err(&mut errors, tags_of(&v)).unwrap_or_default(),
    };
    if errors.is_empty() {
        Ok(Labels { name, tags })
    } else {
        Err(ApiError::Invalid(SpecErrors(errors)))
    }
}

/// A `PATCH` body: only `name` and `tags`; `null` removes a name, or empties the tags.
pub fn patch(body: Map<String, Value>) -> Result<LabelsPatch, ApiError> {
    let mut errors = Vec::new();
    let mut patch = LabelsPatch::default();
    for (key, v) in body {
        match key.as_str() {
            "name" if v.is_null() => patch.name = Some(None),
            "name" => patch.name = Some(push_err(&mut errors, name_of(&v))),
            "tags" if v.is_null() => patch.tags = Some(Vec::new()),
            "tags" => patch.tags = push_err(&mut errors, tags_of(&v)),
            _ => errors.push(FieldError {
                field: key.clone(),
                reason: "unknown field: only name and tags can be changed".into(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(patch)
    } else {
        Err(ApiError::Invalid(SpecErrors(errors)))
    }
}

fn push_err<T>(errors: &mut Vec<FieldError>, r: Result<T, FieldError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Text a person typed: 1 to `max` characters, not only spaces, no NUL (which
/// PostgreSQL's text cannot hold). Nothing more: the OpenAPI document states the same
/// rule as a pattern ([`PATTERN`]), and a client's checker must agree with the server's
/// on every string.
fn text(field: &str, v: &Value, max: usize) -> Result<String, FieldError> {
    let s = v.as_str().ok_or_else(|| bad(field, "must be a string"))?;
    let n = s.chars().count();
    if n == 0 || n > max || s.chars().all(|c| c == ' ') {
        return Err(bad(
            field,
            format!("must be 1 to {max} characters, not only spaces"),
        ));
    }
    if s.contains('\0') {
        return Err(bad(field, "must not contain NUL characters"));
    }
    Ok(s.to_string())
}

/// The JSON Schema of `name` and `tags`, for the OpenAPI document.
pub fn json_schema() -> Map<String, Value> {
    let Value::Object(m) = serde_json::json!({
        "name": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_NAME_CHARS,
                 "pattern": PATTERN,
                 "description": "What to call the experiment (not part of the spec); null: none"},
        "tags": {"type": ["array", "null"], "maxItems": MAX_TAGS,
                 "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_CHARS, "pattern": PATTERN},
                 "description": "Labels to find it by (not part of the spec); null: none"},
    }) else {
        unreachable!()
    };
    m
}

fn name_of(v: &Value) -> Result<String, FieldError> {
    text("name", v, MAX_NAME_CHARS)
}

/// Tags in the order given, each once.
fn tags_of(v: &Value) -> Result<Vec<String>, FieldError> {
    let items = v
        .as_array()
        .ok_or_else(|| bad("tags", "must be an array of strings"))?;
    if items.len() > MAX_TAGS {
        return Err(bad("tags", format!("at most {MAX_TAGS} tags")));
    }
    let mut tags: Vec<String> = Vec::new();
    for (i, t) in items.iter().enumerate() {
        let t = text(&format!("tags[{i}]"), t, MAX_TAG_CHARS)?;
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    Ok(tags)
}

/// A `?tag=` or `?q=` filter: the same rules as the labels it searches.
pub fn filter_text(field: &str, v: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    v.map(|s| text(field, &Value::from(s), max))
        .transpose()
        .map_err(|e| ApiError::Invalid(SpecErrors(vec![e])))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn name_and_tags_leave_the_spec() {
        let mut body = json!({"preset": "torch-cnn", "name": "a <b>", "tags": ["x", "y", "x"]});
        let labels = take(&mut body).unwrap();
        assert_eq!(body, json!({"preset": "torch-cnn"}));
        assert_eq!(labels.name.as_deref(), Some("a <b>"));
        assert_eq!(labels.tags, ["x", "y"]);
    }

    #[test]
    fn bad_labels_name_each_field() {
        let long = "n".repeat(201);
        let mut body = json!({"name": long, "tags": ["ok", 3, ""]});
        let ApiError::Invalid(SpecErrors(errors)) = take(&mut body).unwrap_err() else {
            panic!("not a 422")
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "tags[1]"]);
        let seventeen: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        assert!(take(&mut json!({"tags": seventeen})).is_err());
        assert!(take(&mut json!({"name": "   "})).is_err());
        assert!(take(&mut json!({"name": "a\u{0}b"})).is_err());
    }

    #[test]
    fn a_patch_takes_only_labels() {
        let p = patch(
            json!({"name": null, "tags": ["a"]})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        assert_eq!(p.name, Some(None));
        assert_eq!(p.tags, Some(vec!["a".to_string()]));
        let ApiError::Invalid(SpecErrors(errors)) =
            patch(json!({"epochs": 3}).as_object().unwrap().clone()).unwrap_err()
        else {
            panic!("not a 422")
        };
        assert_eq!(errors[0].field, "epochs");
    }
}
