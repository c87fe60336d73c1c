//! Every error the API returns, mapped once to an HTTP status and an RFC 9457
//! `application/problem+json` body that names the fields at fault.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::spec::{FieldError, SpecErrors};
use crate::store::StoreError;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The fields at fault, for validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The quota exceeded, for a 429 of a quota (`max_queued`, `max_flops_per_day`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// The request this answers, `urn:trainyard:request:<id>`, the id being the
    /// response's `X-Request-ID` (what the server's log lines of that request carry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(SpecErrors),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A 404 that says which of several things are missing.
    #[error("{0}")]
    NotFoundNamed(String),
    #[error("this path does not take that method (the Allow header lists those it takes)")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// An upload that is not a dataset trainyard can read, or is over one of its limits
    /// (413): `kind` is the problem's type (`upload-zip-bomb`), `at` the file or archive
    /// member at fault.
    #[error("{detail}")]
    Upload {
        kind: &'static str,
        at: String,
        detail: String,
        over_limit: bool,
    },
    #[error("{0}")]
    UnsupportedMedia(String),
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials that name no one.
    #[error("{0}")]
    Unauthorized(String),
    /// Known, but not allowed (a non-admin key on an admin route).
    #[error("{0}")]
    Forbidden(String),
    /// A key's token bucket is empty.
    #[error("{detail}")]
    RateLimited { detail: String, retry_after: u64 },
    /// A submission beyond one of the account's quotas.
    #[error("{0}")]
    Quota(crate::store::QuotaExceeded),
    #[error("the service is not ready: {0}")]
    Unavailable(String),
    /// The request body did not arrive within the body timeout (seconds).
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(f64),
    /// No response within the request timeout (seconds).
    #[error("the request was not answered within {0} s")]
    Timeout(f64),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 422 for one field.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Invalid(SpecErrors::one(field, reason))
    }

    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-input"),
            ApiError::NotFound(_) | ApiError::NotFoundNamed(_) => {
                (StatusCode::NOT_FOUND, "not-found")
            }
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            ApiError::Upload {
                over_limit: true, ..
            } => (StatusCode::PAYLOAD_TOO_LARGE, "upload"),
            ApiError::Upload { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "upload"),
            ApiError::UnsupportedMedia(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            ApiError::Quota(_) => (StatusCode::TOO_MANY_REQUESTS, "quota-exceeded"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body-timeout"),
            // Not a 503: the work may have been done (or half done), so a client must not
            // take it for "not attempted" and blindly retry a POST.
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<SpecErrors> for ApiError {
    fn from(e: SpecErrors) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("experiment"),
            StoreError::NotFoundThing(what) => ApiError::NotFound(what),
            StoreError::Invalid(field, reason) => ApiError::field(field, reason),
            StoreError::Quota(q) => ApiError::Quota(q),
            StoreError::NotFoundIds(_) => ApiError::NotFoundNamed(e.to_string()),
            StoreError::NotEnded(_) | StoreError::DatasetInUse(_) => {
                ApiError::Conflict(e.to_string())
            }
            StoreError::IdempotencyConflict => ApiError::Conflict(e.to_string()),
            StoreError::Db(sqlx::Error::PoolTimedOut) => {
                ApiError::Unavailable("the database is busy or unreachable".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let errors = match &self {
            ApiError::Invalid(e) => e.0.clone(),
            ApiError::Upload { at, detail, .. } => vec![FieldError {
                field: at.clone(),
                reason: detail.clone(),
            }],
            _ => Vec::new(),
        };
        let kind = match &self {
            ApiError::Upload { kind: k, .. } => format!("{kind}-{k}"),
            _ => kind.to_string(),
        };
        let body = Problem {
            kind: format!("https://trainyard.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
            quota: match &self {
                ApiError::Quota(q) => Some(q.quota.to_string()),
                _ => None,
            },
            instance: super::request_id::instance(),
        };
        let mut res = (status, axum::Json(body)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let h = res.headers_mut();
        match &self {
            // Unavailable is temporary (the database, or a full stream budget): say when.
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"trainyard\""),
                );
            }
            ApiError::RateLimited { retry_after, .. }
            | ApiError::Quota(crate::store::QuotaExceeded {
                retry_after: Some(retry_after),
                ..
            }) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        res
    }
}
