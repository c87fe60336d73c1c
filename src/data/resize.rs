//! Byte-exact port of Pillow's bilinear resize for 8-bit grayscale images.
//!
//! torchvision's `Resize` on a PIL image calls `Image.resize((w, h), Image.BILINEAR)`, and the
//! torch-cnn preset trains on MNIST digits shrunk that way to 8x8. At that size every pixel is a
//! large share of the input, so a resize that is merely "close" (float bilinear, a different
//! rounding, no antialiasing) feeds the network different data and changes the loss curve we
//! compare against. This module therefore reproduces Pillow's integer arithmetic exactly, not
//! just its idea; `tests/it/resize_matches_pil.rs` checks it byte for byte against Pillow's output.
//!
//! The algorithm follows `ImagingResample` in Pillow's `src/libImaging/Resample.c` for mode "L"
//! with the default box and no `reducing_gap`:
//!
//! - Per axis, `precompute_coeffs` builds a triangle filter (support 1) widened by the
//!   downscale factor, so shrinking averages over every covered input sample (antialiasing).
//!   The taps are computed in `f64`, normalised to sum to one, then rounded to fixed point with
//!   22 fractional bits (`normalize_coeffs_8bpc`).
//! - A horizontal pass (only if the width changes) and a vertical pass (only if the height
//!   changes) each round their result to `u8`, so the intermediate rounding is part of the
//!   result and the pass order matters. Pillow normally runs the horizontal pass first, on just
//!   the rows the vertical pass reads; since Pillow 13.0 it runs the vertical pass first when
//!   the height shrinks by more than twice as many pixels as the width (see [`Resizer::new`]).
//! - Each output sample is `(2^21 + Σ pixel·tap) >> 22`, clamped to `0..=255`.

use std::ops::Range;

/// Fractional bits of the fixed-point taps (Pillow's `PRECISION_BITS`, `32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Half-width of the bilinear (triangle) filter at scale 1.
const BILINEAR_SUPPORT: f64 = 1.0;

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Fixed-point filter taps along one axis: output sample `i` is a weighted sum of
/// `taps(i).1.len()` consecutive input samples starting at `taps(i).0`.
#[derive(Debug, Clone)]
struct AxisTaps {
    /// For each output sample: first input sample and number of taps.
    spans: Vec<(usize, usize)>,
    /// Row-major `spans.len() x stride` weights, zero-padded past each span's length.
    weights: Vec<i32>,
    stride: usize,
}

impl AxisTaps {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
    fn new(in_size: usize, out_size: usize) -> Self {
        if out_size == 0 {
            return Self {
                spans: Vec::new(),
                weights: Vec::new(),
                stride: 0,
            };
        }
        // Pillow takes the box edges as `float`, so the input extent goes through f32 first
        // (exact for any realistic size) before the division in double.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BILINEAR_SUPPORT * filterscale;
        let stride = support.ceil() as usize * 2 + 1;
        // Pillow multiplies by the reciprocal rather than dividing by `filterscale`; the two can
        // differ in the last bit, so keep the multiplication.
        let inv_filterscale = 1.0 / filterscale;

        let mut spans = Vec::with_capacity(out_size);
        let mut weights = vec![0; out_size * stride];
        let mut taps = Vec::with_capacity(stride);
        for (xx, row) in weights.chunks_exact_mut(stride).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero, as does `as`; both ends are then clamped.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let len = end.saturating_sub(first);

            taps.clear();
            taps.extend(
                (first..first + len)
                    .map(|x| bilinear_filter((x as f64 - center + 0.5) * inv_filterscale)),
            );
            let total = taps.iter().fold(0.0, |acc, w| acc + w);
            for (fixed, &w) in row.iter_mut().zip(&taps) {
                *fixed = to_fixed(if total != 0.0 { w / total } else { w });
            }
            spans.push((first, len));
        }
        Self {
            spans,
            weights,
            stride,
        }
    }

    /// First input sample and fixed-point weights for output sample `i`.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (first, len) = self.spans[i];
        (first, &self.weights[i * self.stride..][..len])
    }

    /// Input samples read by any output sample (Pillow's `ybox_first..ybox_last`).
    fn input_range(&self) -> Range<usize> {
        match (self.spans.first(), self.spans.last()) {
            (Some(&(first, _)), Some(&(last, len))) => first..last + len,
            _ => 0..0,
        }
    }
}

/// Rounds a normalised weight to fixed point, half away from zero, then truncates like C's
/// `(int)` cast.
fn to_fixed(k: f64) -> i32 {
    let scaled = k * f64::from(1u32 << PRECISION_BITS);
    if k < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Weighted sum of `pixels` with fixed-point `weights`, rounded and clipped to `u8`.
///
/// Pillow accumulates in a C `int`; an `i64` gives the same result wherever Pillow's sum does
/// not overflow (everything short of millions of taps) and cannot overflow itself.
fn weighted_sum(pixels: impl Iterator<Item = u8>, weights: &[i32]) -> u8 {
    let acc = pixels
        .zip(weights)
        .fold(1i64 << (PRECISION_BITS - 1), |acc, (p, &k)| {
            acc + i64::from(p) * i64::from(k)
        });
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes every `src_w`-wide row of `src` to `taps.spans.len()` samples.
fn horizontal_pass(taps: &AxisTaps, src: &[u8], src_w: usize, out: &mut [u8]) {
    let dst_w = taps.spans.len();
    for (in_row, out_row) in src.chunks_exact(src_w).zip(out.chunks_exact_mut(dst_w)) {
        for (xx, o) in out_row.iter_mut().enumerate() {
            let (first, k) = taps.taps(xx);
            *o = weighted_sum(in_row[first..first + k.len()].iter().copied(), k);
        }
    }
}

/// Resizes the columns of `src`, a `width`-wide image whose row 0 is input row `row_offset`.
fn vertical_pass(taps: &AxisTaps, src: &[u8], width: usize, row_offset: usize, out: &mut [u8]) {
    for (yy, out_row) in out.chunks_exact_mut(width).enumerate() {
        let (first, k) = taps.taps(yy);
        let rows = &src[(first - row_offset) * width..][..k.len() * width];
        for (xx, o) in out_row.iter_mut().enumerate() {
            *o = weighted_sum(rows[xx..].iter().step_by(width).copied(), k);
        }
    }
}

/// Which passes a resize runs, in which order, with their taps.
#[derive(Debug, Clone)]
enum Passes {
    /// Same size: copy.
    Copy,
    /// Only the width changes.
    Horizontal(AxisTaps),
    /// Only the height changes.
    Vertical(AxisTaps),
    /// Pillow's usual order. The horizontal pass resizes only the source `rows` that the
    /// vertical pass reads.
    HorizontalFirst {
        horizontal: AxisTaps,
        vertical: AxisTaps,
        rows: Range<usize>,
    },
    /// Pillow 13's order when the height shrinks by more than twice as many pixels as the width.
    VerticalFirst {
        vertical: AxisTaps,
        horizontal: AxisTaps,
    },
}

/// A precomputed Pillow-exact bilinear resize from `src_h x src_w` to `dst_h x dst_w`.
///
/// Build it once and call [`Resizer::resize`] for every image of a dataset. It holds no
/// mutable state, so one `Resizer` can be shared across threads.
#[derive(Debug, Clone)]
pub struct Resizer {
    src_h: usize,
    src_w: usize,
    dst_h: usize,
    dst_w: usize,
    passes: Passes,
}

impl Resizer {
    /// Precomputes the filter taps for resizing `src_h x src_w` images to `dst_h x dst_w`.
    ///
    /// When both dimensions change, the pass order is Pillow 13's: vertical first if the height
    /// shrinks by more than twice as many pixels as the width, horizontal first otherwise.
    pub fn new(src_h: usize, src_w: usize, dst_h: usize, dst_w: usize) -> Self {
        let passes = match (src_w != dst_w, src_h != dst_h) {
            (false, false) => Passes::Copy,
            (true, false) => Passes::Horizontal(AxisTaps::new(src_w, dst_w)),
            (false, true) => Passes::Vertical(AxisTaps::new(src_h, dst_h)),
            (true, true) => {
                let horizontal = AxisTaps::new(src_w, dst_w);
                let vertical = AxisTaps::new(src_h, dst_h);
                if vertical_first(src_h, src_w, dst_h, dst_w) {
                    Passes::VerticalFirst {
                        vertical,
                        horizontal,
                    }
                } else {
                    let rows = vertical.input_range();
                    Passes::HorizontalFirst {
                        horizontal,
                        vertical,
                        rows,
                    }
                }
            }
        };
        Self {
            src_h,
            src_w,
            dst_h,
            dst_w,
            passes,
        }
    }

    /// Number of bytes [`Resizer::resize`] writes: `dst_h * dst_w`.
    pub fn output_len(&self) -> usize {
        self.dst_h * self.dst_w
    }

    /// Resizes the row-major `src` into `out`. Same size in and out copies. An empty source
    /// (a zero dimension) yields an all-zero output.
    ///
    /// # Panics
    ///
    /// If `src.len() != src_h * src_w` or `out.len() != dst_h * dst_w`.
    pub fn resize(&self, src: &[u8], out: &mut [u8]) {
        assert_eq!(
            src.len(),
            self.src_h * self.src_w,
            "source is not {}x{}",
            self.src_h,
            self.src_w
        );
        assert_eq!(
            out.len(),
            self.output_len(),
            "output buffer is not {}x{}",
            self.dst_h,
            self.dst_w
        );
        if out.is_empty() {
            return;
        }
        if src.is_empty() {
            out.fill(0);
            return;
        }
        match &self.passes {
            Passes::Copy => out.copy_from_slice(src),
            Passes::Horizontal(h) => horizontal_pass(h, src, self.src_w, out),
            Passes::Vertical(v) => vertical_pass(v, src, self.src_w, 0, out),
            Passes::HorizontalFirst {
                horizontal,
                vertical,
                rows,
            } => {
                let src_rows = &src[rows.start * self.src_w..rows.end * self.src_w];
                let mut temp = vec![0; rows.len() * self.dst_w];
                horizontal_pass(horizontal, src_rows, self.src_w, &mut temp);
                vertical_pass(vertical, &temp, self.dst_w, rows.start, out);
            }
            Passes::VerticalFirst {
                vertical,
                horizontal,
            } => {
                let mut temp = vec![0; self.dst_h * self.src_w];
                vertical_pass(vertical, src, self.src_w, 0, &mut temp);
                horizontal_pass(horizontal, &temp, self.src_w, out);
            }
        }
    }
}

/// Whether Pillow (13.0 and later) runs the vertical pass first when both dimensions change:
/// when the height shrinks by more than twice as many pixels as the width does (the width may
/// also grow). Earlier Pillow always ran the horizontal pass first; the two orders agree
/// whenever this is false, which includes every same-factor downscale of a square image.
fn vertical_first(src_h: usize, src_w: usize, dst_h: usize, dst_w: usize) -> bool {
    let shrink_h = src_h as i64 - dst_h as i64;
    let shrink_w = src_w as i64 - dst_w as i64;
    shrink_h >= 0 && shrink_h > 2 * shrink_w
}

/// Resizes a row-major `src_h x src_w` u8 image to `dst_h x dst_w` exactly as Pillow's BILINEAR.
///
/// For many images of one size, build a [`Resizer`] once instead.
///
/// # Panics
///
/// If `src.len() != src_h * src_w`.
pub fn resize_bilinear_u8(
    src: &[u8],
    src_h: usize,
    src_w: usize,
    dst_h: usize,
    dst_w: usize,
) -> Vec<u8> {
    let resizer = Resizer::new(src_h, src_w, dst_h, dst_w);
    let mut out = vec![0; resizer.output_len()];
    resizer.resize(src, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> Vec<u8> {
        (0..h * w).map(|i| (i * 37 % 256) as u8).collect()
    }

    #[test]
    fn same_size_resize_is_identity() {
        for (h, w) in [(1, 1), (3, 5), (28, 28)] {
            let src = ramp(h, w);
            assert_eq!(resize_bilinear_u8(&src, h, w, h, w), src, "{h}x{w}");
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let sizes = [
            (28, 28),
            (8, 8),
            (7, 5),
            (13, 17),
            (56, 40),
            (1, 1),
            (1, 30),
        ];
        for value in [0, 1, 127, 254, 255] {
            for (src_h, src_w) in sizes {
                let src = vec![value; src_h * src_w];
                for (dst_h, dst_w) in sizes {
                    let out = resize_bilinear_u8(&src, src_h, src_w, dst_h, dst_w);
                    assert!(
                        out.iter().all(|&p| p == value),
                        "{value} at {src_h}x{src_w} -> {dst_h}x{dst_w}: {out:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn halving_averages_pairs_rounding_half_up() {
        assert_eq!(resize_bilinear_u8(&[10, 21], 1, 2, 1, 1), [16]);
        assert_eq!(resize_bilinear_u8(&[10, 20], 1, 2, 1, 1), [15]);
    }

    #[test]
    fn resizing_one_axis_leaves_the_other_untouched() {
        let column = resize_bilinear_u8(&[5, 200, 60], 3, 1, 3, 4);
        assert_eq!(column, [5, 5, 5, 5, 200, 200, 200, 200, 60, 60, 60, 60]);
        let row = resize_bilinear_u8(&[5, 200, 60], 1, 3, 2, 3);
        assert_eq!(row, [5, 200, 60, 5, 200, 60]);
    }

    #[test]
    fn vertical_pass_runs_first_only_when_height_shrinks_much_more_than_width() {
        assert!(!vertical_first(28, 28, 8, 8));
        assert!(!vertical_first(28, 28, 13, 17));
        assert!(!vertical_first(28, 28, 32, 20));
        assert!(!vertical_first(28, 28, 8, 18)); // 20 == 2 * 10
        assert!(vertical_first(28, 28, 7, 18)); // 21 > 2 * 10
        assert!(vertical_first(73, 35, 18, 69)); // width grows
    }

    #[test]
    fn empty_sizes_do_not_panic() {
        assert!(resize_bilinear_u8(&[], 0, 0, 0, 0).is_empty());
        assert!(resize_bilinear_u8(&[1, 2], 1, 2, 0, 3).is_empty());
        assert_eq!(resize_bilinear_u8(&[], 0, 4, 2, 2), [0; 4]);
    }

    #[test]
    fn fixed_point_taps_sum_to_one() {
        for (in_size, out_size) in [(28, 8), (28, 56), (5, 7), (17, 13), (1, 9)] {
            let taps = AxisTaps::new(in_size, out_size);
            for i in 0..out_size {
                let sum: i32 = taps.taps(i).1.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= 4,
                    "{in_size}->{out_size} @ {i}"
                );
            }
        }
    }
}
