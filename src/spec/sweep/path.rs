//! Paths into a spec, written as the differences between specs name them
//! (`optimizer.learning_rate`, `model.layers[4].units`, `dataset["a.b"]`), so a path a
//! comparison prints can be pasted into a sweep.

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Parses `a.b[3].c` and `["a.b"]` forms.
pub fn parse(path: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut rest = path;
    if rest.is_empty() {
        return Err("a path must name a field".into());
    }
    let mut first = true;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = if r.starts_with('"') {
                // A quoted key: the JSON string, then `]`.
                let mut de = serde_json::Deserializer::from_str(r).into_iter::<String>();
                let key = match de.next() {
                    Some(Ok(k)) => k,
                    _ => return Err(format!("{path:?}: an unterminated quoted key")),
                };
                steps.push(Step::Key(key));
                de.byte_offset()
            } else {
                let digits = r
                    .find(']')
                    .ok_or_else(|| format!("{path:?}: `[` without `]`"))?;
                let i = r[..digits]
                    .parse()
                    .map_err(|_| format!("{path:?}: {:?} is not an index", &r[..digits]))?;
                steps.push(Step::Index(i));
                digits
            };
            rest = r[end..]
                .strip_prefix(']')
                .ok_or_else(|| format!("{path:?}: `[` without `]`"))?;
        } else {
            let r = if first {
                rest
            } else {
                rest.strip_prefix('.')
                    .ok_or_else(|| format!("{path:?}: expected `.` or `[` at {rest:?}"))?
            };
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            if key.is_empty() {
                return Err(format!("{path:?}: an empty field name"));
            }
            steps.push(Step::Key(key.to_string()));
            rest = &r[end..];
        }
        first = false;
    }
    Ok(steps)
}

/// The value at `steps`, if there is one.
pub fn get<'a>(root: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(root, |v, s| match s {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(*i),
    })
}

/// Sets the value at `steps`: every step but the last must exist; the last may add a
/// field to an object. `null` removes a field, so the spec's default applies.
pub fn set(root: &mut Value, steps: &[Step], value: Value) -> Result<(), String> {
    let (last, parents) = steps.split_last().ok_or("a path must name a field")?;
    let mut at = root;
    let mut walked = String::new();
    for s in parents {
        at = match (s, at) {
            (Step::Key(k), Value::Object(m)) => m
                .get_mut(k)
                .filter(|v| v.is_object() || v.is_array())
                .ok_or_else(|| format!("the spec has no object or list at {}", show(&walked, s)))?,
            (Step::Index(i), Value::Array(a)) => {
                let len = a.len();
                a.get_mut(*i)
                    .ok_or_else(|| format!("{} has {len} items: no index {i}", display(&walked)))?
            }
            _ => return Err(format!("{} is not what the path expects", display(&walked))),
        };
        walked = show(&walked, s);
    }
    match (last, at) {
        (Step::Key(k), Value::Object(m)) => {
            if value.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), value);
            }
            Ok(())
        }
        (Step::Index(i), Value::Array(a)) if *i < a.len() => {
            a[*i] = value;
            Ok(())
        }
        (Step::Index(i), Value::Array(a)) => Err(format!(
            "{} has {} items: no index {i}",
            display(&walked),
            a.len()
        )),
        _ => Err(format!("{} is not what the path expects", display(&walked))),
    }
}

fn show(walked: &str, s: &Step) -> String {
    match s {
        Step::Index(i) => format!("{walked}[{i}]"),
        Step::Key(k) if walked.is_empty() => k.clone(),
        Step::Key(k) => format!("{walked}.{k}"),
    }
}

fn display(walked: &str) -> &str {
    if walked.is_empty() {
        "the spec"
    } else {
        walked
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_read_as_differences_print_them() {
        assert_eq!(
            parse("model.layers[4].units").unwrap(),
            [
                Step::Key("model".into()),
                Step::Key("layers".into()),
                Step::Index(4),
                Step::Key("units".into())
            ]
        );
        assert_eq!(
            parse("dataset[\"a.b\"]").unwrap(),
            [Step::Key("dataset".into()), Step::Key("a.b".into())]
        );
        for bad in ["", "a..b", "a[", "a[x]", ".a", "a.", "[\"a"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn setting_replaces_adds_and_null_removes() {
        let mut v = json!({"optimizer": {"learning_rate": 0.1}, "layers": [{"units": 3}]});
        set(
            &mut v,
            &parse("optimizer.learning_rate").unwrap(),
            json!(0.5),
        )
        .unwrap();
        set(&mut v, &parse("optimizer.momentum").unwrap(), json!(0.9)).unwrap();
        set(&mut v, &parse("layers[0].units").unwrap(), json!(7)).unwrap();
        assert_eq!(
            v,
            json!({"optimizer": {"learning_rate": 0.5, "momentum": 0.9}, "layers": [{"units": 7}]})
        );
        set(&mut v, &parse("optimizer.momentum").unwrap(), Value::Null).unwrap();
        assert!(v["optimizer"].get("momentum").is_none());
        let e = set(&mut v, &parse("layers[3].units").unwrap(), json!(1)).unwrap_err();
        assert!(e.contains("layers has 1 items"), "{e}");
        let e = set(&mut v, &parse("nothing.here").unwrap(), json!(1)).unwrap_err();
        assert!(e.contains("no object or list at nothing"), "{e}");
    }
}
