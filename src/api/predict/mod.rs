//! `POST /predict`: classify images with an experiment's checkpoint.
//!
//! A request goes through four steps, each in its own module: its images are read and
//! decoded ([`images`]), the checkpoint it names is resolved and its model loaded once
//! and cached ([`models`]), and its images join whatever other requests for the same
//! model arrive at about the same time in one forward pass ([`batch`]). Many small
//! requests then cost about what one large one does. Each request still gets its own
//! answer, or its own error: a bad image is rejected before it reaches a batch.

mod batch;
mod images;
mod models;

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use batch::{BatchConfig, BatchError, BatchStats};
/// What the Open Inference Protocol's endpoints (`api::v2`) share with `/predict`: the
/// decoding of an image file into a model's format, and the inversion of its polarity.
pub(crate) use images::{Target, decode};
pub use models::ModelCache;

use super::auth::{Caller, Limited};
use super::{AppState, error::ApiError};
use crate::store::checkpoints::Which;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Most images in one request.
pub const MAX_IMAGES: usize = 64;

pub fn router() -> Router<AppState> {
    Router::new().route("/predict", post(predict))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PredictParams {
    /// The experiment whose weights answer (required; a missing one is a 422 naming it).
    #[param(required = true, value_type = String, format = Uuid)]
    pub experiment: Option<String>,
    /// `best`, `last`, or an epoch number. Without it, `best`; `last` where the spec's
    /// `early_stopping` has `restore_best: false` (Keras leaves the last weights then).
    #[param(pattern = "^(best|last|[0-9]{1,9})$")]
    pub checkpoint: Option<String>,
    /// How many classes to list in `top_k` (1 to 10, default 3).
    #[param(minimum = 1, maximum = 10)]
    pub top_k: Option<usize>,
    /// `auto` (default): for a model of MNIST or Fashion-MNIST, an image with a light
    /// background (dark ink on paper, as people draw and scan) is inverted to the
    /// dataset's light-on-black first (an uploaded dataset's images are taken as they
    /// come); `true`: always; `false`: never. Each prediction says whether its image was.
    #[param(value_type = Option<String>, pattern = "^(auto|true|false)$")]
    pub invert: Option<String>,
}

/// Whether to invert an image before the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invert {
    Auto,
    Always,
    Never,
}

impl Invert {
    fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v.unwrap_or("auto") {
            "auto" => Ok(Invert::Auto),
            "true" => Ok(Invert::Always),
            "false" => Ok(Invert::Never),
            other => Err(ApiError::field(
                "invert",
                format!("{other:?} is not auto, true or false"),
            )),
        }
    }

    /// Inverts `px` when this says so; whether it did. `auto` decides only for a model of
    /// a built-in dataset (28x28, light on black): an uploaded dataset's polarity is its own.
    pub(crate) fn apply(self, px: &mut [u8], known_polarity: bool) -> bool {
        let yes = match self {
            Invert::Always => true,
            Invert::Never => false,
            Invert::Auto => known_polarity && crate::data::image::has_light_background(px),
        };
        if yes {
            crate::data::image::invert(px);
        }
        yes
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PredictResponse {
    pub experiment: Uuid,
    /// The epoch whose checkpoint answered.
    pub epoch: i32,
    pub predictions: Vec<Prediction>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Prediction {
    /// The multipart file name, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub label: usize,
    /// The class name (digits for MNIST, garments for Fashion-MNIST, an uploaded
    /// dataset's class folder names).
    pub class_name: String,
    /// Whether the image was inverted before the model saw it (see `invert`).
    pub inverted: bool,
    /// Probability of each class, by label.
    pub probabilities: Vec<f32>,
    pub top_k: Vec<Ranked>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Ranked {
    pub label: usize,
    pub class_name: String,
    pub probability: f32,
}

/// An image file, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ImageBytes(pub Vec<u8>);

/// Image parts (any names; each part one image file), for the OpenAPI document.
#[derive(utoipa::ToSchema)]
pub struct ImageParts(pub std::collections::HashMap<String, ImageBytes>);

/// Classify images.
#[utoipa::path(post, path = "/predict", tag = "predict", params(PredictParams),
    request_body(description = "One image (image/png, image/jpeg, image/x-portable-graymap) or multipart/form-data with image parts", content(
        (ImageBytes = "image/png"), (ImageBytes = "image/jpeg"), (ImageBytes = "image/x-portable-graymap"),
        (ImageParts = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = PredictResponse),
        (status = 400, description = "Malformed multipart body", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown experiment or checkpoint", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The experiment has no checkpoint yet, or never will (it ended before its first epoch)", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit; retry after `Retry-After` seconds", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn predict(
    state: State<AppState>,
    caller: Caller,
    p: RawQuery,
    req: Request<Body>,
) -> Response {
    let started = std::time::Instant::now();
    let res = answer(state, caller, p, req).await.into_response();
    crate::telemetry::predict_answered(res.status().as_u16(), started.elapsed());
    res
}

async fn answer(
    State(state): State<AppState>,
    caller: Caller,
    p: RawQuery,
    req: Request<Body>,
) -> Result<Json<PredictResponse>, ApiError> {
    state.auth.limit(Limited::Predict, &caller)?;
    let p: PredictParams = super::input::query(p)?;
    let experiment = p.experiment.as_deref().ok_or_else(|| {
        ApiError::field(
            "experiment",
            "required: the experiment whose weights answer",
        )
    })?;
    let experiment: Uuid = experiment
        .parse()
        .map_err(|_| ApiError::field("experiment", "not an experiment id"))?;
    let which: Which = match p.checkpoint.as_deref() {
        None => Which::Served,
        Some(c) => c
            .parse()
            .map_err(|e: String| ApiError::field("checkpoint", e))?,
    };
    let top_k = p.top_k.unwrap_or(3);
    if !(1..=10).contains(&top_k) {
        return Err(ApiError::field("top_k", "must be between 1 and 10"));
    }
    let invert = Invert::parse(p.invert.as_deref())?;

    // Counted from here: a batch waiting for company waits only while someone is coming.
    let incoming = state.models.incoming();
    let images = images::read_images(req, &state).await?;
    let epoch = state
        .models
        .resolve(&state.store, caller.scope(), experiment, which)
        .await?;
    let served = state.models.get(&state.store, experiment, epoch).await?;
    // The model's own format, which only its checkpoint knows.
    let data = served.predictor.data();
    let target = images::Target {
        channels: data.channels,
        height: data.height,
        width: data.width,
    };
    let mut ready = Vec::with_capacity(images.len());
    for img in images {
        ready.push(img.into_format(images::Target::BUILT_IN, target).await?);
    }
    let mut images = ready;
    // Only the built-in datasets' polarity (light on black) is known.
    let known_polarity = served.predictor.spec().dataset.built_in().is_some();
    let inverted: Vec<bool> = images
        .iter_mut()
        .map(|img| invert.apply(&mut img.pixels, known_polarity))
        .collect();
    let pixels: Vec<u8> = images
        .iter()
        .flat_map(|img| img.pixels.iter().copied())
        .collect();
    let probs = served
        .batcher
        .predict(pixels, incoming)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;

    let predictions = images
        .into_iter()
        .zip(probs)
        .zip(inverted)
        .map(|((img, p), inverted)| {
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let label = order[0];
            Prediction {
                filename: img.name,
                label,
                class_name: data.class_name(label),
                inverted,
                top_k: order
                    .iter()
                    .take(top_k)
                    .map(|&l| Ranked {
                        label: l,
                        class_name: data.class_name(l),
                        probability: p[l],
                    })
                    .collect(),
                probabilities: p,
            }
        })
        .collect();
    Ok(Json(PredictResponse {
        experiment,
        epoch,
        predictions,
    }))
}
