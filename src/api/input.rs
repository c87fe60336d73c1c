//! What every handler reads from a request, checked the same way everywhere: ids in
//! paths, query strings, bodies and their media types. Each failure is an [`ApiError`]
//! naming what was wrong, never axum's plain-text rejection.

use std::collections::HashSet;

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use uuid::Uuid;

use super::error::ApiError;

/// The request's `Content-Type` as sent (lowercase) and its media type alone (without
/// parameters such as a multipart boundary).
pub fn media_type(headers: &HeaderMap) -> (String, String) {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim().to_string();
    (ct, mime)
}

/// A 413 when the body's declared length is over `limit`: refused before a byte of it
/// is read.
pub fn refuse_declared_over(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(ApiError::TooLarge(limit as usize)),
        _ => Ok(()),
    }
}

/// Parses an id from the path: a malformed id is an unknown id.
pub fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("experiment"))
}

/// The experiment id of a path. A segment that does not even decode (percent-encoded
/// bytes that are not UTF-8) names nothing that exists either: 404, as a problem, never
/// axum's plain-text 400.
pub fn path_id(p: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = p.map_err(|_| ApiError::NotFound("experiment"))?;
    parse_id(&id)
}

/// The query string as `T`: 422 naming the parameter at fault. A value that does not
/// parse is named by its path (`top_k`); a parameter `T` knows given twice is named
/// before anything is parsed (serde would say only ``duplicate field `limit` ``, naming
/// no path). Parameters `T` does not know are ignored, once or many times, as serde
/// ignores them.
pub fn query<T: DeserializeOwned>(RawQuery(raw): RawQuery) -> Result<T, ApiError> {
    let raw = raw.unwrap_or_default();
    let pairs = form_urlencoded::parse(raw.as_bytes());
    let known = struct_fields::<T>();
    let mut seen = HashSet::new();
    for (name, _) in pairs {
        if known.contains(&name.as_ref()) && !seen.insert(name.clone()) {
            return Err(ApiError::field(name, "given more than once"));
        }
    }
    let de = serde_urlencoded::Deserializer::new(pairs);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "query".to_string()
        } else {
            path
        };
        ApiError::field(field, e.into_inner().to_string())
    })
}

/// The field names a struct deserialises, as serde hands them to
/// `deserialize_struct`; none for anything else.
fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only the fields were asked for"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// An optional integer query parameter, named in the 422 when it is not one.
pub fn int_param<T: std::str::FromStr>(
    field: &str,
    v: Option<&str>,
) -> Result<Option<T>, ApiError> {
    v.map(|s| {
        s.trim()
            .parse()
            .map_err(|_| ApiError::field(field, format!("{s:?} is not an integer in range")))
    })
    .transpose()
}

/// A body that could not be read: too large (413) or broken (400).
pub fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(super::MAX_JSON_BYTES)
    } else {
        ApiError::BadRequest(e.body_text())
    }
}

pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    require_media(headers, &["application/json"])
}

/// The body's media type is one of `accepted` (the first is the one named in the 415).
pub fn require_media(headers: &HeaderMap, accepted: &[&str]) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if accepted.iter().any(|a| mime.eq_ignore_ascii_case(a)) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMedia(format!(
            "send the body as {} (got {:?})",
            accepted.join(" or "),
            if ct.is_empty() { "no Content-Type" } else { ct }
        )))
    }
}

/// 422 unless a JSON body is an object. serde reads a struct from an array too, by
/// position (`[null, null]` as the first two fields), which no document describes.
pub fn require_object(body: &[u8]) -> Result<(), ApiError> {
    if body.trim_ascii_start().first() == Some(&b'{') {
        Ok(())
    } else {
        Err(ApiError::field("", "the body must be a JSON object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Params {
        limit: Option<u32>,
        #[serde(rename = "tag")]
        _tag: Option<String>,
    }

    /// The fields a query's 422 names, or the parsed `limit`.
    fn parse(q: &str) -> Result<Option<u32>, Vec<String>> {
        query::<Params>(RawQuery(Some(q.to_string())))
            .map(|p| p.limit)
            .map_err(|e| match e {
                ApiError::Invalid(errs) => errs.0.into_iter().map(|f| f.field).collect(),
                other => panic!("not a 422: {other:?}"),
            })
    }

    #[test]
    fn query_value_that_does_not_parse_is_named_by_its_parameter() {
        assert_eq!(parse("tag=a&limit=abc"), Err(vec!["limit".to_string()]));
        assert_eq!(parse("limit=-1"), Err(vec!["limit".to_string()]));
    }

    #[test]
    fn query_parameter_given_twice_is_named_even_when_both_values_parse() {
        assert_eq!(parse("limit=1&limit=2"), Err(vec!["limit".to_string()]));
        assert_eq!(parse("tag=a&limit=1&tag=b"), Err(vec!["tag".to_string()]));
    }

    #[test]
    fn query_parameters_the_handler_does_not_read_are_ignored_even_twice() {
        assert_eq!(parse("x=1&x=2&limit=7"), Ok(Some(7)));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(query::<Params>(RawQuery(None)).unwrap().limit, None);
    }
}
