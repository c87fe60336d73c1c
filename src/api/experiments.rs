//! `/experiments`: submit, list, read, cancel, metrics.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{AppState, error::ApiError};
use crate::store::experiments::{Experiment, NewExperiment, Status};
use crate::store::queue::StoredEpoch;

/// Largest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 200;
const MAX_PAGE: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/experiments", post(create).get(list))
        .route("/experiments/{id}", get(show))
        .route("/experiments/{id}/cancel", post(cancel))
        .route("/experiments/{id}/metrics", get(metrics))
}

/// Parses an id from the path: a malformed id is an unknown id.
pub(crate) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("experiment"))
}

/// The experiment id of a path. A segment that does not even decode (percent-encoded
/// bytes that are not UTF-8) names nothing that exists either: 404, as a problem, never
/// axum's plain-text 400.
pub(crate) fn path_id(p: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = p.map_err(|_| ApiError::NotFound("experiment"))?;
    parse_id(&id)
}

/// A query string that does not parse: 422 naming the parameter at fault when the
/// message says which (`limit: invalid digit ...`, ``duplicate field `limit` ``), the
/// whole `query` otherwise.
pub(crate) fn query_error(e: QueryRejection) -> ApiError {
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
fn int_param<T: std::str::FromStr>(field: &str, v: Option<&str>) -> Result<Option<T>, ApiError> {
    v.map(|s| {
        s.trim()
            .parse()
            .map_err(|_| ApiError::field(field, format!("{s:?} is not an integer in range")))
    })
    .transpose()
}

/// A body that could not be read: too large (413) or broken (400).
pub(crate) fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(super::MAX_JSON_BYTES)
    } else {
        ApiError::BadRequest(e.body_text())
    }
}

pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMedia(format!(
            "send the spec as application/json (got {:?})",
            if ct.is_empty() { "no Content-Type" } else { ct }
        )))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// Higher runs first (-100 to 100, default 0).
    #[param(value_type = Option<i32>, minimum = -100, maximum = 100)]
    pub priority: Option<String>,
}

/// Queue an experiment.
#[utoipa::path(post, path = "/experiments", tag = "experiments",
    params(CreateParams, ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = "^[ -~]+$", description = "Retries with the same key and body return the same experiment")),
    request_body(content = Object, content_type = "application/json", description = "An experiment spec (see README): a preset name with overrides, or every field written out",
        example = json!({"preset": "torch-cnn", "epochs": 1, "dataset": {"train_limit": 100, "test_limit": 100}})),
    responses(
        (status = 201, description = "Queued (or, for a repeated Idempotency-Key, the experiment queued then)", body = ExperimentView,
            headers(("Location" = String, description = "The experiment's URL"))),
        (status = 409, description = "Idempotency-Key reused with another body", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid spec; `errors` names each field", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn create(
    State(state): State<AppState>,
    params: Result<Query<CreateParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let Query(params) = params.map_err(query_error)?;
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
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::field("", "the body is not UTF-8"))?;
    let (spec, summary) = crate::spec::parse_and_validate(text)?;
    let resolved = serde_json::to_value(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut hash = Sha256::new();
    hash.update(priority.to_le_bytes());
    hash.update(&body);
    let (exp, created) = state
        .store
        .create_experiment(NewExperiment {
            spec: resolved,
            priority,
            idempotency_key: key,
            request_hash: hash.finalize().to_vec(),
        })
        .await?;
    let location = format!("/experiments/{}", exp.id);
    let mut res = (
        StatusCode::CREATED,
        Json(ExperimentView::new(exp, Some(summary))),
    )
        .into_response();
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

/// An experiment as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExperimentView {
    #[serde(flatten)]
    pub experiment: Experiment,
    /// Shapes, parameters and FLOPs (on submission).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub summary: Option<crate::spec::Summary>,
    pub links: Links,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub curve: String,
    pub metrics: String,
    pub checkpoints: String,
}

impl ExperimentView {
    pub fn new(experiment: Experiment, summary: Option<crate::spec::Summary>) -> Self {
        let base = format!("/experiments/{}", experiment.id);
        ExperimentView {
            links: Links {
                curve: format!("{base}/curve"),
                metrics: format!("{base}/metrics"),
                checkpoints: format!("{base}/checkpoints"),
                this: base,
            },
            experiment,
            summary,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only experiments in this status.
    #[param(value_type = Option<Status>)]
    pub status: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,17}_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExperimentPage {
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
    p: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ExperimentPage>, ApiError> {
    let Query(p) = p.map_err(query_error)?;
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
    let page = state.store.list_experiments(status, after, limit).await?;
    Ok(Json(ExperimentPage {
        items: page
            .items
            .into_iter()
            .map(|e| ExperimentView::new(e, None))
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
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ExperimentView>, ApiError> {
    let exp = state.store.experiment(path_id(id)?).await?;
    Ok(Json(ExperimentView::new(exp, None)))
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
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ExperimentView>, ApiError> {
    let id = path_id(id)?;
    let before = state.store.experiment(id).await?;
    if matches!(before.status, Status::Succeeded | Status::Failed) {
        return Err(ApiError::Conflict(format!(
            "the experiment already ended {}",
            before.status.as_str()
        )));
    }
    let exp = state.store.cancel_experiment(id).await?;
    Ok(Json(ExperimentView::new(exp, None)))
}

const CSV_HEADER: &str = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,test_loss,test_accuracy,train_seconds,images_per_second";

fn csv(rows: &[StoredEpoch]) -> String {
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out = format!("{CSV_HEADER}\n");
    for StoredEpoch { metrics: m, .. } in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            opt(m.val_loss),
            opt(m.val_accuracy),
            opt(m.test_loss),
            opt(m.test_accuracy),
            m.train_seconds,
            m.images_per_second
        ));
    }
    out
}

/// Per-epoch metrics (JSON, or CSV with `Accept: text/csv`).
#[utoipa::path(get, path = "/experiments/{id}/metrics", tag = "experiments",
    params(("id" = uuid::Uuid, Path, description = "Experiment id")),
    responses(
        (status = 200, description = "One row per finished epoch, with when it was stored (as CSV with `Accept: text/csv`)", content(
            (Vec<StoredEpoch> = "application/json"),
            (String = "text/csv"),
        )),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn metrics(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    state.store.experiment(id).await?;
    let rows = state.store.stored_epochs(id).await?;
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    Ok(if wants_csv {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv(&rows),
        )
            .into_response()
    } else {
        Json(rows).into_response()
    })
}
