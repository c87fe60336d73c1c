//! The spec parser and validation on arbitrary bytes, as `POST /experiments` runs them:
//! UTF-8 check, JSON, preset resolution, deserialisation, validation. Nothing may panic,
//! and every error must name a field, except a body that is not a JSON object at all.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = trainyard_fuzz::spec::parse_and_validate(text) {
        assert!(!e.0.is_empty(), "an error without a reason");
        let is_object = matches!(
            serde_json::from_str::<serde_json::Value>(text),
            Ok(serde_json::Value::Object(_))
        );
        if is_object {
            for f in &e.0 {
                assert!(!f.field.is_empty(), "an error naming no field: {f}");
            }
        }
    }
});
