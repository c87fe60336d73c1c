//! Decoding a user's image into the u8 planes a model reads: 28x28 grayscale for
//! `POST /predict` ([`decode_to_28x28`]), any size and 1 or 3 channels for uploaded
//! datasets ([`decode_to`]). Both go through one decoder, so an image in a dataset is
//! trusted no more than an image sent for prediction.
//!
//! Any size or colour is accepted within limits: colour is converted to luma exactly as
//! PIL's `convert("L")` does (ITU-R 601-2 weights in fixed point, alpha ignored), or to
//! RGB as PIL's `convert("RGB")` does (gray replicated, alpha dropped, no compositing);
//! 16-bit samples are reduced to 8 bits, and an image of another size is resized with
//! PIL's bilinear filter, each band on its own as PIL does (aspect ratio not preserved).
//! MNIST digits are white on black; images are not inverted.
//!
//! [`probe`] reads only the header (size and whether the image is colour), so a caller
//! holding many images can settle the size and channel count of all of them before
//! decoding any pixels.
//!
//! The bytes come from strangers, so nothing here trusts them. A small file can declare a
//! huge image (a decompression bomb): the header is read first and its dimensions checked
//! against [`MAX_IMAGE_DIMENSION`] before any pixel buffer exists, and the decoders'
//! own allocations are capped at [`MAX_DECODE_BYTES`] (the `image` crate's `Limits`).
//! A decoded image then costs at most that buffer plus one luma plane of
//! `MAX_IMAGE_DIMENSION`² bytes; callers bound how many decodes run at once. A decoder
//! that panics on crafted input fails that image only (see `fuzz/`).

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::resize::Resizer;

/// Largest accepted width or height.
pub const MAX_IMAGE_DIMENSION: u32 = 4096;
/// Decoder memory cap.
const MAX_DECODE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("unsupported image format: send PNG, JPEG or PGM")]
    Unsupported,
    #[error(
        "the image is too large: {0}; at most {MAX_IMAGE_DIMENSION}x{MAX_IMAGE_DIMENSION} pixels and {mib} MiB decoded",
        mib = MAX_DECODE_BYTES >> 20
    )]
    TooLarge(String),
    #[error("the image cannot be decoded: {0}")]
    Corrupt(String),
    #[error("{0} channels requested; 1 (grayscale) or 3 (RGB) are supported")]
    Channels(usize),
}

/// What an image's header says, read without decoding any pixels (see [`probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    /// Whether the image has colour samples (RGB, RGBA, a colour palette, CMYK JPEG);
    /// grayscale with or without alpha is not colour. A PNG palette counts as colour
    /// even when all its entries happen to be gray: deciding that needs the pixels.
    pub colour: bool,
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_DIMENSION);
    limits.max_image_height = Some(MAX_IMAGE_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

fn reader(bytes: &[u8]) -> Result<ImageReader<std::io::Cursor<&[u8]>>, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::Unsupported)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Pnm
    ) {
        return Err(ImageError::Unsupported);
    }
    if format == ImageFormat::Png {
        check_png_palette(bytes)?;
    }
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(limits());
    Ok(reader)
}

/// png 0.18.1 panics on a palette (`PLTE`) whose length is not a multiple of 3, which
/// the PNG format forbids anyway (found by fuzzing): refuse one before decoding. Reads
/// only the chunk headers.
fn check_png_palette(bytes: &[u8]) -> Result<(), ImageError> {
    let mut at = 8usize;
    while let Some(head) = bytes.get(at..at.saturating_add(8)) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if &head[4..] == b"PLTE" && !len.is_multiple_of(3) {
            return Err(ImageError::Corrupt(format!(
                "the PNG palette is {len} bytes long, not a multiple of 3"
            )));
        }
        at = at.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

/// Runs a decoder, turning a panic in it (a bug in a decoder, triggered by crafted input)
/// into an error for this image instead of a dropped request.
fn guarded<T>(decode: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
        Err(ImageError::Corrupt(
            "the decoder failed on this image".into(),
        ))
    })
}

fn decode_error(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Limits(l) => ImageError::TooLarge(l.to_string()),
        other => ImageError::Corrupt(other.to_string()),
    }
}

/// The width and height the image's header declares, read without decoding any pixels.
/// Fails as [`decode_to_28x28`] would for a format it does not take, an unreadable header
/// or dimensions over the limit.
pub fn declared_dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    probe(bytes).map(|info| (info.width, info.height))
}

/// The size and colour of an image, from its header alone (no pixel is decoded). Fails
/// as [`decode_to`] would for a format it does not take, an unreadable header or
/// dimensions over the limit.
pub fn probe(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    let info = guarded(|| {
        let decoder = reader(bytes)?.into_decoder().map_err(decode_error)?;
        let (width, height) = decoder.dimensions();
        Ok(ImageInfo {
            width,
            height,
            colour: decoder.color_type().has_color(),
        })
    })?;
    if info.width > MAX_IMAGE_DIMENSION || info.height > MAX_IMAGE_DIMENSION {
        return Err(ImageError::TooLarge(format!(
            "{}x{} declared",
            info.width, info.height
        )));
    }
    Ok(info)
}

/// Decodes PNG, JPEG or PGM/PNM bytes (format sniffed from the content) to 28x28 u8.
pub fn decode_to_28x28(bytes: &[u8]) -> Result<Vec<u8>, ImageError> {
    decode_to(bytes, 1, 28, 28)
}

/// Decodes PNG, JPEG or PGM/PNM bytes (format sniffed from the content) to `channels`
/// planes of `height x width` u8, channel after channel (CHW). `channels` 1 converts as
/// PIL's `convert("L")`, 3 as `convert("RGB")`; each plane is then resized on its own
/// with PIL's bilinear filter when the image is not already `height x width`.
pub fn decode_to(
    bytes: &[u8],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<u8>, ImageError> {
    if channels != 1 && channels != 3 {
        return Err(ImageError::Channels(channels));
    }
    let img = decode(bytes)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let planes = if channels == 1 {
        to_luma(img)
    } else {
        to_rgb_planes(img)
    };
    if (h, w) == (height, width) {
        return Ok(planes);
    }
    let resizer = Resizer::new(h, w, height, width);
    let mut out = vec![0; channels * resizer.output_len()];
    for (src, dst) in planes
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(resizer.output_len().max(1)))
    {
        resizer.resize(src, dst);
    }
    Ok(out)
}

/// The one decoder behind every public function: format check, limits, panic guard.
fn decode(bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    // `decode` reads the header, checks the declared dimensions and the buffer they need
    // against the limits, and only then allocates.
    let img = guarded(|| reader(bytes)?.decode().map_err(decode_error))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(ImageError::Corrupt("the image has no pixels".into()));
    }
    Ok(img)
}

/// Whether a 28x28 image is dark ink on a light background (as people draw on paper and
/// scanners see it), the opposite of MNIST's and Fashion-MNIST's light-on-black: the mean
/// of its outermost ring of pixels is above mid-grey.
pub fn has_light_background(px: &[u8]) -> bool {
    const N: usize = 28;
    debug_assert_eq!(px.len(), N * N);
    let on_edge = |i: usize| {
        let (row, col) = (i / N, i % N);
        row == 0 || row == N - 1 || col == 0 || col == N - 1
    };
    let (sum, count) = px
        .iter()
        .enumerate()
        .filter(|&(i, _)| on_edge(i))
        .fold((0u32, 0u32), |(s, n), (_, &p)| (s + u32::from(p), n + 1));
    sum > 128 * count
}

/// Turns light-on-dark into dark-on-light and back (`255 - p`).
pub fn invert(px: &mut [u8]) {
    for p in px {
        *p = 255 - *p;
    }
}

/// PIL's `convert("L")` of one 8-bit RGB pixel: ITU-R 601-2 luma in 16-bit fixed point,
/// `(r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16`.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    let [r, g, b] = [r, g, b].map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// PIL's `convert("L")`: `(r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16` on 8-bit
/// samples. 8-bit colour is read in place; anything else is converted to 8-bit RGB first.
fn to_luma(img: DynamicImage) -> Vec<u8> {
    match img {
        DynamicImage::ImageLuma8(g) => g.into_raw(),
        DynamicImage::ImageRgb8(c) => c.pixels().map(|p| luma(p[0], p[1], p[2])).collect(),
        DynamicImage::ImageRgba8(c) => c.pixels().map(|p| luma(p[0], p[1], p[2])).collect(),
        other if !other.color().has_color() => other.to_luma8().into_raw(),
        other => other
            .to_rgb8()
            .pixels()
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
    }
}

/// PIL's `convert("RGB")` as three planes (R, G, B): gray is replicated, alpha dropped.
fn to_rgb_planes(img: DynamicImage) -> Vec<u8> {
    let rgb = match img {
        DynamicImage::ImageRgb8(c) => c,
        other => other.to_rgb8(),
    };
    let n = rgb.width() as usize * rgb.height() as usize;
    let mut out = vec![0; 3 * n];
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (i, p) in rgb.pixels().enumerate() {
        r[i] = p[0];
        g[i] = p[1];
        b[i] = p[2];
    }
    out
}
