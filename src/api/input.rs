//! What every handler reads from a request, checked the same way everywhere: ids in
//! paths, query strings, bodies and their media types. Each failure is an [`ApiError`]
//! naming what was wrong, never axum's plain-text rejection.

use axum::extract::Path;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderMap, StatusCode, header};
use uuid::Uuid;

use super::error::ApiError;

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

/// A query string that does not parse: 422 naming the parameter at fault when the
/// message says which (`limit: invalid digit ...`, ``duplicate field `limit` ``), the
/// whole `query` otherwise.
pub fn query_error(e: QueryRejection) -> ApiError {
    let text = e.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    let is_name = |f: &&str| {
        !f.is_empty() && f.len() <= 64 && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let field = detail
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(f, _)| f)
        .or_else(|| detail.split_once(": ").map(|(f, _)| f))
        .filter(is_name)
        .unwrap_or("query");
    ApiError::field(field, detail)
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
