//! Reading a `/predict` body into images of the model's own format: its data's channels
//! (colour stays colour for a model trained on RGB, and is converted to gray as PIL does
//! for a grayscale one) and size (resized with PIL's bilinear filter).
//!
//! The body is one image (`image/png`, `image/jpeg`, `image/x-portable-graymap`) or
//! `multipart/form-data` with one or many image parts. Each image is decoded with bounded
//! memory (see [`crate::data::image`]); an error names the image (`image`, or the part's
//! file name), so a client sending many learns which one is at fault.
//!
//! Decoding is CPU work, and a small file can declare a huge image. A small image (the
//! usual MNIST-sized request: a few hundred bytes, 28x28) decodes in microseconds, less
//! than handing it to a blocking thread costs, so it is decoded in place; anything whose
//! header declares more pixels goes to a blocking thread so the runtime never stalls.
//! One such decode may hold about a hundred MiB (a 4096x4096 image is 64 MiB decoded),
//! and a few kilobytes of PNG can declare that much, so at most one large decode per core
//! runs at once: the others wait their turn. Memory stays bounded however many clients
//! send them, and the CPU would not go faster with more.

use std::sync::{Arc, LazyLock};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use tokio::sync::Semaphore;

use super::{AppState, MAX_BODY_BYTES, MAX_IMAGES};
use crate::api::error::ApiError;
use crate::data::image::{ImageError, declared_dimensions, decode_to};

const IMAGE_TYPES: [&str; 5] = [
    "image/png",
    "image/jpeg",
    "image/x-portable-graymap",
    "image/x-portable-pixmap",
    "image/x-portable-anymap",
];

/// Images with at most this many pixels are decoded on the async runtime.
const INLINE_PIXELS: u64 = 64 * 64;
/// ... and at most this many bytes.
const INLINE_BYTES: usize = 16 * 1024;

/// Large decodes running at once: one per core.
static LARGE_DECODES: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    Arc::new(Semaphore::new(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ))
});

/// One decoded image: its multipart file name, if any, its pixels (CHW) in the format
/// they were decoded to, and the file (to decode it again in another format).
pub struct Image {
    pub name: Option<String>,
    pub pixels: Vec<u8>,
    file: Bytes,
    label: String,
}

/// What a model takes: `channels x height x width` u8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Target {
    /// MNIST's and Fashion-MNIST's format, in which every image is first decoded.
    pub const BUILT_IN: Target = Target {
        channels: 1,
        height: 28,
        width: 28,
    };
}

impl Image {
    /// The image in the format `t` (decoded again unless it is the one it has).
    pub async fn into_format(self, from: Target, t: Target) -> Result<Image, ApiError> {
        if from == t {
            return Ok(self);
        }
        let pixels = decode(self.file.clone(), &self.label, t).await?;
        Ok(Image { pixels, ..self })
    }
}

/// The request's images, in order, decoded to [`Target::BUILT_IN`].
///
/// They are decoded before the experiment is looked up, whatever it is: a bad image is
/// the client's 4xx (named) before anything about the model is known, and a model of
/// the built-in datasets (the usual case) decodes each image once. A model of other
/// data decodes them again in its own format ([`Image::into_format`]).
pub async fn read_images(req: Request<Body>, state: &AppState) -> Result<Vec<Image>, ApiError> {
    let target = Target::BUILT_IN;
    let (ct, mime) = crate::api::input::media_type(req.headers());
    crate::api::input::refuse_declared_over(req.headers(), MAX_BODY_BYTES as u64)?;
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
            let pixels = decode(bytes.clone(), &label, target).await?;
            out.push(Image {
                name,
                pixels,
                file: bytes,
                label,
            });
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
    let pixels = decode(bytes.clone(), "image", target).await?;
    Ok(vec![Image {
        name: None,
        pixels,
        file: bytes,
        label: "image".into(),
    }])
}

/// Decodes one image; `field` names it in errors.
pub async fn decode(bytes: Bytes, field: &str, t: Target) -> Result<Vec<u8>, ApiError> {
    let decoded = if bytes.len() <= INLINE_BYTES {
        // A short file's header is read in place, and rejects most bad images (no known
        // format, an unreadable header, too many pixels) without leaving the runtime.
        let (w, h) = declared_dimensions(&bytes).map_err(|e| image_error(field, e))?;
        if u64::from(w) * u64::from(h) <= INLINE_PIXELS {
            decode_to(&bytes, t.channels, t.height, t.width)
        } else {
            decode_large(bytes, t).await?
        }
    } else {
        decode_large(bytes, t).await?
    };
    decoded.map_err(|e| image_error(field, e))
}

/// Decodes on a blocking thread, once a turn among the [`LARGE_DECODES`] is free. The
/// thread holds the turn: a client that hangs up mid-decode frees it only when the decode
/// (and its memory) is done.
async fn decode_large(bytes: Bytes, t: Target) -> Result<Result<Vec<u8>, ImageError>, ApiError> {
    let turn = LARGE_DECODES
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let decoded = decode_to(&bytes, t.channels, t.height, t.width);
        drop(turn);
        decoded
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))
}

fn image_error(field: &str, e: ImageError) -> ApiError {
    match e {
        ImageError::Unsupported => {
            ApiError::UnsupportedMedia(format!("{field}: not a PNG, JPEG or PGM image"))
        }
        other => ApiError::field(field, other.to_string()),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(MAX_BODY_BYTES)
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}
