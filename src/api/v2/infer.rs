//! One inference: a checked request ([`wire::Request`]) against the model that answers
//! it, and into the same batcher `/predict` uses.
//!
//! Each input form reaches the model the way its data asks:
//! - `UINT8` is raw pixels in the checkpoint's data format (`[N, H, W]` for one channel,
//!   or `[N, C, H, W]`): the batch applies the spec's preprocessing (resize, normalise),
//!   exactly as it does to `/predict`'s decoded images;
//! - `BYTES` is image files, decoded into that format as `/predict` decodes them (colour
//!   kept or converted, resized), and then the same;
//! - `FP32` is already preprocessed (`[N, C, H, W]` of the model's input, after the spec's
//!   resize): it goes to the batch as floats, and the model sees them as they are.
//!
//! `invert` (a request parameter) inverts `UINT8` and `BYTES` images as `/predict`'s
//! `invert` does; it defaults to `auto` for `BYTES` (image files, as `/predict` takes
//! them) and to `false` for `UINT8` (a tensor is the model's input as sent).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde_json::Value;
use uuid::Uuid;

use super::wire::{self, DataType, Elements, INPUT};
use crate::api::AppState;
use crate::api::auth::{Caller, Limited};
use crate::api::error::ApiError;
use crate::api::predict::{self, Invert, MAX_BODY_BYTES, Target};
use crate::store::checkpoints::Which;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Answers an inference request for experiment `id`'s checkpoint `which`.
pub async fn infer(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    which: Which,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.auth.limit(Limited::Predict, caller)?;
    // Counted from here, as /predict counts: a batch waits for company only while
    // someone is coming.
    let incoming = state.models.incoming();
    let body = read_body(headers, body).await?;
    let req = wire::read(headers, body)?;
    let invert = invert(&req.parameters, &req.input)?;

    let epoch = state
        .models
        .resolve(&state.store, caller.scope(), id, which)
        .await?;
    let served = state.models.get(&state.store, id, epoch).await?;
    let p = &served.predictor;
    let data = p.data();
    let known_polarity = p.spec().dataset.built_in().is_some();
    let shape = &req.input.shape;
    let probs = match req.input.data {
        Elements::U8(mut px) => {
            let (c, h, w) = (data.channels, data.height, data.width);
            let fits = match shape.as_slice() {
                [_, sh, sw] => c == 1 && (*sh, *sw) == (h, w),
                [_, sc, sh, sw] => (*sc, *sh, *sw) == (c, h, w),
                _ => false,
            };
            if !fits {
                let want = if c == 1 {
                    format!("[N, {h}, {w}] or [N, 1, {h}, {w}]")
                } else {
                    format!("[N, {c}, {h}, {w}]")
                };
                return Err(bad(format!(
                    "UINT8 `{INPUT}` of this model has the shape {want} (its data's raw pixels), not {shape:?}"
                )));
            }
            for img in px.chunks_mut(c * h * w) {
                invert.apply(img, known_polarity);
            }
            served.batcher.predict(px, incoming).await
        }
        Elements::F32(x) => {
            let [c, h, w] = p.input_shape();
            if shape[1..] != [c, h, w] {
                return Err(bad(format!(
                    "FP32 `{INPUT}` of this model has the shape [N, {c}, {h}, {w}] (preprocessed), not {shape:?}"
                )));
            }
            let probs = served
                .batcher
                .predict_prepared(x, incoming)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            // Finite floats far from any preprocessed image (1e38) can overflow a
            // layer: that is the input's fault, and JSON has no NaN to say it with.
            if probs.iter().flatten().any(|v| !v.is_finite()) {
                return Err(bad(
                    "the model's probabilities for these FP32 inputs are not finite: send preprocessed images (a normalised pixel is within a few units of 0)",
                ));
            }
            Ok(probs)
        }
        Elements::Bytes(files) => {
            let target = Target {
                channels: data.channels,
                height: data.height,
                width: data.width,
            };
            let mut px = Vec::with_capacity(files.len() * p.image_len());
            for (i, file) in files.into_iter().enumerate() {
                let mut img = predict::decode(file, &format!("{INPUT}[{i}]"), target)
                    .await
                    .map_err(|e| bad(e.to_string()))?;
                invert.apply(&mut img, known_polarity);
                px.extend_from_slice(&img);
            }
            served.batcher.predict(px, incoming).await
        }
    }
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(wire::respond(
        id.to_string(),
        epoch,
        req.id,
        &probs,
        p.classes(),
        req.binary_output,
    ))
}

/// The body, up to `/predict`'s limit. A compressed body is refused: the protocol's
/// JSON and binary data come as they are.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ApiError::UnsupportedMedia(format!(
            "Content-Encoding {enc:?} is not supported: send the body uncompressed"
        )));
    }
    crate::api::input::refuse_declared_over(headers, MAX_BODY_BYTES as u64)?;
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))
}

/// The request's `invert`: `auto`, `true` or `false` (or a bool), for images; FP32
/// inputs are past inverting.
fn invert(params: &wire::Parameters, input: &wire::Tensor) -> Result<Invert, ApiError> {
    let datatype = match input.data {
        Elements::U8(_) => DataType::Uint8,
        Elements::F32(_) => DataType::Fp32,
        Elements::Bytes(_) => DataType::Bytes,
    };
    let given = match params.get("invert") {
        None => None,
        Some(Value::Bool(true)) => Some(Invert::Always),
        Some(Value::Bool(false)) => Some(Invert::Never),
        Some(Value::String(s)) if s == "auto" => Some(Invert::Auto),
        Some(Value::String(s)) if s == "true" => Some(Invert::Always),
        Some(Value::String(s)) if s == "false" => Some(Invert::Never),
        Some(other) => {
            return Err(bad(format!("invert is auto, true or false, not {other}")));
        }
    };
    match (datatype, given) {
        (DataType::Fp32, Some(Invert::Auto | Invert::Always)) => Err(bad(
            "invert applies to UINT8 and BYTES images: FP32 inputs are preprocessed already",
        )),
        (DataType::Bytes, None) => Ok(Invert::Auto),
        (_, None) => Ok(Invert::Never),
        (_, Some(i)) => Ok(i),
    }
}
