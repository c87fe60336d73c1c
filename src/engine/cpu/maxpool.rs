//! 2x2 max pooling with stride 2 (keras-cnn's), the common case, with an AVX-512 path.
//!
//! The scalar loop's comparisons go either way at random on real activations, so it spent
//! most of its time on mispredicted branches (about 1 ms of a 15 ms keras-cnn step). The
//! vector path compares 16 windows at once with masks and blends, making the same choices:
//! the first maximum in row-major order, a NaN winning over numbers.

use rayon::prelude::*;

use super::layers::Pool;
use super::skinny;

/// Whether `p` is the 2x2, stride-2 window this module pools.
pub fn is_2x2(p: &Pool) -> bool {
    (p.kh, p.kw, p.sh, p.sw) == (2, 2, 2, 2)
}

/// Max pooling over 2x2 windows with stride 2; `arg` receives each output's source index
/// within its plane.
pub fn max_pool_2x2(p: &Pool, x: &[f32], y: &mut [f32], arg: &mut [u32]) {
    let (hw, ohw) = (p.h * p.w, p.oh * p.ow);
    y.par_chunks_mut(ohw)
        .zip(arg.par_chunks_mut(ohw))
        .zip(x.par_chunks(hw))
        .for_each(|((y, arg), x)| plane(p, x, y, arg));
}

/// [`max_pool_2x2`] of one sample's planes on this thread (after a convolution wrote
/// them, while they are in cache).
pub fn planes_2x2(p: &Pool, x: &[f32], y: &mut [f32], arg: &mut [u32]) {
    let (hw, ohw) = (p.h * p.w, p.oh * p.ow);
    for ((y, arg), x) in y
        .chunks_mut(ohw)
        .zip(arg.chunks_mut(ohw))
        .zip(x.chunks(hw))
        .take(p.c)
    {
        plane(p, x, y, arg);
    }
}

/// One plane.
fn plane(p: &Pool, x: &[f32], y: &mut [f32], arg: &mut [u32]) {
    let simd = skinny::available();
    for oy in 0..p.oh {
        let r0 = 2 * oy * p.w;
        let out = oy * p.ow..(oy + 1) * p.ow;
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX-512 is present; the row reads stay inside the plane (rows 2oy
            // and 2oy+1 exist, and 2 * ow <= w).
            unsafe { x86::row(x, r0, p.w, &mut y[out.clone()], &mut arg[out]) };
            continue;
        }
        let _ = simd;
        row_scalar(x, r0, p.w, &mut y[out.clone()], &mut arg[out]);
    }
}

/// One output row from input rows starting at `r0` and `r0 + w`.
fn row_scalar(x: &[f32], r0: usize, w: usize, y: &mut [f32], arg: &mut [u32]) {
    let r1 = r0 + w;
    for (ox, (y, arg)) in y.iter_mut().zip(arg.iter_mut()).enumerate() {
        let c = 2 * ox;
        let mut best = r0 + c;
        let mut max = x[best];
        for at in [r0 + c + 1, r1 + c, r1 + c + 1] {
            let v = x[at];
            if v > max || v.is_nan() && !max.is_nan() {
                max = v;
                best = at;
            }
        }
        *y = max;
        *arg = best as u32;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::row_scalar`], 16 windows at a time.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row(x: &[f32], r0: usize, w: usize, y: &mut [f32], arg: &mut [u32]) {
        let ow = y.len();
        assert!(r0 + w + 2 * ow <= x.len() && arg.len() == ow);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        let lanes = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mut ox = 0;
        while ox < ow {
            let cnt = (ow - ox).min(16);
            let m_out = ((1u32 << cnt) - 1) as __mmask16;
            // 2 * cnt input floats per row, in two vectors.
            let lo = (2 * cnt).min(16);
            let m_lo = ((1u32 << lo) - 1) as __mmask16;
            let m_hi = ((1u32 << (2 * cnt - lo)) - 1) as __mmask16;
            // SAFETY: the masked loads read only 2 * cnt floats of each row, inside `x` by
            // the assert above; the stores write cnt outputs.
            unsafe {
                let p0 = x.as_ptr().add(r0 + 2 * ox);
                let p1 = p0.add(w);
                let (a0, a1) = (
                    _mm512_maskz_loadu_ps(m_lo, p0),
                    _mm512_maskz_loadu_ps(m_hi, p0.wrapping_add(16)),
                );
                let (b0, b1) = (
                    _mm512_maskz_loadu_ps(m_lo, p1),
                    _mm512_maskz_loadu_ps(m_hi, p1.wrapping_add(16)),
                );
                // Window order: top-left, top-right, bottom-left, bottom-right.
                let vals = [
                    _mm512_permutex2var_ps(a0, even, a1),
                    _mm512_permutex2var_ps(a0, odd, a1),
                    _mm512_permutex2var_ps(b0, even, b1),
                    _mm512_permutex2var_ps(b0, odd, b1),
                ];
                let base = _mm512_add_epi32(_mm512_set1_epi32((r0 + 2 * ox) as i32), lanes);
                let offs = [0, 1, w as i32, w as i32 + 1];
                let mut max = vals[0];
                let mut best = base;
                for (v, off) in vals.into_iter().zip(offs).skip(1) {
                    let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, max);
                    let v_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    let max_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(max, max);
                    let take = gt | (v_nan & !max_nan);
                    max = _mm512_mask_blend_ps(take, max, v);
                    best = _mm512_mask_blend_epi32(
                        take,
                        best,
                        _mm512_add_epi32(base, _mm512_set1_epi32(off)),
                    );
                }
                _mm512_mask_storeu_ps(y.as_mut_ptr().add(ox), m_out, max);
                _mm512_mask_storeu_epi32(arg.as_mut_ptr().add(ox) as *mut i32, m_out, best);
            }
            ox += cnt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_path_chooses_as_the_scalar_loop_does() {
        // Ties, NaNs (first, later, several) and widths around 16 outputs, odd widths.
        for (h, w) in [(4, 4), (24, 24), (6, 35), (2, 64), (5, 33)] {
            let (oh, ow) = (h / 2, w / 2);
            let p = Pool {
                c: 3,
                h,
                w,
                kh: 2,
                kw: 2,
                sh: 2,
                sw: 2,
                oh,
                ow,
            };
            let x: Vec<f32> = (0..3 * h * w)
                .map(|i| match i % 11 {
                    3 => f32::NAN,
                    5 | 6 => 1.0,
                    _ => ((i * 37 % 17) as f32 - 8.0) * 0.5,
                })
                .collect();
            let (mut y, mut arg) = (vec![0.0; 3 * oh * ow], vec![0u32; 3 * oh * ow]);
            max_pool_2x2(&p, &x, &mut y, &mut arg);
            for c in 0..3 {
                let plane = &x[c * h * w..(c + 1) * h * w];
                for oy in 0..oh {
                    let (mut ys, mut args) = (vec![0.0; ow], vec![0u32; ow]);
                    row_scalar(plane, 2 * oy * w, w, &mut ys, &mut args);
                    let at = c * oh * ow + oy * ow;
                    assert_eq!(&arg[at..at + ow], &args[..], "{h}x{w} c{c} row {oy}");
                    for (a, b) in y[at..at + ow].iter().zip(&ys) {
                        assert!(a == b || a.is_nan() && b.is_nan());
                    }
                }
            }
        }
    }
}
