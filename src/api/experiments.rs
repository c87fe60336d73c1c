//! `/experiments`: submit, list, read, rename and tag, cancel, delete, metrics.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::auth::{Caller, Limited};
use super::input::{body_error, int_param, path_id, query, require_json, require_media};
use super::labels;
use super::specs::submission;
pub use super::view::ExperimentView;
use super::{AppState, error::ApiError};
use crate::store::experiments::{Filter, NewExperiment, Status};
use crate::store::queue::StoredEpoch;

/// Largest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 200;
const MAX_PAGE: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/experiments", post(create).get(list))
        .route("/experiments/{id}", get(show).patch(update).delete(delete))
        .route("/experiments/{id}/cancel", post(cancel))
        .route("/experiments/{id}/metrics", get(metrics))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CreateParams {
    /// Higher runs first (-100 to 100, default 0).
    #[param(value_type = Option<i32>, minimum = -100, maximum = 100)]
    pub priority: Option<String>,
}

/// Queue an experiment.
#[utoipa::path(post, path = "/experiments", tag = "experiments",
    params(CreateParams, ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = "^[ -~]+$", description = "Retries with the same key and body return the same experiment")),
    request_body(content = Object, content_type = "application/json", description = "An experiment spec (see the book: docs/reference/spec.md): a preset name with overrides, or every field written out",
        example = json!({"preset": "torch-cnn", "epochs": 1, "dataset": {"train_limit": 100, "test_limit": 100}})),
    responses(
        (status = 201, description = "Queued (or, for a repeated Idempotency-Key, the experiment queued then)", body = ExperimentView,
            headers(("Location" = String, description = "The experiment's URL"))),
        (status = 409, description = "Idempotency-Key reused with another body", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid spec; `errors` names each field", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit (with `Retry-After`) or the account's `max_queued` or `max_flops_per_day` quota (`quota` names it)", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    params: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    state.auth.limit(Limited::Experiments, &caller)?;
    let params: CreateParams = query(params)?;
    let body = body.map_err(body_error)?;
    let priority: i32 = int_param("priority", params.priority.as_deref())?.unwrap_or(0);
    if !(-100..=100).contains(&priority) {
        return Err(ApiError::field("priority", "must be between -100 and 100"));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| {
                    // `to_str` lets a tab through; the document promises printable ASCII.
                    (1..=MAX_KEY_LEN).contains(&k.len())
                        && k.bytes().all(|b| (b' '..=b'~').contains(&b))
                })
                .ok_or_else(|| {
                    ApiError::field(
                        "Idempotency-Key",
                        format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
                    )
                })?;
            Some(k.to_string())
        }
    };
    let (submitted, labels) = submission(&state, &caller, &body).await?;
    let resolved = submitted.resolved()?;
    let train_flops = submitted
        .spec
        .training_flops(&submitted.summary, submitted.data.train_len);
    let mut hash = Sha256::new();
    hash.update(priority.to_le_bytes());
    hash.update(&body);
    let (exp, created) = state
        .store
        .create_experiment(NewExperiment {
            account_id: caller.account_id(),
            spec: resolved,
            train_flops,
            priority,
            idempotency_key: key,
            request_hash: hash.finalize().to_vec(),
            labels,
            dataset_id: submitted.dataset_id,
            data: serde_json::to_value(&submitted.data)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        })
        .await?;
    let location = format!("/experiments/{}", exp.id);
    let mut res = (StatusCode::CREATED, Json(ExperimentView::new(exp, true))).into_response();
    let h = res.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("ascii"),
    );
    if !created {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only experiments in this status.
    #[param(value_type = Option<Status>)]
    pub status: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,17}_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// Only experiments with this tag.
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000]*[^ \\u0000][^\\u0000]*$"
    )]
    pub tag: Option<String>,
    /// Only experiments whose name contains this text (case-insensitive).
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000]*[^ \\u0000][^\\u0000]*$"
    )]
    pub q: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ExperimentPage {
    pub items: Vec<ExperimentView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn encode_cursor((at, id): (DateTime<Utc>, Uuid)) -> String {
    format!("{}_{}", at.timestamp_micros(), id.simple())
}

/// Latest instant a cursor may name: the end of year 9999. A cursor names a row's
/// `created_at`; one far outside what PostgreSQL stores would fail in the database.
const MAX_CURSOR_MICROS: i64 = 253_402_300_799_999_999;

fn decode_cursor(s: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (t, id) = s.split_once('_')?;
    let micros: i64 = t
        .parse()
        .ok()
        .filter(|m| (0..=MAX_CURSOR_MICROS).contains(m))?;
    Some((DateTime::from_timestamp_micros(micros)?, id.parse().ok()?))
}

/// List experiments, newest first.
#[utoipa::path(get, path = "/experiments", tag = "experiments", params(ListParams),
    responses(
        (status = 200, body = ExperimentPage),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    p: RawQuery,
) -> Result<Json<ExperimentPage>, ApiError> {
    let p: ListParams = query(p)?;
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::field(
                "status",
                "must be queued, running, succeeded, failed or cancelled",
            )
        })?),
    };
    let after = match p.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| ApiError::field("cursor", "not a cursor this API returned"))?,
        ),
    };
    let limit: i64 = int_param("limit", p.limit.as_deref())?.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let filter = Filter {
        scope: Some(caller.scope()),
        status,
        tag: labels::filter_text("tag", p.tag.as_deref(), labels::MAX_TAG_CHARS)?,
        name_contains: labels::filter_text("q", p.q.as_deref(), labels::MAX_NAME_CHARS)?,
    };
    let page = state.store.list_experiments(&filter, after, limit).await?;
    Ok(Json(ExperimentPage {
        items: page
            .items
            .into_iter()
            .map(|e| ExperimentView::new(e, false))
            .collect(),
        next_cursor: page.next.map(encode_cursor),
    }))
}

/// One experiment.
#[utoipa::path(get, path = "/experiments/{id}", tag = "experiments",
    params(("id" = uuid::Uuid, Path, description = "Experiment id")),
    responses(
        (status = 200, body = ExperimentView),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ExperimentView>, ApiError> {
    let exp = state
        .store
        .experiment_in(caller.scope(), path_id(id)?)
        .await?;
    Ok(Json(ExperimentView::new(exp, true)))
}

/// Rename or retag (JSON merge patch of `name` and `tags`).
#[utoipa::path(patch, path = "/experiments/{id}", tag = "experiments",
    params(("id" = uuid::Uuid, Path, description = "Experiment id")),
    request_body(content = Object, content_type = "application/merge-patch+json",
        description = "`name` (null removes it) and/or `tags` (null empties them); `application/json` is taken too"),
    responses(
        (status = 200, body = ExperimentView),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid labels; `errors` names each field", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExperimentView>, ApiError> {
    let id = path_id(id)?;
    require_media(
        &headers,
        &["application/merge-patch+json", "application/json"],
    )?;
    let body = body.map_err(body_error)?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::field("", format!("invalid JSON: {e}")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(ApiError::field("", "the body must be a JSON object"));
    };
    let patch = labels::patch(fields)?;
    let exp = state.store.update_labels(caller.scope(), id, patch).await?;
    Ok(Json(ExperimentView::new(exp, false)))
}

/// Delete an ended experiment with its metrics, events and checkpoints.
#[utoipa::path(delete, path = "/experiments/{id}", tag = "experiments",
    params(("id" = uuid::Uuid, Path, description = "Experiment id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Queued or running: cancel it first", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(id)?;
    state
        .store
        .delete_experiment(caller.scope(), id, caller.account_id())
        .await?;
    tracing::info!(%id, by = %caller.0.account, "experiment deleted");
    state.models.forget(id);
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel: a queued experiment at once, a running one at its next batch.
#[utoipa::path(post, path = "/experiments/{id}/cancel", tag = "experiments",
    params(("id" = uuid::Uuid, Path, description = "Experiment id")),
    responses(
        (status = 200, description = "Cancelled, or cancel requested (`cancel_requested`) while running", body = ExperimentView),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already finished", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ExperimentView>, ApiError> {
    let id = path_id(id)?;
    let before = state.store.experiment_in(caller.scope(), id).await?;
    if matches!(before.status, Status::Succeeded | Status::Failed) {
        return Err(ApiError::Conflict(format!(
            "the experiment already ended {}",
            before.status.as_str()
        )));
    }
    let exp = state
        .store
        .cancel_experiment(caller.scope(), id, caller.account_id())
        .await?;
    Ok(Json(ExperimentView::new(exp, false)))
}

const CSV_HEADER: &str = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,test_loss,test_accuracy,train_seconds,images_per_second,learning_rate";

fn csv(rows: &[StoredEpoch]) -> String {
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out = format!("{CSV_HEADER}\n");
    for StoredEpoch { metrics: m, .. } in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            opt(m.val_loss),
            opt(m.val_accuracy),
            opt(m.test_loss),
            opt(m.test_accuracy),
            m.train_seconds,
            m.images_per_second,
            opt(m.learning_rate)
        ));
    }
    out
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MetricsParams {
    /// `json` or `csv`; overrides `Accept` (for a link or a plain `curl`).
    #[param(value_type = Option<String>, pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

/// Per-epoch metrics (JSON, or CSV with `Accept: text/csv` or `?format=csv`).
#[utoipa::path(get, path = "/experiments/{id}/metrics", tag = "experiments",
    params(("id" = uuid::Uuid, Path, description = "Experiment id"), MetricsParams),
    responses(
        (status = 200, description = "One row per finished epoch, with when it was stored (as CSV with `Accept: text/csv` or `?format=csv`)", content(
            (Vec<StoredEpoch> = "application/json"),
            (String = "text/csv"),
        )),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    params: RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let params: MetricsParams = query(params)?;
    let wants_csv = match params.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::field(
                "format",
                format!("{other:?} is not a format: json or csv"),
            ));
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv")),
    };
    state.store.experiment_in(caller.scope(), id).await?;
    let rows = state.store.stored_epochs(id).await?;
    // Caches must key the answer on Accept, which chooses its form.
    let vary = [(header::VARY, "accept")];
    Ok(if wants_csv {
        (
            vary,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv(&rows),
        )
            .into_response()
    } else {
        (vary, Json(rows)).into_response()
    })
}
