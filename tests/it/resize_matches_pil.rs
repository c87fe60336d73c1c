//! Checks `trainyard::data::resize` against Pillow's `Image.resize((w, h), Image.BILINEAR)`
//! byte for byte: on the first 64 MNIST training images at several target sizes, and on seeded
//! random images of random sizes. The reference bytes were made by
//! `tests/fixtures/resize/make_fixture.py`; its README names the Pillow version.

use std::path::PathBuf;

use trainyard::data::resize::{Resizer, resize_bilinear_u8};

const COUNT: usize = 64;
const SRC_H: usize = 28;
const SRC_W: usize = 28;
/// MNIST target sizes as (height, width), one fixture file each. 6x20 and 9x36 take Pillow
/// 13's vertical-pass-first path.
const SIZES: [(usize, usize); 11] = [
    (8, 8),
    (14, 14),
    (7, 5),
    (10, 28),
    (28, 10),
    (13, 17),
    (32, 32),
    (56, 40),
    (28, 28),
    (6, 20),
    (9, 36),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/resize")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn mnist_images() -> Vec<u8> {
    let src = fixture("src.u8");
    assert_eq!(
        src.len(),
        COUNT * SRC_H * SRC_W,
        "src.u8 has the wrong length"
    );
    src
}

fn pillow_output(h: usize, w: usize) -> Vec<u8> {
    let expected = fixture(&format!("out_{h}x{w}.u8"));
    assert_eq!(
        expected.len(),
        COUNT * h * w,
        "out_{h}x{w}.u8 has the wrong length"
    );
    expected
}

/// One record of `random_cases.bin`.
struct Case<'a> {
    src_h: usize,
    src_w: usize,
    dst_h: usize,
    dst_w: usize,
    src: &'a [u8],
    pillow: &'a [u8],
}

/// Parses `random_cases.bin`: four little-endian u32 sizes, source bytes, Pillow's bytes.
fn parse_cases(mut data: &[u8]) -> Vec<Case<'_>> {
    let mut cases = Vec::new();
    while !data.is_empty() {
        let (header, rest) = data.split_at(16);
        let size = |i: usize| u32::from_le_bytes(header[4 * i..4 * i + 4].try_into().unwrap());
        let [src_h, src_w, dst_h, dst_w] = [0, 1, 2, 3].map(|i| size(i) as usize);
        let (src, rest) = rest.split_at(src_h * src_w);
        let (pillow, rest) = rest.split_at(dst_h * dst_w);
        cases.push(Case {
            src_h,
            src_w,
            dst_h,
            dst_w,
            src,
            pillow,
        });
        data = rest;
    }
    cases
}

/// Panics naming the first differing pixel, if any. `what` says which image it is.
fn assert_same_image(ours: &[u8], pillow: &[u8], w: usize, what: &str) {
    assert_eq!(ours.len(), pillow.len(), "{what}: output length");
    if let Some(i) = ours.iter().zip(pillow).position(|(a, b)| a != b) {
        panic!(
            "{what} differs first at pixel (row {}, col {}): ours {} vs Pillow {}",
            i / w,
            i % w,
            ours[i],
            pillow[i]
        );
    }
}

#[test]
fn resize_matches_pillow_bilinear_byte_for_byte() {
    let src = mnist_images();
    for (h, w) in SIZES {
        let expected = pillow_output(h, w);
        let images = src
            .chunks_exact(SRC_H * SRC_W)
            .zip(expected.chunks_exact(h * w));
        for (image, (input, pillow)) in images.enumerate() {
            let ours = resize_bilinear_u8(input, SRC_H, SRC_W, h, w);
            assert_same_image(
                &ours,
                pillow,
                w,
                &format!("28x28 -> {h}x{w}, image {image}"),
            );
        }
    }
}

#[test]
fn reused_resizer_matches_pillow_byte_for_byte() {
    let src = mnist_images();
    for (h, w) in SIZES {
        let expected = pillow_output(h, w);
        let resizer = Resizer::new(SRC_H, SRC_W, h, w);
        let mut out = vec![0; resizer.output_len()];
        let images = src
            .chunks_exact(SRC_H * SRC_W)
            .zip(expected.chunks_exact(h * w));
        for (image, (input, pillow)) in images.enumerate() {
            resizer.resize(input, &mut out);
            assert_same_image(&out, pillow, w, &format!("28x28 -> {h}x{w}, image {image}"));
        }
    }
}

#[test]
fn random_sizes_match_pillow_bilinear_byte_for_byte() {
    let data = fixture("random_cases.bin");
    let cases = parse_cases(&data);
    assert_eq!(cases.len(), 120, "random_cases.bin record count");
    for (i, c) in cases.iter().enumerate() {
        let ours = resize_bilinear_u8(c.src, c.src_h, c.src_w, c.dst_h, c.dst_w);
        let what = format!(
            "random case {i} ({}x{} -> {}x{})",
            c.src_h, c.src_w, c.dst_h, c.dst_w
        );
        assert_same_image(&ours, c.pillow, c.dst_w, &what);
    }
}
