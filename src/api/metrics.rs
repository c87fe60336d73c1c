//! `GET /metrics`: what the service is doing, for Prometheus; and the middleware that
//! counts every HTTP request by its route.
//!
//! The registry, the names and the text format are [`crate::telemetry`]'s; this module
//! adds what only the server can see at scrape time: the experiments by status and the
//! running ones per worker process (from the database, so workers in other processes
//! show too), and its open curve streams. A scrape that cannot read the database still
//! answers, with `trainyard_database_up 0` and this process's own figures: those matter
//! most when the database is in trouble.
//!
//! Requests are labelled by their route template (axum's `MatchedPath`, such as
//! `/experiments/{id}`), never the raw path: ids would make a new series per experiment.
//! A request that matches no route is labelled `unmatched`.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;

use super::AppState;
use crate::store::{Scope, Status, Store, StoreError};
use crate::telemetry::{self, DatabaseState, Scrape};

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Every status, so that one with no experiments reads 0 rather than vanishing.
const STATUSES: [Status; 5] = [
    Status::Queued,
    Status::Running,
    Status::Succeeded,
    Status::Failed,
    Status::Cancelled,
];

/// What the service is doing, for Prometheus.
///
/// The text format 0.0.4: experiments by status, the queue's oldest wait, running
/// experiments per worker process, claims, rescues, failures, epoch durations and
/// throughput, `/predict` requests, latency and batch sizes, open curve streams, and HTTP
/// requests by route template and status with their latency. The book lists them
/// (docs/guide/operations.md).
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "prometheus_metrics", responses(
    (status = 200, description = "The Prometheus text exposition format, version 0.0.4", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
))]
async fn metrics(State(state): State<AppState>) -> Response {
    let database = match read_database(&state.store).await {
        Ok(db) => Some(db),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the database could not be read");
            None
        }
    };
    let scrape = Scrape {
        database,
        curve_streams_open: state
            .max_sse_streams
            .saturating_sub(state.sse_streams.available_permits()),
        curve_streams_limit: state.max_sse_streams,
    };
    (
        [(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)],
        telemetry::render(&scrape),
    )
        .into_response()
}

async fn read_database(store: &Store) -> Result<DatabaseState, StoreError> {
    let counts = store.status_counts(Scope::All).await?;
    let count = |s: Status| {
        counts
            .iter()
            .find(|(status, _, _)| status == s.as_str())
            .map_or(0, |(_, n, _)| *n)
    };
    let oldest_queued_seconds = counts
        .iter()
        .find(|(status, _, _)| status == Status::Queued.as_str())
        .map_or(0.0, |(_, _, oldest)| {
            (Utc::now() - *oldest).num_milliseconds().max(0) as f64 / 1e3
        });
    Ok(DatabaseState {
        by_status: STATUSES
            .iter()
            .map(|&s| (s.as_str().to_string(), count(s)))
            .collect(),
        oldest_queued_seconds,
        running_by_worker: store.running_by_worker().await?,
    })
}

/// Counts a request and times it to its response's headers, under its route template.
/// Applied with `Router::layer`, so it runs once a route (or the fallback) was chosen.
pub async fn track(req: Request, next: Next) -> Response {
    let method = telemetry::method_label(req.method().as_str());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let res = next.run(req).await;
    let route = route
        .as_ref()
        .map_or(telemetry::UNMATCHED_ROUTE, MatchedPath::as_str);
    telemetry::http_request(method, route, res.status().as_u16(), started.elapsed());
    res
}
