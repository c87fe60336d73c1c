//! Hostile bodies for `POST /predict`: truncated and corrupt PNG and JPEG, decompression
//! bombs (a few bytes declaring 100000x100000 pixels), empty and gigantic bodies, wrong
//! content types, multipart without an image. Each must get its 4xx problem+json quickly,
//! and the server must never read or allocate much more than the limits allow.
//!
//! Images are read before the experiment is looked up, so the requests name an experiment
//! that does not exist: a bad image is answered by the decoder (413, 415, 422), a good one
//! gets as far as the lookup (404). No model needs training.

use crate::common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use futures::StreamExt;
use serde_json::Value;
use sqlx::PgPool;
use trainyard::api::predict::MAX_BODY_BYTES;
use trainyard::data::image::{ImageError, MAX_IMAGE_DIMENSION, decode_to_28x28};

// ---------------------------------------------------------------- images

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A 28x28 gray gradient.
fn digit() -> image::DynamicImage {
    image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(28, 28, |x, y| {
        image::Luma([(x * 9 + y) as u8])
    }))
}

fn png() -> Vec<u8> {
    encode(digit(), image::ImageFormat::Png)
}

fn jpeg() -> Vec<u8> {
    encode(digit(), image::ImageFormat::Jpeg)
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(kind);
    out.extend(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend(crc.sum().to_be_bytes());
}

/// A well-formed PNG whose header declares `w`x`h` (`color`: 0 gray, 2 RGB, 6 RGBA) and
/// whose data is compressed zeros, a thousandth of their size: a decompression bomb.
/// Within the limits the data is complete and the image decodes to black; beyond them, it
/// stops after 4 MiB (the header alone must stop the decoder).
fn png_declaring(w: u32, h: u32, color: u8, depth: u8) -> Vec<u8> {
    png_cut(w, h, color, depth, 0)
}

/// [`png_declaring`] with the last `cut` bytes of its compressed data gone: the decoder
/// fills almost all of its pixel buffer before it finds out.
fn png_cut(w: u32, h: u32, color: u8, depth: u8, cut: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([depth, color, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // Each row is a filter byte and its samples.
    let channels = [1, 0, 3, 0, 2, 0, 4][color as usize];
    let rows = (1 + (u64::from(w) * channels * u64::from(depth)).div_ceil(8)) * u64::from(h);
    let complete = w <= MAX_IMAGE_DIMENSION && h <= MAX_IMAGE_DIMENSION && rows <= 64 << 20;
    let len = if complete { rows } else { rows.min(4 << 20) };
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; len as usize]).unwrap();
    let data = z.finish().unwrap();
    png_chunk(&mut out, b"IDAT", &data[..data.len() - cut]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A real JPEG whose frame header is rewritten to declare `w`x`h`.
fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let mut j = jpeg();
    let sof = j
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    j
}

// ---------------------------------------------------------------- the decoder alone

#[test]
fn every_truncation_of_a_png_or_jpeg_fails_cleanly_or_decodes() {
    for (name, full) in [("png", png()), ("jpeg", jpeg())] {
        for len in 0..full.len() {
            match decode_to_28x28(&full[..len]) {
                Ok(px) => assert_eq!(px.len(), 784),
                Err(ImageError::Corrupt(_) | ImageError::Unsupported | ImageError::Empty) => {}
                Err(e) => panic!("{name} cut at {len}: {e}"),
            }
        }
        // PNG carries checksums: a cut one never decodes.
        if name == "png" {
            assert!(decode_to_28x28(&full[..full.len() - 12]).is_err());
        }
    }
}

#[test]
fn every_single_byte_corruption_of_a_png_or_jpeg_fails_cleanly_or_decodes() {
    for full in [png(), jpeg()] {
        for at in 0..full.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bad = full.clone();
                bad[at] ^= flip;
                if let Ok(px) = decode_to_28x28(&bad) {
                    assert_eq!(px.len(), 784);
                }
            }
        }
    }
}

#[test]
fn a_bomb_is_refused_from_its_header_before_any_pixel_buffer() {
    let bombs = [
        ("png 100000x100000", png_declaring(100_000, 100_000, 0, 8)),
        ("png 2^31-1 wide", png_declaring(i32::MAX as u32, 1, 2, 8)),
        (
            "png one over the side",
            png_declaring(MAX_IMAGE_DIMENSION + 1, 1, 0, 8),
        ),
        // 4096x4096 RGBA at 16 bits is 128 MiB: within the sides, over the memory cap.
        ("png 128 MiB decoded", png_declaring(4096, 4096, 6, 16)),
        ("jpeg 65500x65500", jpeg_declaring(65_500, 65_500)),
        ("jpeg 5000x10", jpeg_declaring(5000, 10)),
        (
            "pgm 100000x100000",
            b"P5\n100000 100000\n255\n\0\0\0\0".to_vec(),
        ),
    ];
    for (name, bytes) in bombs {
        let started = Instant::now();
        match decode_to_28x28(&bytes) {
            Err(ImageError::TooLarge(_)) => {}
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{name} took {:?}",
            started.elapsed()
        );
    }
}

/// Found by fuzzing (`fuzz/`, target `image`): png 0.18.1 panics when a palette's length
/// is not a multiple of 3. An 8x8 4-bit paletted PNG with a 5-byte palette.
fn png_with_a_ragged_palette() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &[0, 0, 0, 8, 0, 0, 0, 8, 4, 3, 0, 0, 0]);
    png_chunk(&mut out, b"PLTE", &[0, 1, 2, 3, 4]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&[0u8; 8 * 5]).unwrap();
    png_chunk(&mut out, b"IDAT", &z.finish().unwrap());
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn a_png_palette_of_a_ragged_length_is_refused_not_a_panic() {
    match decode_to_28x28(&png_with_a_ragged_palette()) {
        Err(ImageError::Corrupt(reason)) => assert!(reason.contains("palette"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_image_at_the_size_limit_still_decodes() {
    let big = png_declaring(MAX_IMAGE_DIMENSION, 8, 0, 8);
    assert_eq!(decode_to_28x28(&big).unwrap(), vec![0u8; 784]);
}

// ---------------------------------------------------------------- through the API

fn predict_url() -> String {
    format!("/predict?experiment={}", uuid::Uuid::new_v4())
}

/// Sends a request; returns the status, content type, JSON body and how long it took.
async fn send(router: &axum::Router, req: Request<Body>) -> (u16, String, Value, Duration) {
    let started = Instant::now();
    let (status, ct, body) = common::service::oneshot_json(router, req).await;
    (status, ct, body, started.elapsed())
}

fn raw(content_type: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut req = Request::post(predict_url());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.body(Body::from(body)).unwrap()
}

const BOUNDARY: &str = "hostile-boundary-7d1f";

/// A multipart body of `(field name, file name, bytes)` parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Request<Body> {
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        write!(
            body,
            "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{name}\""
        )
        .unwrap();
        if let Some(f) = file {
            write!(body, "; filename=\"{f}\"").unwrap();
        }
        body.extend(b"\r\n\r\n");
        body.extend(*bytes);
        body.extend(b"\r\n");
    }
    write!(body, "--{BOUNDARY}--\r\n").unwrap();
    Request::post(predict_url())
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(body))
        .unwrap()
}

/// Asserts a problem+json answer with `status`, in under a second; returns the body.
fn assert_problem(
    what: &str,
    (status, ct, body, took): (u16, String, Value, Duration),
    expected: u16,
) -> Value {
    assert_eq!(status, expected, "{what}: {body}");
    assert_eq!(ct, "application/problem+json", "{what}");
    assert_eq!(body["status"], expected, "{what}: {body}");
    assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    body
}

#[sqlx::test]
async fn bad_images_get_a_4xx_naming_the_image(pool: PgPool) {
    let app = common::service::oneshot_app(pool).await;
    let cut_png = png()[..40].to_vec();
    let mut corrupt_png = png();
    let n = corrupt_png.len();
    corrupt_png[n / 2..n - 12].fill(0x55);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("truncated png", cut_png, 422),
        ("ragged palette", png_with_a_ragged_palette(), 422),
        ("corrupt png", corrupt_png, 422),
        ("png bomb", png_declaring(100_000, 100_000, 2, 8), 422),
        ("jpeg bomb", jpeg_declaring(65_500, 65_500), 422),
        ("pgm bomb", b"P5 100000 100000 255\n\0".to_vec(), 422),
        ("empty", Vec::new(), 422),
        ("text", b"a digit, honestly".to_vec(), 415),
        ("gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), 415),
    ];
    for (what, bytes, expected) in &cases {
        let answer = send(&app, raw(Some("image/png"), bytes.clone())).await;
        let body = assert_problem(what, answer, *expected);
        if *expected == 422 {
            assert_eq!(body["errors"][0]["field"], "image", "{what}: {body}");
        }
        // The same image as a multipart part is named by its file name.
        let answer = send(&app, multipart(&[("a", Some("x.png"), bytes.as_slice())])).await;
        let body = assert_problem(what, answer, *expected);
        if *expected == 422 {
            assert_eq!(body["errors"][0]["field"], "x.png", "{what}: {body}");
        } else {
            assert!(body["detail"].as_str().unwrap().contains("x.png"), "{body}");
        }
    }
    // A good image gets past the decoder to the experiment lookup.
    let answer = send(&app, raw(Some("image/png"), png())).await;
    assert_problem("a good image", answer, 404);
    // One bad image among good ones fails the request, naming it.
    let good = png();
    let answer = send(
        &app,
        multipart(&[
            ("a", Some("good.png"), good.as_slice()),
            ("b", None, &[]),
            ("c", Some("good2.png"), good.as_slice()),
        ]),
    )
    .await;
    let body = assert_problem("an empty part", answer, 422);
    assert_eq!(body["errors"][0]["field"], "part 2", "{body}");
}

#[sqlx::test]
async fn wrong_content_types_and_malformed_multipart_get_a_4xx(pool: PgPool) {
    let app = common::service::oneshot_app(pool).await;
    let cases = [
        ("no content type", raw(None, png()), 415),
        ("text/plain", raw(Some("text/plain"), png()), 415),
        ("json", raw(Some("application/json"), b"{}".to_vec()), 415),
        ("image/gif", raw(Some("image/gif"), png()), 415),
        (
            "multipart without a boundary",
            raw(Some("multipart/form-data"), png()),
            400,
        ),
        (
            "multipart that is not",
            raw(
                Some(&format!("multipart/form-data; boundary={BOUNDARY}")),
                png(),
            ),
            400,
        ),
        ("multipart with no parts", multipart(&[]), 422),
        (
            "multipart with only a text field",
            multipart(&[("note", None, b"hello".as_slice())]),
            415,
        ),
    ];
    for (what, req, expected) in cases {
        assert_problem(what, send(&app, req).await, expected);
    }
}

/// A body that counts how much of it the server has read.
fn endless(counter: Arc<AtomicUsize>) -> Body {
    let chunk = axum::body::Bytes::from(vec![0u8; 64 * 1024]);
    let stream = futures::stream::repeat_with(move || {
        counter.fetch_add(chunk.len(), Ordering::Relaxed);
        Ok::<_, std::io::Error>(chunk.clone())
    })
    .take(1 << 14); // 1 GiB
    Body::from_stream(stream)
}

#[sqlx::test]
async fn a_gigantic_body_gets_413_after_reading_no_more_than_the_limit(pool: PgPool) {
    let app = common::service::oneshot_app(pool).await;
    for content_type in [
        "image/png".to_string(),
        format!("multipart/form-data; boundary={BOUNDARY}"),
    ] {
        let read = Arc::new(AtomicUsize::new(0));
        let req = Request::post(predict_url())
            .header("content-type", &content_type)
            .body(endless(read.clone()))
            .unwrap();
        let answer = send(&app, req).await;
        assert_problem(&content_type, answer, 413);
        let read = read.load(Ordering::Relaxed);
        assert!(
            read <= MAX_BODY_BYTES + 2 * 64 * 1024,
            "{content_type}: read {read} bytes of a 1 GiB body"
        );
    }
}

#[sqlx::test]
async fn a_body_declaring_too_many_bytes_gets_413_before_any_is_read(pool: PgPool) {
    let app = common::service::oneshot_app(pool).await;
    let read = Arc::new(AtomicUsize::new(0));
    let req = Request::post(predict_url())
        .header("content-type", "image/png")
        .header("content-length", (1u64 << 40).to_string())
        .body(endless(read.clone()))
        .unwrap();
    assert_problem("a terabyte declared", send(&app, req).await, 413);
    assert_eq!(read.load(Ordering::Relaxed), 0);
}

/// Peak resident memory of this process, in bytes (Linux).
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Many clients sending a bomb as large as allowed at once: a 4096x4096 RGB PNG (48 MiB
/// decoded, 50 KiB sent) cut short, so that each decode fills its whole pixel buffer and
/// then fails. They take turns (one decode per core), so the memory they cost together
/// stays bounded.
#[sqlx::test]
async fn concurrent_bombs_decode_in_bounded_memory(pool: PgPool) {
    let app = common::service::oneshot_app(pool).await;
    let bomb = png_cut(4096, 4096, 2, 8, 16);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let clients = 3 * cores + 2;
    // Reset the peak (Linux >= 4.0), then send them all at once.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = peak_rss();
    let started = Instant::now();
    let answers = futures::future::join_all((0..clients).map(|_| {
        let req = raw(Some("image/png"), bomb.clone());
        let app = app.clone();
        async move { send(&app, req).await }
    }))
    .await;
    for a in answers {
        assert_eq!(a.0, 422, "{}", a.2);
        assert_eq!(a.2["errors"][0]["field"], "image", "{}", a.2);
    }
    let grown = peak_rss().saturating_sub(base);
    let per_decode = 64 << 20;
    eprintln!(
        "{clients} concurrent 4096x4096 bombs on {cores} cores: {:?}, peak +{} MiB",
        started.elapsed(),
        grown >> 20
    );
    assert!(
        grown < (cores + 1) * per_decode,
        "{clients} concurrent 4096x4096 decodes on {cores} cores grew the peak by {} MiB",
        grown >> 20
    );
}
