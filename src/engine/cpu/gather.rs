//! im2col and its adjoint for small images, 16 output positions per AVX-512 gather.
//!
//! torch-cnn's second convolution reads 6x6 planes into 4x4 outputs: each of a column
//! row's 4 output rows is a copy of 4 floats, and copying them one row at a time took
//! twice as long as the gemm that uses them (75 us against 42 for 16 samples). A row of
//! the column matrix is one gather here, from offsets worked out once per geometry
//! (padding and stride included: lanes outside the image read as zero), and the adjoint
//! one gather, add and scatter. Within one such row every output position reads a
//! different pixel, so the scatter never writes one address twice.

use super::conv::Geom;
use super::skinny;

/// Offsets and masks of one geometry's column rows, per kernel offset `(i, j)` and chunk of
/// 16 output positions.
pub struct Plan {
    g: Geom,
    chunks: usize,
    /// Pixel offsets within a plane, `[(i * kw + j) * chunks + q][lane]`.
    idx: Vec<[i32; 16]>,
    /// Lanes whose pixel lies inside the image.
    valid: Vec<u16>,
    /// Lanes of each chunk that are output positions (the last chunk may be partial).
    lanes: Vec<u16>,
}

impl Plan {
    /// A plan for `g`, when the CPU has AVX-512 and the output rows are short enough for
    /// row copies to lose (under 16 positions).
    pub fn new(g: &Geom) -> Option<Plan> {
        if !skinny::available() || g.ow >= 16 {
            return None;
        }
        let p = g.p();
        let chunks = p.div_ceil(16);
        let (mut idx, mut valid) = (Vec::new(), Vec::new());
        for i in 0..g.kh {
            for j in 0..g.kw {
                for q in 0..chunks {
                    let (mut lane_idx, mut mask) = ([0i32; 16], 0u16);
                    for (l, slot) in lane_idx.iter_mut().enumerate() {
                        let at = 16 * q + l;
                        if at >= p {
                            continue;
                        }
                        let (oy, ox) = (at / g.ow, at % g.ow);
                        let iy = (oy * g.sh + i) as isize - g.pt as isize;
                        let ix = (ox * g.sw + j) as isize - g.pl as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                            *slot = (iy as usize * g.w + ix as usize) as i32;
                            mask |= 1 << l;
                        }
                    }
                    idx.push(lane_idx);
                    valid.push(mask);
                }
            }
        }
        let lanes = (0..chunks)
            .map(|q| {
                let n = (p - 16 * q).min(16);
                ((1u32 << n) - 1) as u16
            })
            .collect();
        Some(Plan {
            g: *g,
            chunks,
            idx,
            valid,
            lanes,
        })
    }

    /// One sample's columns into columns `[off, off + p)` of `cols` (`ld` columns), as
    /// `conv::im2col_at` writes them.
    pub fn im2col(&self, x: &[f32], cols: &mut [f32], ld: usize, off: usize) {
        let g = &self.g;
        assert!(x.len() >= g.in_len() && off + g.p() <= ld && cols.len() >= g.k() * ld);
        // SAFETY: AVX-512 is present (a plan exists); offsets index inside one plane of
        // `x` and the stores stay inside columns [off, off + p) of each row, by the assert.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::im2col(self, x.as_ptr(), cols.as_mut_ptr(), ld, off)
        }
    }

    /// The adjoint of [`Plan::im2col`]: adds each column entry onto its pixel of `dx`.
    pub fn col2im_add(&self, cols: &[f32], dx: &mut [f32], ld: usize, off: usize) {
        let g = &self.g;
        assert!(dx.len() >= g.in_len() && off + g.p() <= ld && cols.len() >= g.k() * ld);
        // SAFETY: as in `im2col`; the scattered lanes of one row are distinct pixels.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::col2im_add(self, cols.as_ptr(), dx.as_mut_ptr(), ld, off)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Plan;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn im2col(pl: &Plan, x: *const f32, cols: *mut f32, ld: usize, off: usize) {
        let g = &pl.g;
        let taps = g.kh * g.kw;
        for ci in 0..g.c {
            // SAFETY: (for the block) see `Plan::im2col`.
            unsafe {
                let plane = x.add(ci * g.h * g.w);
                for t in 0..taps {
                    let row = cols.add((ci * taps + t) * ld + off);
                    for q in 0..pl.chunks {
                        let at = t * pl.chunks + q;
                        let idx = _mm512_loadu_si512(pl.idx[at].as_ptr() as *const _);
                        let v = _mm512_mask_i32gather_ps::<4>(
                            _mm512_setzero_ps(),
                            pl.valid[at],
                            idx,
                            plane,
                        );
                        _mm512_mask_storeu_ps(row.add(16 * q), pl.lanes[q], v);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn col2im_add(pl: &Plan, cols: *const f32, dx: *mut f32, ld: usize, off: usize) {
        let g = &pl.g;
        let taps = g.kh * g.kw;
        for ci in 0..g.c {
            // SAFETY: (for the block) see `Plan::col2im_add`.
            unsafe {
                let plane = dx.add(ci * g.h * g.w);
                for t in 0..taps {
                    let row = cols.add((ci * taps + t) * ld + off);
                    for q in 0..pl.chunks {
                        let at = t * pl.chunks + q;
                        let m = pl.valid[at] & pl.lanes[q];
                        let idx = _mm512_loadu_si512(pl.idx[at].as_ptr() as *const _);
                        let add = _mm512_maskz_loadu_ps(pl.lanes[q], row.add(16 * q));
                        let old = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, idx, plane);
                        _mm512_mask_i32scatter_ps::<4>(plane, m, idx, _mm512_add_ps(old, add));
                    }
                }
            }
        }
    }
}
