//! What the network needs from the service beyond its routes: time limits and CORS.
//!
//! A request holds a connection, a task and often a database connection for as long as
//! it lasts, so none may last as long as the client likes. Three clocks bound it, each
//! against a different way of being slow:
//!
//! - the **header timeout** (enforced by the accept loop, `crate::server::http`): a
//!   client must send its request line and headers within it, or the connection closes
//!   without an answer (there is no request yet to answer). A connection idle between
//!   keep-alive requests is closed after the same time.
//! - the **body timeout** ([`time_limits`]): the whole body must arrive within it, counted
//!   from the end of the headers. tower-http's `RequestBodyTimeoutLayer` restarts its
//!   clock at every frame, so a client sending a byte a second would never trip it; this
//!   one is a deadline. The client gets a 408 problem, and the connection closes since
//!   the rest of the body is unread.
//! - the **request timeout** ([`time_limits`]): from the end of the headers to the
//!   response's head, the body's upload included, or a 504 problem. Its default is twice
//!   the body timeout: a body that takes the whole body timeout still leaves as long for
//!   the work, and the slowest work the API does (a 64-image `/predict` on a busy CPU, a
//!   PNG of eight curves) takes seconds, not minutes. A response's body is not timed: a
//!   checkpoint download goes at the client's pace, and the curve stream, whose handler
//!   answers at once, lasts as long as its experiment runs, its keep-alives showing it is
//!   alive.
//!
//! CORS is off unless origins are configured: the web app is served from the API's own
//! origin and needs none. Configured origins may call the API with an API key; cookies
//! are never allowed cross-origin (`Access-Control-Allow-Credentials` is never sent), so
//! another site cannot ride a signed-in browser's session.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::ApiError;

/// Seconds a client has to send its request line and headers.
pub const DEFAULT_HEADER_TIMEOUT_SECS: f64 = 10.0;
/// Seconds a client has to send a request's whole body.
pub const DEFAULT_BODY_TIMEOUT_SECS: f64 = 60.0;
/// Seconds from a request's headers to its response's head.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: f64 = 120.0;

/// The service's time limits and CORS origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    /// Origins (`https://app.example`) allowed to call the API from a browser; none: no
    /// CORS headers at all.
    pub cors_origins: Vec<HeaderValue>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            header_timeout: Duration::from_secs_f64(DEFAULT_HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs_f64(DEFAULT_BODY_TIMEOUT_SECS),
            request_timeout: Duration::from_secs_f64(DEFAULT_REQUEST_TIMEOUT_SECS),
            cors_origins: Vec::new(),
        }
    }
}

/// An origin as a browser sends it in `Origin`: scheme, host and port if any, lower
/// case, no path. `https://App.example/` is refused rather than silently never matched.
pub fn parse_origin(s: &str) -> anyhow::Result<HeaderValue> {
    let s = s.trim();
    let bad = || {
        anyhow::anyhow!(
            "--cors-origin {s:?} is not an origin: write scheme://host[:port], \
             e.g. https://app.example, with no path or trailing slash"
        )
    };
    let uri: axum::http::Uri = s.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && uri
            .path_and_query()
            .is_none_or(|p| p.path() == "/" && p.query().is_none())
        && !s.ends_with('/');
    if !scheme_ok || !bare {
        return Err(bad());
    }
    HeaderValue::from_str(&s.to_ascii_lowercase()).map_err(|_| bad())
}

/// The CORS layer for `origins`, or none when there are none.
pub fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let h = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                h("idempotency-key"),
                h("last-event-id"),
                h("x-request-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                h("x-request-id"),
                h("idempotent-replayed"),
                h("x-checkpoint-epoch"),
            ])
            // A browser asks again at most once an hour per URL.
            .max_age(Duration::from_secs(3600)),
    )
}

/// Middleware: the body deadline and the request timeout of [`NetConfig`].
pub async fn time_limits(State(cfg): State<Arc<NetConfig>>, req: Request, next: Next) -> Response {
    let tripped = Arc::new(AtomicBool::new(false));
    let req = if req.body().is_end_stream() {
        req
    } else {
        let deadline = tokio::time::Instant::now() + cfg.body_timeout;
        let flag = tripped.clone();
        req.map(|inner| {
            Body::new(DeadlineBody {
                inner,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                tripped: flag,
                done: false,
            })
        })
    };
    let Ok(res) = tokio::time::timeout(cfg.request_timeout, next.run(req)).await else {
        return ApiError::Timeout(cfg.request_timeout.as_secs_f64()).into_response();
    };
    if tripped.load(Ordering::Relaxed) {
        // Whatever the handler made of its broken body, the client's fault is its
        // slowness; the rest of the body is unread, so the connection cannot be reused.
        let mut res = ApiError::BodyTimeout(cfg.body_timeout.as_secs_f64()).into_response();
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return res;
    }
    res
}

/// A request body that fails once its deadline passes, however steadily it trickles.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    tripped: Arc<AtomicBool>,
    /// The whole body arrived: the deadline no longer matters.
    done: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if !this.done && !this.inner.is_end_stream() && this.deadline.as_mut().poll(cx).is_ready() {
            this.tripped.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() {
            this.done = true;
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_scheme_host_and_port_only() {
        assert_eq!(
            parse_origin("https://App.example:8443").unwrap(),
            "https://app.example:8443"
        );
        assert_eq!(
            parse_origin(" http://a.example ").unwrap(),
            "http://a.example"
        );
        for bad in [
            "a.example",
            "https://a.example/",
            "https://a.example/path",
            "https://a.example?x=1",
            "ftp://a.example",
            "https://user@a.example",
            "*",
            "",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn a_trickling_body_fails_at_its_deadline_and_a_prompt_one_does_not() {
        use futures::StreamExt;
        let trickle = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), n + 1))
        });
        let tripped = Arc::new(AtomicBool::new(false));
        let body = Body::new(DeadlineBody {
            inner: Body::from_stream(trickle),
            deadline: Box::pin(tokio::time::sleep(Duration::from_millis(350))),
            tripped: tripped.clone(),
            done: false,
        });
        let mut frames = body.into_data_stream();
        let mut got = 0;
        let err = loop {
            match frames.next().await.unwrap() {
                Ok(_) => got += 1,
                Err(e) => break e,
            }
        };
        // About three frames (timers on a busy machine are late, never early).
        assert!((1..=3).contains(&got), "{got} frames");
        assert!(err.to_string().contains("did not arrive in time"), "{err}");
        assert!(tripped.load(Ordering::Relaxed));

        // A body that has arrived is not failed by a deadline passing later.
        let tripped = Arc::new(AtomicBool::new(false));
        let mut body = DeadlineBody {
            inner: Body::from("done"),
            deadline: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
            tripped: tripped.clone(),
            done: false,
        };
        let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(first.unwrap().is_ok());
        assert!(
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_none()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_none()
        );
        assert!(!tripped.load(Ordering::Relaxed));
    }
}
