//! The Open Inference Protocol (KServe v2, Triton's HTTP API): `/v2/...`.
//!
//! Why a second way to predict: `/predict` is trainyard's own API, made for people and
//! the web app (image files in, class names and top-k out). Serving stacks speak the
//! Open Inference Protocol instead: KServe, Triton's clients (`tritonclient`), its load
//! generator (`perf_analyzer`) and the tooling around them send tensors, by a model name
//! and version, as JSON or as raw bytes after a JSON header (the binary tensor data
//! extension, which `tritonclient` uses by default). With these routes a trained
//! experiment is such a model without an adapter in front of it: the model's name is the
//! experiment's id, its versions are the epochs whose checkpoints are stored, its input
//! is `images` and its output `probabilities`.
//!
//! It is `/predict` underneath, not beside it: the same keys and accounts ([`Caller`]:
//! another account's experiment is unknown here too), the same rate limit
//! ([`Limited::Predict`]), the same checkpoint when no version is named
//! ([`Which::Served`]), the same loaded models and the same dynamic batching (the
//! `state.models` cache and its batchers), so a v2 request and a `/predict` request of
//! the same model share forward passes. What differs is only the wire ([`wire`]) and
//! the forms an input may take ([`infer`]): raw pixels, preprocessed floats or image
//! files.
//!
//! Errors are the protocol's `{"error": "..."}`, with the status saying why: 400 for a
//! request that is not right (JSON, datatype, shape, data length, an undecodable image),
//! 404 for an unknown model or version (another account's experiment included), 409 for
//! a model without a checkpoint yet (or ever: it ended before its first epoch), 413, 415
//! and 429 as elsewhere. Every error of the shared layers (keys, rate limits, the model
//! cache) is an RFC 9457 problem there; [`protocol_errors`] rewrites those of these
//! routes into the protocol's form, keeping the status and headers (`WWW-Authenticate`,
//! `Retry-After`). The protocol has no 422: a problem of that status becomes a 400.

mod infer;
pub mod wire;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use uuid::Uuid;

use super::auth::Caller;
use super::input::parse_id;
use super::{AppState, error::ApiError};
use crate::store::checkpoints::Which;

/// The model's platform in its metadata.
pub const PLATFORM: &str = "trainyard_candle";

/// Routes that need a key (or a session), as `/predict` does.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2/models/{experiment}", get(model_metadata))
        .route(
            "/v2/models/{experiment}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{experiment}/ready", get(model_ready))
        .route(
            "/v2/models/{experiment}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{experiment}/infer", post(infer_served))
        .route(
            "/v2/models/{experiment}/versions/{version}/infer",
            post(infer_version),
        )
}

/// Routes anyone may call, as `/healthz` and `/readyz`.
pub fn public_router() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
}

/// The protocol's error (`{"error": "..."}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProtocolError {
    pub error: String,
}

/// Middleware: an RFC 9457 problem from these routes (or the layers before them) becomes
/// the protocol's `{"error": "..."}`, its `detail` the message; the status stays, but a
/// 422 becomes a 400, and so do the headers.
pub async fn protocol_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    if !problem {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // A problem is a short JSON document this process wrote.
    let bytes = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    let error = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            parts
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_string()
        });
    if parts.status == StatusCode::UNPROCESSABLE_ENTITY {
        parts.status = StatusCode::BAD_REQUEST;
    }
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&ProtocolError { error }).expect("an error serializes");
    Response::from_parts(parts, Body::from(body))
}

/// The server's metadata (`$metadata_server_response`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ServerMetadata {
    name: String,
    version: String,
    /// `binary_tensor_data`.
    extensions: Vec<String>,
}

/// Server liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ServerLive {
    live: bool,
}

/// Server readiness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ServerReady {
    ready: bool,
}

/// A model's readiness (`$ready_model_response`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModelReady {
    name: String,
    ready: bool,
}

/// A model's metadata (`$metadata_model_response`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModelMetadata {
    /// The experiment's id.
    name: String,
    /// The epochs whose checkpoints are stored, oldest first.
    versions: Vec<String>,
    platform: String,
    /// `images`, as `UINT8` raw pixels of the data's format (`[-1, H, W]` for one
    /// channel, else `[-1, C, H, W]`). It also takes `FP32` `[-1, C, H', W']` already
    /// preprocessed (the spec's resize and normalisation applied) and `BYTES` `[-1]`
    /// image files.
    inputs: Vec<TensorMetadata>,
    /// `probabilities`, `FP32` `[-1, classes]`.
    outputs: Vec<TensorMetadata>,
}

/// A tensor's metadata (`$metadata_tensor`); -1 is the batch's size.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TensorMetadata {
    name: String,
    datatype: String,
    shape: Vec<i64>,
}

/// An image file's bytes, or a request's JSON header and its binary tensor data, for
/// the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct BinaryBody(pub Vec<u8>);

/// The server: its name, version and the protocol extensions it has.
#[utoipa::path(get, path = "/v2", tag = "v2", operation_id = "v2_server_metadata",
    responses((status = 200, body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "trainyard".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
    })
}

/// The server is live.
#[utoipa::path(get, path = "/v2/health/live", tag = "v2", operation_id = "v2_live",
    responses((status = 200, body = ServerLive)))]
async fn live() -> Json<ServerLive> {
    Json(ServerLive { live: true })
}

/// The server is ready: the database answers (every model with a checkpoint can then be
/// loaded on first use).
#[utoipa::path(get, path = "/v2/health/ready", tag = "v2", operation_id = "v2_ready",
    responses(
        (status = 200, body = ServerReady),
        (status = 503, description = "The database does not answer", body = ProtocolError),
    ))]
async fn ready(State(state): State<AppState>) -> Result<Json<ServerReady>, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    Ok(Json(ServerReady { ready: true }))
}

/// The experiment of a path: a malformed id names nothing.
fn experiment(p: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = p.map_err(|_| ApiError::NotFound("experiment"))?;
    parse_id(&id)
}

/// The experiment and version of a path. A version is an epoch number.
fn experiment_version(
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(Uuid, Which), ApiError> {
    let Path((id, version)) = p.map_err(|_| ApiError::NotFound("experiment"))?;
    let id = parse_id(&id)?;
    let epoch = version
        .parse::<i32>()
        .ok()
        .filter(|n| *n >= 1 && version.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::NotFoundNamed(format!(
                "no version {version:?}: a version is the epoch number (1, 2, ...) of a stored checkpoint"
            ))
        })?;
    Ok((id, Which::Epoch(epoch)))
}

/// A model's metadata: its versions, input and output.
#[utoipa::path(get, path = "/v2/models/{experiment}", tag = "v2", operation_id = "v2_model_metadata",
    params(("experiment" = uuid::Uuid, Path, description = "Experiment id: the model's name")),
    responses(
        (status = 200, body = ModelMetadata),
        (status = 401, description = "No key, or a key that is unknown or revoked (with `WWW-Authenticate`)", body = ProtocolError, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "Unknown experiment", body = ProtocolError),
        (status = 409, description = "The experiment has no checkpoint yet, or never will", body = ProtocolError),
    ))]
async fn model_metadata(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let id = experiment(path)?;
    metadata(&state, &caller, id, Which::Served).await
}

/// A model version's metadata (a version is an epoch with a stored checkpoint).
#[utoipa::path(get, path = "/v2/models/{experiment}/versions/{version}", tag = "v2", operation_id = "v2_version_metadata",
    params(
        ("experiment" = uuid::Uuid, Path, description = "Experiment id: the model's name"),
        ("version" = String, Path, description = "An epoch number with a stored checkpoint"),
    ),
    responses(
        (status = 200, body = ModelMetadata),
        (status = 401, description = "No key, or a key that is unknown or revoked (with `WWW-Authenticate`)", body = ProtocolError, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "Unknown experiment or version", body = ProtocolError),
    ))]
async fn version_metadata(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let (id, which) = experiment_version(path)?;
    metadata(&state, &caller, id, which).await
}

async fn metadata(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    which: Which,
) -> Result<Json<ModelMetadata>, ApiError> {
    let epoch = state
        .models
        .resolve(&state.store, caller.scope(), id, which)
        .await?;
    let served = state.models.get(&state.store, id, epoch).await?;
    let versions = state
        .store
        .checkpoints(id)
        .await?
        .iter()
        .map(|c| c.epoch.to_string())
        .collect();
    let p = &served.predictor;
    let d = p.data();
    let dim = |n: usize| n as i64;
    let mut pixels = vec![-1, dim(d.height), dim(d.width)];
    if d.channels != 1 {
        pixels.insert(1, dim(d.channels));
    }
    Ok(Json(ModelMetadata {
        name: id.to_string(),
        versions,
        platform: PLATFORM.into(),
        inputs: vec![TensorMetadata {
            name: wire::INPUT.into(),
            datatype: "UINT8".into(),
            shape: pixels,
        }],
        outputs: vec![TensorMetadata {
            name: wire::OUTPUT.into(),
            datatype: "FP32".into(),
            shape: vec![-1, dim(p.classes())],
        }],
    }))
}

/// The model is ready: its served checkpoint is loaded.
#[utoipa::path(get, path = "/v2/models/{experiment}/ready", tag = "v2", operation_id = "v2_model_ready",
    params(("experiment" = uuid::Uuid, Path, description = "Experiment id: the model's name")),
    responses(
        (status = 200, body = ModelReady),
        (status = 401, description = "No key, or a key that is unknown or revoked (with `WWW-Authenticate`)", body = ProtocolError, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "Unknown experiment", body = ProtocolError),
        (status = 409, description = "Not ready: the experiment has no checkpoint yet, or never will", body = ProtocolError),
    ))]
async fn model_ready(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelReady>, ApiError> {
    let id = experiment(path)?;
    model_is_ready(&state, &caller, id, Which::Served).await
}

/// The model version is ready: its checkpoint is loaded.
#[utoipa::path(get, path = "/v2/models/{experiment}/versions/{version}/ready", tag = "v2", operation_id = "v2_version_ready",
    params(
        ("experiment" = uuid::Uuid, Path, description = "Experiment id: the model's name"),
        ("version" = String, Path, description = "An epoch number with a stored checkpoint"),
    ),
    responses(
        (status = 200, body = ModelReady),
        (status = 401, description = "No key, or a key that is unknown or revoked (with `WWW-Authenticate`)", body = ProtocolError, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "Unknown experiment or version", body = ProtocolError),
    ))]
async fn version_ready(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ModelReady>, ApiError> {
    let (id, which) = experiment_version(path)?;
    model_is_ready(&state, &caller, id, which).await
}

async fn model_is_ready(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    which: Which,
) -> Result<Json<ModelReady>, ApiError> {
    let epoch = state
        .models
        .resolve(&state.store, caller.scope(), id, which)
        .await?;
    state.models.get(&state.store, id, epoch).await?;
    Ok(Json(ModelReady {
        name: id.to_string(),
        ready: true,
    }))
}

/// Classify images with the experiment's served checkpoint (`best`, or `last` where
/// early stopping keeps the last weights), as `/predict` does without `checkpoint`.
///
/// The input `images` is one of: `UINT8` `[N, H, W]` (or `[N, C, H, W]`) raw pixels of
/// the data's format, preprocessed by the server as the spec says; `FP32` `[N, C, H', W']`
/// already preprocessed; `BYTES` `[N]` PNG, JPEG or PGM files (base64 strings in JSON).
/// N is 1 to 64. The output `probabilities` is `FP32` `[N, classes]`. With
/// `Inference-Header-Content-Length`, the body is the JSON header and then the binary
/// tensor data; the response is binary too when an output's `binary_data` (or the
/// request's `binary_data_output`) says so.
#[utoipa::path(post, path = "/v2/models/{experiment}/infer", tag = "v2", operation_id = "v2_infer",
    params(
        ("experiment" = uuid::Uuid, Path, description = "Experiment id: the model's name"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "The JSON header's length: binary tensor data follows it"),
    ),
    request_body(description = "An inference request: JSON, or its JSON header and binary tensor data", content(
        (wire::InferRequest = "application/json"),
        (BinaryBody = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The probabilities: JSON, or its JSON header and binary data", content(
            (wire::InferResponse = "application/json"),
            (BinaryBody = "application/octet-stream"),
        ), headers(("Inference-Header-Content-Length" = u64, description = "With binary data: the JSON header's length"))),
        (status = 400, description = "Not an inference request this model takes: its JSON, input, datatype, shape or data", body = ProtocolError),
        (status = 401, description = "No key, or a key that is unknown or revoked (with `WWW-Authenticate`)", body = ProtocolError, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "Unknown experiment", body = ProtocolError),
        (status = 409, description = "The experiment has no checkpoint yet, or never will", body = ProtocolError),
        (status = 413, body = ProtocolError),
        (status = 415, description = "A compressed body (Content-Encoding)", body = ProtocolError),
        (status = 429, description = "Over the key's rate limit (shared with /predict); retry after `Retry-After` seconds", body = ProtocolError),
    ))]
async fn infer_served(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let id = experiment(path)?;
    let (parts, body) = req.into_parts();
    infer::infer(&state, &caller, id, Which::Served, &parts.headers, body).await
}

/// Classify images with the checkpoint of one epoch (the version), as
/// `/v2/models/{experiment}/infer` does.
#[utoipa::path(post, path = "/v2/models/{experiment}/versions/{version}/infer", tag = "v2", operation_id = "v2_version_infer",
    params(
        ("experiment" = uuid::Uuid, Path, description = "Experiment id: the model's name"),
        ("version" = String, Path, description = "An epoch number with a stored checkpoint"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "The JSON header's length: binary tensor data follows it"),
    ),
    request_body(description = "An inference request: JSON, or its JSON header and binary tensor data", content(
        (wire::InferRequest = "application/json"),
        (BinaryBody = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The probabilities: JSON, or its JSON header and binary data", content(
            (wire::InferResponse = "application/json"),
            (BinaryBody = "application/octet-stream"),
        ), headers(("Inference-Header-Content-Length" = u64, description = "With binary data: the JSON header's length"))),
        (status = 400, description = "Not an inference request this model takes: its JSON, input, datatype, shape or data", body = ProtocolError),
        (status = 401, description = "No key, or a key that is unknown or revoked (with `WWW-Authenticate`)", body = ProtocolError, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "Unknown experiment or version", body = ProtocolError),
        (status = 413, body = ProtocolError),
        (status = 415, description = "A compressed body (Content-Encoding)", body = ProtocolError),
        (status = 429, description = "Over the key's rate limit (shared with /predict); retry after `Retry-After` seconds", body = ProtocolError),
    ))]
async fn infer_version(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (id, which) = experiment_version(path)?;
    let (parts, body) = req.into_parts();
    infer::infer(&state, &caller, id, which, &parts.headers, body).await
}
