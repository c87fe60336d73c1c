//! One log line per request, at INFO, except for the machines' own traffic.
//!
//! A container healthcheck calls `/readyz` every two seconds and Prometheus scrapes
//! `/metrics` every few; logged at INFO, they bury what a person starts the service to
//! read (the first start's admin key scrolled out of `docker compose logs` within a
//! minute). Those routes mark their responses as [`Probe`]s, and [`AccessLog`] writes
//! the line for a probe at DEBUG: `RUST_LOG=debug` (or `tower_http=debug`) still shows
//! them. Marking the response rather than matching paths here keeps the list of probe
//! routes where the routes are.

use std::time::Duration;

use axum::body::Body;
use axum::http::Response;
use axum::response::IntoResponse;
use tower_http::trace::OnResponse;

/// Marks a response as a probe's (health check, readiness, metrics scrape).
#[derive(Debug, Clone, Copy)]
pub struct Probe;

/// Middleware for the probe routes: marks their responses.
pub async fn mark_probe(res: Response<Body>) -> impl IntoResponse {
    let mut res = res;
    res.extensions_mut().insert(Probe);
    res
}

/// Writes the request's line when its response's head is sent: its status and latency,
/// inside the request's span (which names the request id, method and route).
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog;

impl<B> OnResponse<B> for AccessLog {
    fn on_response(self, res: &Response<B>, latency: Duration, _span: &tracing::Span) {
        let status = res.status().as_u16();
        let latency = format!("{} ms", latency.as_millis());
        if res.extensions().get::<Probe>().is_some() {
            tracing::debug!(status, %latency, "finished processing request");
        } else {
            tracing::info!(status, %latency, "finished processing request");
        }
    }
}
