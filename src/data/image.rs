//! Decoding a user's image into the 28x28 grayscale u8 a model reads.
//!
//! Any size or colour is accepted within limits: colour is converted to luma exactly as
//! PIL's `convert("L")` does (ITU-R 601-2 weights in fixed point, alpha ignored), 16-bit
//! samples are reduced to 8 bits, and an image that is not
//! 28x28 is resized with PIL's bilinear filter (aspect ratio not preserved). MNIST digits
//! are white on black; images are not inverted. Dimensions and decoder memory are capped
//! so a small file that declares a huge image (a decompression bomb) fails fast.

use image::{ImageFormat, ImageReader, Limits};

use super::resize::resize_bilinear_u8;

/// Largest accepted width or height.
pub const MAX_IMAGE_DIMENSION: u32 = 4096;
/// Decoder memory cap.
pub const MAX_DECODE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unsupported image format: send PNG, JPEG or PGM")]
    Unsupported,
    #[error("the image is larger than {MAX_IMAGE_DIMENSION}x{MAX_IMAGE_DIMENSION}")]
    TooLarge,
    #[error("the image cannot be decoded: {0}")]
    Corrupt(String),
}

/// Decodes PNG, JPEG or PGM/PNM bytes (format sniffed from the content) to 28x28 u8.
pub fn decode_to_28x28(bytes: &[u8]) -> Result<Vec<u8>, ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::Unsupported)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Pnm
    ) {
        return Err(ImageError::Unsupported);
    }
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_DIMENSION);
    limits.max_image_height = Some(MAX_IMAGE_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => ImageError::TooLarge,
        other => ImageError::Corrupt(other.to_string()),
    })?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(ImageError::Corrupt("the image is empty".into()));
    }
    let px: Vec<u8> = match img {
        image::DynamicImage::ImageLuma8(g) => g.into_raw(),
        other if !other.color().has_color() => other.to_luma8().into_raw(),
        other => other
            .to_rgb8()
            .pixels()
            .map(|p| {
                let [r, g, b] = p.0.map(u32::from);
                ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
            })
            .collect(),
    };
    Ok(if (w, h) == (28, 28) {
        px
    } else {
        resize_bilinear_u8(&px, h as usize, w as usize, 28, 28)
    })
}
