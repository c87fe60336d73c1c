//! `GET /stats`: the queue at a glance, for dashboards and operators: how many
//! experiments are in each state and how long the oldest queued one has waited.
//!
//! One grouped query over the experiments table; measured fast at thousands of queued
//! experiments (see `bench/queue_scale.py`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{AppState, error::ApiError};
use crate::store::Status;

pub fn router() -> Router<AppState> {
    Router::new().route("/stats", get(stats))
}

/// Experiments per state.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Stats {
    pub experiments: Counts,
    /// When the oldest queued experiment was submitted (null when none is queued).
    pub oldest_queued_at: Option<DateTime<Utc>>,
    /// How long it has waited, in seconds (null when none is queued).
    pub oldest_queued_seconds: Option<f64>,
}

/// Counts of experiments by state, and the queue's oldest wait: the caller's account's,
/// or every account's for an admin.
#[utoipa::path(get, path = "/stats", tag = "health", responses(
    (status = 200, body = Stats),
    (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
))]
async fn stats(
    State(state): State<AppState>,
    caller: super::auth::Caller,
) -> Result<Json<Stats>, ApiError> {
    let mut counts = Counts::default();
    let mut oldest_queued_at = None;
    for (status, n, oldest) in state.store.status_counts(caller.scope()).await? {
        let slot = match Status::parse(&status) {
            Some(Status::Queued) => {
                oldest_queued_at = Some(oldest);
                &mut counts.queued
            }
            Some(Status::Running) => &mut counts.running,
            Some(Status::Succeeded) => &mut counts.succeeded,
            Some(Status::Failed) => &mut counts.failed,
            Some(Status::Cancelled) => &mut counts.cancelled,
            None => continue,
        };
        *slot = n;
    }
    Ok(Json(Stats {
        experiments: counts,
        oldest_queued_at,
        oldest_queued_seconds: oldest_queued_at
            .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1e3),
    }))
}
