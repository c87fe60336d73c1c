//! `POST /predict`: classify images with an experiment's checkpoint.
//!
//! The body is one image (`image/png`, `image/jpeg`, `image/x-portable-graymap`) or
//! `multipart/form-data` with one or many image parts. Each image is decoded with bounded
//! memory and converted to the model's input as `trainyard predict` does (see
//! [`crate::data::image`]). Loaded models are cached per (experiment, epoch), so the
//! weights are read from the database once; concurrent first requests share that read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::header;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{AppState, error::ApiError};
use crate::data::image::{ImageError, decode_to_28x28};
use crate::engine::infer::Predictor;
use crate::engine::{Checkpoint, device};
use crate::spec::DatasetName;
use crate::store::StoreError;
use crate::store::checkpoints::Which;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Most images in one request.
pub const MAX_IMAGES: usize = 64;
/// Models kept loaded.
const CACHE_SIZE: usize = 16;

pub fn router() -> Router<AppState> {
    Router::new().route("/predict", post(predict))
}

type Slot = Arc<OnceCell<Arc<Mutex<Predictor>>>>;
type Key = (Uuid, i32);

/// Loaded predictors by (experiment, epoch), the oldest loaded evicted first.
#[derive(Default)]
pub struct ModelCache {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    map: HashMap<Key, Slot>,
    order: Vec<Key>,
}

impl ModelCache {
    fn slot(&self, key: Key) -> Slot {
        let mut s = self.slots.lock().unwrap();
        if let Some(slot) = s.map.get(&key) {
            return slot.clone();
        }
        if s.order.len() >= CACHE_SIZE {
            let old = s.order.remove(0);
            s.map.remove(&old);
        }
        s.order.push(key);
        s.map.entry(key).or_default().clone()
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PredictParams {
    /// The experiment whose weights answer.
    pub experiment: Option<String>,
    /// `best` (default), `last`, or an epoch number.
    pub checkpoint: Option<String>,
    /// How many classes to list in `top_k` (1 to 10, default 3).
    pub top_k: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PredictResponse {
    pub experiment: Uuid,
    /// The epoch whose checkpoint answered.
    pub epoch: i32,
    pub predictions: Vec<Prediction>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    /// The multipart file name, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    pub label: usize,
    /// The class name (digits for MNIST, garments for Fashion-MNIST).
    pub class_name: String,
    /// Probability of each class, 0 to 9.
    pub probabilities: Vec<f32>,
    pub top_k: Vec<Ranked>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ranked {
    pub label: usize,
    pub class_name: String,
    pub probability: f32,
}

const FASHION: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn class_name(dataset: DatasetName, label: usize) -> String {
    match dataset {
        DatasetName::Mnist => label.to_string(),
        DatasetName::FashionMnist => FASHION[label].to_string(),
    }
}

const IMAGE_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/x-portable-graymap"];

fn image_error(field: &str, e: ImageError) -> ApiError {
    match e {
        ImageError::Unsupported => {
            ApiError::UnsupportedMedia(format!("{field}: not a PNG, JPEG or PGM image"))
        }
        other => ApiError::field(field, other.to_string()),
    }
}

/// Classify images.
#[utoipa::path(post, path = "/predict", tag = "predict", params(PredictParams),
    request_body(description = "One image (image/png, image/jpeg, image/x-portable-graymap) or multipart/form-data with image parts", content = Vec<u8>),
    responses(
        (status = 200, body = PredictResponse),
        (status = 404, description = "Unknown experiment or checkpoint", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The experiment has no checkpoint yet", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn predict(
    State(state): State<AppState>,
    p: Result<Query<PredictParams>, axum::extract::rejection::QueryRejection>,
    req: Request<Body>,
) -> Result<Json<PredictResponse>, ApiError> {
    let Query(p) = p.map_err(super::experiments::query_error)?;
    let experiment = p.experiment.as_deref().ok_or_else(|| {
        ApiError::field(
            "experiment",
            "required: the experiment whose weights answer",
        )
    })?;
    let experiment: Uuid = experiment
        .parse()
        .map_err(|_| ApiError::field("experiment", "not an experiment id"))?;
    let which: Which = p
        .checkpoint
        .as_deref()
        .unwrap_or("best")
        .parse()
        .map_err(|e: String| ApiError::field("checkpoint", e))?;
    let top_k = p.top_k.unwrap_or(3);
    if !(1..=10).contains(&top_k) {
        return Err(ApiError::field("top_k", "must be between 1 and 10"));
    }

    let images = read_images(req, &state).await?;
    let exp = state.store.experiment(experiment).await?;
    let epoch = state
        .store
        .resolve_checkpoint(experiment, which)
        .await?
        .ok_or_else(|| match which {
            Which::Epoch(n) if exp.epochs_done >= n => {
                ApiError::NotFound("checkpoint (only the best and the last epochs are kept)")
            }
            Which::Epoch(_) => ApiError::NotFound("checkpoint"),
            _ => ApiError::Conflict("the experiment has no checkpoint yet".into()),
        })?;

    let predictor = state
        .models
        .slot((experiment, epoch))
        .get_or_try_init(|| async {
            let bytes = state.store.checkpoint_weights(experiment, epoch).await?;
            let p = tokio::task::spawn_blocking(move || -> Result<Predictor, String> {
                let ck = Checkpoint::from_bytes(&bytes, None).map_err(|e| e.to_string())?;
                let dev =
                    device::select(crate::spec::DeviceSpec::Cpu).map_err(|e| e.to_string())?;
                Predictor::new(&ck, &dev).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .map_err(StoreError::Corrupt)?;
            Ok::<_, StoreError>(Arc::new(Mutex::new(p)))
        })
        .await?
        .clone();

    let dataset = predictor.lock().unwrap().spec().dataset.name;
    let pixels: Vec<u8> = images
        .iter()
        .flat_map(|(_, px)| px.iter().copied())
        .collect();
    let probs = tokio::task::spawn_blocking(move || predictor.lock().unwrap().predict(&pixels))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;

    let predictions = images
        .into_iter()
        .zip(probs)
        .map(|((filename, _), p)| {
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let label = order[0];
            Prediction {
                filename,
                label,
                class_name: class_name(dataset, label),
                top_k: order
                    .iter()
                    .take(top_k)
                    .map(|&l| Ranked {
                        label: l,
                        class_name: class_name(dataset, l),
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

/// The request's images as (file name, 28x28 pixels).
async fn read_images(
    req: Request<Body>,
    state: &AppState,
) -> Result<Vec<(Option<String>, Vec<u8>)>, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim().to_string();
    if mime == "multipart/form-data" {
        let mut mp = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mut out = Vec::new();
        while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
            let name = field.file_name().map(str::to_string);
            let label = name
                .clone()
                .unwrap_or_else(|| format!("part {}", out.len() + 1));
            let bytes = field.bytes().await.map_err(multipart_error)?;
            if out.len() == MAX_IMAGES {
                return Err(ApiError::field(
                    "",
                    format!("at most {MAX_IMAGES} images per request"),
                ));
            }
            out.push((name, decode(bytes, &label).await?));
        }
        if out.is_empty() {
            return Err(ApiError::field("", "the multipart body has no image part"));
        }
        return Ok(out);
    }
    if !IMAGE_TYPES.contains(&mime.as_str()) {
        return Err(ApiError::UnsupportedMedia(format!(
            "send {} or multipart/form-data (got {:?})",
            IMAGE_TYPES.join(", "),
            if ct.is_empty() {
                "no Content-Type"
            } else {
                &ct
            }
        )));
    }
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?;
    if bytes.is_empty() {
        return Err(ApiError::field("", "the body is empty: send an image"));
    }
    Ok(vec![(None, decode(bytes, "image").await?)])
}

/// Decodes one image off the async runtime; `field` names it in errors.
async fn decode(bytes: axum::body::Bytes, field: &str) -> Result<Vec<u8>, ApiError> {
    tokio::task::spawn_blocking(move || decode_to_28x28(&bytes))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| image_error(field, e))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(MAX_BODY_BYTES)
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}
