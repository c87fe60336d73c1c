//! `/sweeps`: many experiments from one request, read back as one ranked table.
//!
//! A grid, a random search, or an ablation of two experiments ([`crate::spec::sweep`])
//! is turned into children that are each checked exactly as `POST /experiments` checks
//! one spec ([`build`]); only when every child is valid are they all queued, in one
//! transaction. The children are ordinary experiments: the sweep adds the ranking
//! ([`rank`]), and cancel and delete that reach every child.

mod build;
mod rank;

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use build::Skipped;
pub use rank::{Ablation, RankedPoint};

use super::auth::{Caller, Limited};
use super::input::{body_error, int_param, path_id, query, require_json};
use super::{AppState, error::ApiError, labels, specs};
use crate::spec::Monitor;
use crate::spec::sweep::{Kind, Point, SweepRequest};
use crate::store::sweeps::{LastEpoch, NewChild, NewSweep, Sweep, SweepChild};
use crate::store::{Status, StoreError};

const MAX_PAGE: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sweeps", post(create).get(list))
        .route("/sweeps/{id}", get(show).delete(delete))
        .route("/sweeps/{id}/cancel", post(cancel))
}

/// A sweep's 404 says "sweep".
fn not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("sweep"),
        e => e.into(),
    }
}

/// Where a sweep stands: `queued` while none of its children has started, `running`
/// while any is queued or running, `finished` once all have ended.
fn state_of(counts: &BTreeMap<String, i64>) -> &'static str {
    let n = |s: Status| counts.get(s.as_str()).copied().unwrap_or(0);
    let total: i64 = counts.values().sum();
    if n(Status::Queued) == total && total > 0 {
        "queued"
    } else if n(Status::Queued) + n(Status::Running) > 0 {
        "running"
    } else {
        "finished"
    }
}

/// A sweep in a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SweepBrief {
    #[serde(flatten)]
    pub sweep: Sweep,
    /// `queued`, `running` or `finished`.
    pub state: &'static str,
    /// Children by status.
    pub counts: BTreeMap<String, i64>,
}

/// One child of a sweep.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChildView {
    pub id: Uuid,
    pub status: Status,
    /// The point's short name (`batch_size=32, optimizer.learning_rate=0.1`, an
    /// ablation's changed path, `from (A)`, `to (B)`).
    pub label: String,
    #[schema(value_type = Object)]
    pub point: serde_json::Value,
    pub repeat: i32,
    pub seed: Option<u64>,
    pub epochs_done: i32,
    pub epochs: Option<u64>,
    /// Its last stored epoch's figures.
    pub last: Option<LastEpoch>,
    pub error: Option<String>,
}

impl ChildView {
    fn new(c: &SweepChild) -> ChildView {
        let point: Option<Point> = serde_json::from_value(c.point.clone()).ok();
        let e = &c.experiment;
        ChildView {
            id: e.id,
            status: e.status,
            label: point.map(|p| p.label()).unwrap_or_default(),
            point: c.point.clone(),
            repeat: c.repeat,
            seed: e.spec.get("seed").and_then(|s| s.as_u64()),
            epochs_done: e.epochs_done,
            epochs: e.spec.get("epochs").and_then(|s| s.as_u64()),
            last: c.last,
            error: e.error.clone(),
        }
    }
}

/// A sweep with its children and what they say.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SweepView {
    #[serde(flatten)]
    pub brief: SweepBrief,
    /// In the order queued: by point, then repeat.
    pub children: Vec<ChildView>,
    /// A grid's or random search's points, best mean of `metric` first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranking: Option<Vec<RankedPoint>>,
    /// An ablation's differences, the largest effect first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ablation: Option<Ablation>,
}

async fn view(state: &AppState, sweep: Sweep) -> Result<SweepView, ApiError> {
    let children = state.store.sweep_children(sweep.id).await?;
    let mut counts = BTreeMap::new();
    for c in &children {
        *counts
            .entry(c.experiment.status.as_str().to_string())
            .or_insert(0) += 1;
    }
    let metric: Monitor = serde_json::from_value(serde_json::Value::from(sweep.metric.clone()))
        .map_err(|e| ApiError::Internal(format!("stored metric: {e}")))?;
    let repeats = sweep.repeats.max(1) as usize;
    let (ranking, ablation) = match Kind::parse(&sweep.kind) {
        Some(Kind::Ablation) => {
            let ends = sweep.request.get("ablate").map(|a| {
                let id = |k: &str| a.get(k).and_then(|v| v.as_str()?.parse().ok());
                (id("from"), id("to"))
            });
            let changes: Vec<(String, serde_json::Value, serde_json::Value)> = sweep
                .changes
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["path"].as_str().unwrap_or_default().to_string(),
                        c["from"].clone(),
                        c["to"].clone(),
                    )
                })
                .collect();
            let a = rank::ablation(
                &children,
                repeats,
                metric,
                ends.unwrap_or((None, None)),
                &changes,
            );
            (None, Some(a))
        }
        _ => (Some(rank::points(&children, repeats, metric)), None),
    };
    Ok(SweepView {
        children: children.iter().map(ChildView::new).collect(),
        brief: SweepBrief {
            state: state_of(&counts),
            counts,
            sweep,
        },
        ranking,
        ablation,
    })
}

/// The sweep `scope` may see, and its points to draw, best first (an ablation: A, B,
/// then its differences by effect), each with its children's ids.
pub(super) async fn point_groups(
    state: &AppState,
    scope: crate::store::Scope,
    id: Uuid,
) -> Result<(Sweep, Vec<(String, Vec<Uuid>)>), ApiError> {
    let sweep = state.store.sweep_in(scope, id).await.map_err(not_found)?;
    let v = view(state, sweep.clone()).await?;
    let mut labels: Vec<String> = Vec::new();
    if let Some(r) = &v.ranking {
        labels.extend(r.iter().map(|r| r.label.clone()));
    }
    if let Some(a) = &v.ablation {
        labels.extend(["from (A)".to_string(), "to (B)".to_string()]);
        labels.extend(a.differences.iter().map(|d| d.path.clone()));
    }
    let groups = labels
        .into_iter()
        .map(|l| {
            let ids = v
                .children
                .iter()
                .filter(|c| c.label == l)
                .map(|c| c.id)
                .collect();
            (l, ids)
        })
        .collect();
    Ok((sweep, groups))
}

/// Queue a sweep: a grid, a random search, or an ablation of two experiments.
#[utoipa::path(post, path = "/sweeps", tag = "sweeps", operation_id = "create_sweep",
    request_body(content = Object, content_type = "application/json",
        description = "`base` with `grid` or `random`, or `ablate`; `repeats`, `metric`, `name`, `tags` (see the book: docs/guide/sweeps.md)",
        example = json!({"base": {"preset": "torch-cnn", "epochs": 1, "dataset": {"train_limit": 600, "test_limit": 200}}, "grid": {"optimizer.learning_rate": [0.1, 0.01]}, "repeats": 2})),
    responses(
        (status = 201, description = "Every child queued", body = SweepView,
            headers(("Location" = String, description = "The sweep's URL"))),
        (status = 413, description = "Body too large", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request, or a child that would not validate; `errors` names each field. Nothing is queued.", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit, or the children together over the account's quotas", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    state.auth.limit(Limited::Experiments, &caller)?;
    let body = body.map_err(body_error)?;
    let started = std::time::Instant::now();
    let (value, labels) = specs::json_with_labels(&body)?;
    let req = SweepRequest::from_value(value)?;
    let built = build::build(&state, &caller, &req).await?;
    let kind = built.kind;
    let prefix = labels
        .name
        .clone()
        .unwrap_or_else(|| kind.as_str().to_string());
    let mut children = Vec::with_capacity(built.children.len());
    for (child, submitted) in &built.children {
        let name = format!(
            "{prefix} · {} · repeat {}",
            child.point.label(),
            child.repeat + 1
        );
        children.push(NewChild {
            spec: submitted.resolved()?,
            train_flops: submitted
                .spec
                .training_flops(&submitted.summary, submitted.data.train_len),
            dataset_id: submitted.dataset_id,
            data: to_json(&submitted.data)?,
            point: to_json(&child.point)?,
            repeat: child.repeat as i32,
            name: truncate(name, labels::MAX_NAME_CHARS),
        });
    }
    let (sweep, ids) = state
        .store
        .create_sweep(
            NewSweep {
                account_id: caller.account_id(),
                kind: kind.as_str(),
                request: to_json(&req)?,
                metric: built.metric.name(),
                repeats: req.repeats as i32,
                changes: to_json(&built.changes)?,
                skipped: to_json(&built.skipped)?,
                labels,
            },
            children,
        )
        .await?;
    tracing::info!(
        sweep = %sweep.id, kind = kind.as_str(), children = ids.len(),
        skipped = built.skipped.len(), ms = started.elapsed().as_millis() as u64,
        "sweep queued"
    );
    let location = format!("/sweeps/{}", sweep.id);
    let mut res = (StatusCode::CREATED, Json(view(&state, sweep).await?)).into_response();
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("ascii"),
    );
    Ok(res)
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

fn truncate(mut s: String, chars: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(chars) {
        s.truncate(i);
    }
    s
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// How many, newest first: 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SweepList {
    pub items: Vec<SweepBrief>,
}

/// The newest sweeps, with their children counted by status.
#[utoipa::path(get, path = "/sweeps", tag = "sweeps", operation_id = "list_sweeps", params(ListParams),
    responses(
        (status = 200, body = SweepList),
        (status = 422, description = "A bad `limit`", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    p: RawQuery,
) -> Result<Json<SweepList>, ApiError> {
    let p: ListParams = query(p)?;
    let limit: i64 = int_param("limit", p.limit.as_deref())?.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 100"));
    }
    let items = state
        .store
        .list_sweeps(caller.scope(), limit)
        .await?
        .into_iter()
        .map(|(sweep, counts)| SweepBrief {
            state: state_of(&counts),
            counts,
            sweep,
        })
        .collect();
    Ok(Json(SweepList { items }))
}

/// A sweep: its children, and its ranking (or an ablation's effects).
#[utoipa::path(get, path = "/sweeps/{id}", tag = "sweeps", operation_id = "show_sweep",
    params(("id" = uuid::Uuid, Path, description = "Sweep id")),
    responses(
        (status = 200, body = SweepView),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SweepView>, ApiError> {
    let sweep = state
        .store
        .sweep_in(caller.scope(), path_id(id)?)
        .await
        .map_err(not_found)?;
    Ok(Json(view(&state, sweep).await?))
}

/// Cancel every child still queued or running.
#[utoipa::path(post, path = "/sweeps/{id}/cancel", tag = "sweeps", operation_id = "cancel_sweep",
    params(("id" = uuid::Uuid, Path, description = "Sweep id")),
    responses(
        (status = 200, description = "Queued children cancelled, running ones asked to stop", body = SweepView),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SweepView>, ApiError> {
    let id = path_id(id)?;
    let n = state
        .store
        .cancel_sweep(caller.scope(), id, caller.account_id())
        .await
        .map_err(not_found)?;
    tracing::info!(sweep = %id, children = n, "sweep cancelled");
    let sweep = state
        .store
        .sweep_in(caller.scope(), id)
        .await
        .map_err(not_found)?;
    Ok(Json(view(&state, sweep).await?))
}

/// Delete a sweep with every child, once all have ended.
#[utoipa::path(delete, path = "/sweeps/{id}", tag = "sweeps", operation_id = "delete_sweep",
    params(("id" = uuid::Uuid, Path, description = "Sweep id")),
    responses(
        (status = 204, description = "Deleted, children and all"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A child is queued or running: cancel the sweep first", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(id)?;
    let children = state
        .store
        .delete_sweep(caller.scope(), id, caller.account_id())
        .await
        .map_err(|e| match e {
            StoreError::NotEnded(s) => ApiError::Conflict(format!(
                "a child of the sweep is {}: cancel the sweep first",
                s.as_str()
            )),
            e => not_found(e),
        })?;
    let n = children.len();
    for c in children {
        state.models.forget(c);
    }
    tracing::info!(sweep = %id, children = n, by = %caller.0.account, "sweep deleted");
    Ok(StatusCode::NO_CONTENT)
}
