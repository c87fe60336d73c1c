//! Request ids: every response carries `X-Request-ID`, every log line written while a
//! request is handled names it, and a problem's `instance` member names it. A client that
//! reports "this 500, at that time" thereby points at the exact lines in the server's log.
//!
//! A client (or a proxy in front) may send its own id to follow one call across systems.
//! The id ends up in log lines and response headers, so it is kept only when it is a short
//! token of safe characters ([`is_safe`]); anything else is replaced by a fresh UUID, as is
//! a missing id.
//!
//! The id reaches [`ApiError`](super::error::ApiError)'s `IntoResponse` through a task-local
//! set around the handler ([`scope`]): errors are made deep inside handlers, extractors
//! and middleware, none of which should have to carry the request around to say which
//! request failed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::RequestId;

/// The header, on requests and responses.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// The longest id a client may choose.
const MAX_LEN: usize = 64;

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// 1 to [`MAX_LEN`] characters of `A-Z a-z 0-9 . _ -`.
fn is_safe(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Middleware (before the id is set): removes a client's id unless it is exactly one
/// safe one, so that a fresh one is made instead.
pub async fn drop_unsafe(mut req: Request) -> Request {
    let mut ids = req.headers().get_all(&HEADER).iter();
    let keep = matches!((ids.next(), ids.next()), (Some(id), None) if is_safe(id.as_bytes()));
    if !keep {
        req.headers_mut().remove(&HEADER);
    }
    req
}

fn id_of<B>(req: &axum::http::Request<B>) -> Option<&str> {
    req.extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
}

/// Middleware (after the id is set): makes the id what [`instance`] answers while the
/// rest of the stack handles the request.
pub async fn scope(req: Request, next: Next) -> Response {
    match id_of(&req).map(Arc::<str>::from) {
        Some(id) => CURRENT.scope(id, next.run(req)).await,
        None => next.run(req).await,
    }
}

/// The current request as a problem's `instance`: `urn:trainyard:request:<id>`.
pub fn instance() -> Option<String> {
    CURRENT
        .try_with(|id| format!("urn:trainyard:request:{id}"))
        .ok()
}

/// The span of a request, which every log line written while handling it carries: its
/// id, method and route (the matched pattern, `/experiments/{id}`; the path itself when no
/// route matched), and the account, recorded once the caller is known.
pub fn span(req: &axum::http::Request<Body>) -> tracing::Span {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or_else(|| req.uri().path());
    tracing::info_span!(
        "request",
        request_id = id_of(req).unwrap_or_default(),
        method = %req.method(),
        path,
        account = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safe_id_is_a_short_token() {
        assert!(is_safe(b"a"));
        assert!(is_safe(b"Trace-01.abc_DEF"));
        assert!(is_safe("x".repeat(MAX_LEN).as_bytes()));
        assert!(!is_safe(b""));
        assert!(!is_safe("x".repeat(MAX_LEN + 1).as_bytes()));
        for bad in ["a b", "a/b", "a\"b", "é", "a\tb", "<script>", "a,b"] {
            assert!(!is_safe(bad.as_bytes()), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn instance_names_the_request_only_inside_its_scope() {
        assert_eq!(instance(), None);
        let inside = CURRENT.scope(Arc::from("abc"), async { instance() }).await;
        assert_eq!(inside.as_deref(), Some("urn:trainyard:request:abc"));
    }
}
