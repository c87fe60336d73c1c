//! Reading a `/predict` body into 28x28 grayscale images.
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

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;

use super::{AppState, MAX_BODY_BYTES, MAX_IMAGES};
use crate::api::error::ApiError;
use crate::data::image::{ImageError, decode_to_28x28};

const IMAGE_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/x-portable-graymap"];

/// Images with at most this many pixels are decoded on the async runtime.
const INLINE_PIXELS: u64 = 64 * 64;
/// ... and at most this many bytes.
const INLINE_BYTES: usize = 16 * 1024;

/// One decoded image: its multipart file name, if any, and 28x28 pixels.
pub type Image = (Option<String>, Vec<u8>);

/// The request's images, in order.
pub async fn read_images(req: Request<Body>, state: &AppState) -> Result<Vec<Image>, ApiError> {
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

/// Whether the image is small enough to decode without leaving the runtime: its header
/// (read without decoding) declares at most [`INLINE_PIXELS`].
fn small(bytes: &[u8]) -> bool {
    if bytes.len() > INLINE_BYTES {
        return false;
    }
    let Ok(reader) = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()
    else {
        return false;
    };
    matches!(reader.into_dimensions(), Ok((w, h)) if u64::from(w) * u64::from(h) <= INLINE_PIXELS)
}

/// Decodes one image; `field` names it in errors.
async fn decode(bytes: Bytes, field: &str) -> Result<Vec<u8>, ApiError> {
    let decoded = if small(&bytes) {
        decode_to_28x28(&bytes)
    } else {
        tokio::task::spawn_blocking(move || decode_to_28x28(&bytes))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    decoded.map_err(|e| image_error(field, e))
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
