//! `/experiments/{id}/checkpoints`: list and download weights (safetensors).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::auth::Caller;
use super::input::{parse_id, path_id};
use super::{AppState, error::ApiError};
use crate::store::checkpoints::{CheckpointInfo, Which};
use crate::store::experiments::Experiment;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/experiments/{id}/checkpoints", get(list))
        .route("/experiments/{id}/checkpoints/{which}", get(download))
}

/// The stored checkpoints (the best and the last epoch, or every epoch when the spec asks).
#[utoipa::path(get, path = "/experiments/{id}/checkpoints", tag = "checkpoints", operation_id = "list_checkpoints",
    params(("id" = uuid::Uuid, Path, description = "Experiment id")),
    responses(
        (status = 200, body = Vec<CheckpointInfo>),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<CheckpointInfo>>, ApiError> {
    let id = path_id(id)?;
    state.store.experiment_in(caller.scope(), id).await?;
    Ok(Json(state.store.checkpoints(id).await?))
}

/// Download a checkpoint's weights: PyTorch state-dict names, spec in the metadata.
#[utoipa::path(get, path = "/experiments/{id}/checkpoints/{which}", tag = "checkpoints",
    params(
        ("id" = uuid::Uuid, Path, description = "Experiment id"),
        ("which" = String, Path, pattern = "^(best|last|[0-9]{1,9})$", description = "`best`, `last` or an epoch number"),
    ),
    responses(
        (status = 200, description = "safetensors file", content_type = "application/octet-stream", body = Vec<u8>,
            headers(
                ("X-Checkpoint-Epoch" = i32, description = "The epoch the weights are from"),
                ("Content-Disposition" = String, description = "`attachment` with a file name"),
            )),
        (status = 404, description = "Unknown experiment, or no checkpoint of that epoch", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The experiment has no checkpoint yet, or never will (it ended before its first epoch)", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn download(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, which)) = path.map_err(|_| ApiError::NotFound("checkpoint"))?;
    let id = parse_id(&id)?;
    let which: Which = which
        .parse()
        .map_err(|_| ApiError::NotFound("checkpoint"))?;
    let exp = state.store.experiment_in(caller.scope(), id).await?;
    let epoch = state
        .store
        .resolve_checkpoint(id, which)
        .await?
        .ok_or_else(|| missing(&exp, which))?;
    let bytes = state.store.checkpoint_weights(id, epoch).await?;
    let name = format!("attachment; filename=\"{id}-epoch-{epoch}.safetensors\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, name),
            (
                header::HeaderName::from_static("x-checkpoint-epoch"),
                epoch.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Why `which` names no stored checkpoint of `exp`, in the same words wherever a
/// checkpoint is asked for (its download, `/predict`).
pub(super) fn missing(exp: &Experiment, which: Which) -> ApiError {
    match which {
        Which::Epoch(n) if exp.epochs_done >= n => ApiError::NotFoundNamed(format!(
            "no checkpoint of epoch {n}: only the best and the last epochs are kept \
             (the spec's keep_all_checkpoints keeps every one)"
        )),
        Which::Epoch(n) => ApiError::NotFoundNamed(format!(
            "no checkpoint of epoch {n}: the experiment has stored {} epochs",
            exp.epochs_done
        )),
        _ if exp.status.is_terminal() => ApiError::Conflict(format!(
            "the experiment has no checkpoint and never will ({})",
            exp.status.as_str()
        )),
        _ => ApiError::Conflict(format!(
            "the experiment has no checkpoint yet ({})",
            exp.status.as_str()
        )),
    }
}
