//! `/specs`: check a spec without storing anything, its JSON Schema, and the presets.
//!
//! The web app's form validates as the user types through `POST /specs/validate`, which
//! reads a body exactly as `POST /experiments` does ([`submission`]): the same resolved
//! spec and layer table on success, the same 422 naming each field on failure. One
//! reading of a submission means the form can never accept what the queue refuses.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use uuid::Uuid;

use super::auth::Caller;
use super::input::{body_error, require_json};
use super::{AppState, error::ApiError, labels};
use crate::spec::footprint::{Footprint, JobLimits};
use crate::spec::{DataInfo, DataSource, ExperimentSpec, FieldError, Summary};
use crate::store::{Labels, StoreError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/specs/validate", post(validate))
        .route("/specs/schema", get(schema))
        .route("/specs/presets", get(presets))
}

/// A spec that parsed and validated, with its layer table and its data.
pub struct Submitted {
    pub spec: ExperimentSpec,
    pub summary: Summary,
    /// What the data gives the model (shape, class names, training images).
    pub data: DataInfo,
    /// The uploaded dataset it trains on, if any.
    pub dataset_id: Option<Uuid>,
    /// Its estimated peak memory.
    pub footprint: Footprint,
}

impl Submitted {
    /// The resolved spec as stored: presets expanded, every default written out.
    pub fn resolved(&self) -> Result<serde_json::Value, ApiError> {
        serde_json::to_value(&self.spec).map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// Reads a submission's body: a spec, with `name` and `tags` beside its fields, then
/// validates it against its data (an uploaded dataset must be one `caller` may use).
pub async fn submission(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
) -> Result<(Submitted, Labels), ApiError> {
    let (value, labels) = json_with_labels(body)?;
    Ok((check(state, caller, value).await?, labels))
}

/// A JSON object body, with its `name` and `tags` taken out.
pub fn json_with_labels(body: &[u8]) -> Result<(serde_json::Value, Labels), ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::field("", "the body is not UTF-8"))?;
    let mut value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ApiError::field("", format!("invalid JSON: {e}")))?;
    let labels = labels::take(&mut value)?;
    Ok((value, labels))
}

/// Parses and validates one spec (a sweep's child as much as a submission's body).
pub async fn check(
    state: &AppState,
    caller: &Caller,
    value: serde_json::Value,
) -> Result<Submitted, ApiError> {
    let mut spec = crate::spec::from_value(value)?;
    let (data, dataset_id) = data_of(state, caller, &spec).await?;
    let summary = crate::spec::validate_for(&spec, data.shape())?;
    let footprint = admit(&state.job_limits, &spec, &summary, &data)?;
    resolve_warm_start(state, caller, &mut spec, &summary).await?;
    Ok(Submitted {
        spec,
        summary,
        data,
        dataset_id,
        footprint,
    })
}

/// Refuses what a job process could not do within the service's bounds: more memory
/// than its budget, more FLOPs than the cap, a longer time limit than the maximum.
fn admit(
    limits: &JobLimits,
    spec: &ExperimentSpec,
    summary: &Summary,
    data: &DataInfo,
) -> Result<Footprint, ApiError> {
    let mut errors = Vec::new();
    let footprint = crate::spec::footprint::estimate(spec, summary, data);
    if let Some(budget) = limits.memory_bytes
        && let Some((field, why)) = footprint.over(spec, budget)
    {
        errors.push(FieldError::new(field, why));
    }
    if let Some(t) = spec.time_limit {
        let max = limits.max_time_limit_secs;
        if !(t.is_finite() && t > 0.0 && t <= max) {
            errors.push(FieldError::new(
                "time_limit",
                format!(
                    "must be a number of seconds above 0 and at most {max} (this server's maximum)"
                ),
            ));
        }
    }
    let flops = spec.training_flops(summary, data.train_len);
    if let Some(max) = limits.max_flops
        && flops > max
    {
        errors.push(FieldError::new(
            "epochs",
            format!(
                "{} epochs of this model on its training images take {:.3e} FLOPs; a job may \
                 use at most {max:.3e}",
                spec.epochs, flops
            ),
        ));
    }
    if errors.is_empty() {
        Ok(footprint)
    } else {
        Err(crate::spec::SpecErrors(errors).into())
    }
}

/// What a spec's data gives its model, looked up where it lives.
async fn data_of(
    state: &AppState,
    caller: &Caller,
    spec: &ExperimentSpec,
) -> Result<(DataInfo, Option<Uuid>), ApiError> {
    match &spec.dataset.source {
        DataSource::BuiltIn(name) => {
            if let Some(src) = &state.builtin_data
                && !src.download
                && !crate::data::mnist::present(&src.data_dir, *name)
            {
                return Err(ApiError::field(
                    "dataset.name",
                    format!(
                        "this server does not have {0}: its operator has not put {0}'s files \
                         in the data folder (see the book's Docker page); train on another \
                         dataset or upload this one with POST /datasets",
                        name.as_str()
                    ),
                ));
            }
            Ok((name.info(), None))
        }
        DataSource::Uploaded(id) => {
            let d = match state.store.dataset_in(caller.scope(), *id).await {
                Ok(d) => d,
                Err(StoreError::NotFoundThing(_)) => {
                    return Err(ApiError::field(
                        "dataset.id",
                        format!("no dataset {id}: upload one with POST /datasets"),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            let class_names = serde_json::from_value(d.class_names)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok((
                DataInfo {
                    channels: d.channels as usize,
                    height: d.height as usize,
                    width: d.width as usize,
                    class_names,
                    train_len: d.train_samples as usize,
                    test_len: d.test_samples as usize,
                    sha256: Some(d.sha256),
                },
                Some(*id),
            ))
        }
        DataSource::Path(_) => Err(ApiError::field(
            "dataset.path",
            "only `trainyard train` reads local files: upload the data with POST /datasets \
             (or `trainyard datasets upload`) and name it by `id`",
        )),
    }
}

/// Resolves a warm start's checkpoint to the epoch it names now, in an experiment
/// `caller` may use, and checks every tensor of it against the plan: a mismatch is this
/// 422, not a run that fails later.
async fn resolve_warm_start(
    state: &AppState,
    caller: &Caller,
    spec: &mut ExperimentSpec,
    plan: &Summary,
) -> Result<(), ApiError> {
    use crate::spec::CheckpointRef;
    use crate::store::checkpoints::Which;
    let Some(ws) = &mut spec.warm_start else {
        return Ok(());
    };
    let exp = match state
        .store
        .experiment_in(caller.scope(), ws.experiment)
        .await
    {
        Ok(e) => e,
        Err(StoreError::NotFound) => {
            return Err(ApiError::field(
                "warm_start.experiment",
                format!("no experiment {}", ws.experiment),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let which = match ws.checkpoint {
        CheckpointRef::Best => Which::Best,
        CheckpointRef::Last => Which::Last,
        CheckpointRef::Epoch(n) => Which::Epoch(n as i32),
    };
    let Some(epoch) = state.store.resolve_checkpoint(exp.id, which).await? else {
        return Err(ApiError::field(
            "warm_start.checkpoint",
            format!(
                "experiment {} has no such checkpoint: it has stored {} epochs, and keeps the \
                 best and the last (every one with keep_all_checkpoints)",
                exp.id, exp.epochs_done
            ),
        ));
    };
    let tensors = stored_shapes(state, exp.id, epoch).await?;
    let errors = crate::spec::warm_start::check_weights(plan, &tensors);
    if !errors.is_empty() {
        return Err(crate::spec::SpecErrors(errors).into());
    }
    ws.checkpoint = CheckpointRef::Epoch(epoch as u32);
    Ok(())
}

/// Each tensor's name and shape in a stored checkpoint, read from its safetensors header
/// alone (8 bytes of length, then that much JSON): a sweep of warm starts from a 38 MB
/// checkpoint reads kilobytes, not the weights, per child.
async fn stored_shapes(
    state: &AppState,
    id: Uuid,
    epoch: i32,
) -> Result<Vec<(String, Vec<usize>)>, ApiError> {
    /// safetensors' own limit on a header.
    const MAX_HEADER: u64 = 100_000_000;
    #[derive(serde::Deserialize)]
    struct Info {
        shape: Vec<usize>,
    }
    let corrupt = |why: &str| ApiError::Internal(format!("stored checkpoint {id}/{epoch}: {why}"));
    let head = state
        .store
        .checkpoint_weights_range(id, epoch, 0, 8)
        .await?;
    let len = u64::from_le_bytes(
        head.try_into()
            .map_err(|_| corrupt("shorter than 8 bytes"))?,
    );
    if len > MAX_HEADER {
        return Err(corrupt("a header over 100 MB"));
    }
    let header = state
        .store
        .checkpoint_weights_range(id, epoch, 8, len)
        .await?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(&e.to_string()))?;
    map.into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            let info: Info = serde_json::from_value(v).map_err(|e| corrupt(&e.to_string()))?;
            Ok((name, info.shape))
        })
        .collect()
}

/// What `POST /specs/validate` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Validated {
    /// The resolved spec, as `POST /experiments` would store it.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Input shape, each layer's output shape, parameters and FLOPs, and the totals.
    #[schema(value_type = Object)]
    pub summary: Summary,
    /// The memory its job process will need at the peak, by part (an estimate).
    pub footprint: Footprint,
}

/// Check a spec: its resolved form and layer table, or every field at fault.
#[utoipa::path(post, path = "/specs/validate", tag = "specs",
    request_body(content = Object, content_type = "application/json",
        description = "What `POST /experiments` takes; nothing is stored"),
    responses(
        (status = 200, body = Validated),
        (status = 413, description = "Body too large", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid spec; `errors` names each field", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn validate(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Validated>, ApiError> {
    require_json(&headers)?;
    let body = body.map_err(body_error)?;
    let (submitted, _) = submission(&state, &caller, &body).await?;
    Ok(Json(Validated {
        spec: submitted.resolved()?,
        summary: submitted.summary,
        footprint: submitted.footprint,
    }))
}

/// The spec's JSON Schema (draft 2020-12), generated from the types the server parses.
#[utoipa::path(get, path = "/specs/schema", tag = "specs",
    responses((status = 200, description = "A JSON Schema", content_type = "application/schema+json", body = Object)))]
async fn schema() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/schema+json")],
        Json(crate::spec::schema::document()),
    )
}

/// Every preset as a complete spec, by name.
#[utoipa::path(get, path = "/specs/presets", tag = "specs",
    responses((status = 200, description = "Preset name to its resolved spec", body = Object)))]
async fn presets() -> Result<Json<serde_json::Map<String, serde_json::Value>>, ApiError> {
    Ok(Json(crate::spec::presets::resolved_all()?))
}
