//! im2col and its adjoint for small images, 16 output positions per AVX-512 gather.
//!
//! torch-cnn's second convolution reads 6x6 planes into 4x4 outputs: each of a column
//! row's 4 output rows is a copy of 4 floats, and copying them one row at a time took
//! twice as long as the gemm that uses them (75 us against 42 for 16 samples). A row of
//! the column matrix is one gather here, from offsets worked out once per geometry
//! (padding and stride included: lanes outside the image read as zero), and the adjoint
//! one gather, add and scatter. Within one such row every output position reads a
//! different pixel, so the scatter never writes one address twice.
//!
//! Planes of at most 64 pixels whose outputs fit one vector (torch-cnn's) do better still:
//! the plane is loaded into up to four registers, and each row is one or two permutes
//! from them; the adjoint accumulates the plane in registers by permutes and masked adds
//! and stores it once. Scatters are slow on some CPUs (on the AMD EPYC here, 39 us for
//! 16 samples' adjoint against 42 us for the gemm beside it). Both orders of addition
//! are the row copies' order, so every path gives the same bits.

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
    /// Planes of at most 64 pixels whose outputs fit one vector (torch-cnn's 6x6 into
    /// 4x4): the plane is held in up to four registers and rows are moved by permutes
    /// instead of gathers and scatters. Per tap: for each of the plane's registers, the
    /// output lane each of its lanes takes (`inv`) and which of its lanes take one.
    regs: Option<Regs>,
}

/// See [`Plan::regs`].
struct Regs {
    n: usize,
    inv: Vec<[[i32; 16]; 4]>,
    inv_mask: Vec<[u16; 4]>,
    /// Lanes of each tap's row that come from the plane's upper 32 pixels.
    upper: Vec<u16>,
}

impl Plan {
    /// A plan for `g`, when the CPU has AVX-512 and the output rows are short enough for
    /// row copies to lose (under 16 positions).
    pub fn new(g: &Geom) -> Option<Plan> {
        // Offsets are i32 lanes: planes past that (far beyond the spec's limits) copy rows.
        if !skinny::available() || g.ow >= 16 || g.h * g.w > i32::MAX as usize {
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
        let regs = (chunks == 1 && g.h * g.w <= 64).then(|| {
            let n = (g.h * g.w).div_ceil(16);
            let taps = g.kh * g.kw;
            let (mut inv, mut inv_mask, mut upper) =
                (vec![[[0; 16]; 4]; taps], vec![[0; 4]; taps], vec![0; taps]);
            for t in 0..taps {
                for (l, &px) in idx[t].iter().enumerate() {
                    if valid[t] >> l & 1 == 1 {
                        let px = px as usize;
                        inv[t][px / 16][px % 16] = l as i32;
                        inv_mask[t][px / 16] |= 1 << (px % 16);
                        if px >= 32 {
                            upper[t] |= 1 << l;
                        }
                    }
                }
            }
            Regs {
                n,
                inv,
                inv_mask,
                upper,
            }
        });
        Some(Plan {
            g: *g,
            chunks,
            idx,
            valid,
            lanes,
            regs,
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

    /// The plane's pixels `[16 r, 16 r + 16)` that exist, as a load mask.
    fn plane_mask(pixels: usize, r: usize) -> __mmask16 {
        let n = pixels.saturating_sub(16 * r).min(16);
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn load_plane(p: *const f32, pixels: usize, n: usize) -> [__m512; 4] {
        let mut r = [_mm512_setzero_ps(); 4];
        for (i, r) in r.iter_mut().enumerate().take(n) {
            // SAFETY: masked to the plane's pixels.
            *r = unsafe { _mm512_maskz_loadu_ps(plane_mask(pixels, i), p.add(16 * i)) };
        }
        r
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn im2col(pl: &Plan, x: *const f32, cols: *mut f32, ld: usize, off: usize) {
        let g = &pl.g;
        let taps = g.kh * g.kw;
        if let Some(rg) = &pl.regs {
            let pixels = g.h * g.w;
            for ci in 0..g.c {
                // SAFETY: as below.
                unsafe {
                    let r = load_plane(x.add(ci * pixels), pixels, rg.n);
                    for t in 0..taps {
                        let idx = _mm512_loadu_si512(pl.idx[t].as_ptr() as *const _);
                        let lo = _mm512_permutex2var_ps(r[0], idx, r[1]);
                        let v = if rg.n > 2 {
                            let hi = _mm512_permutex2var_ps(r[2], idx, r[3]);
                            _mm512_mask_blend_ps(rg.upper[t], lo, hi)
                        } else {
                            lo
                        };
                        let v = _mm512_maskz_mov_ps(pl.valid[t], v);
                        let row = cols.add((ci * taps + t) * ld + off);
                        _mm512_mask_storeu_ps(row, pl.lanes[0], v);
                    }
                }
            }
            return;
        }
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
        if let Some(rg) = &pl.regs {
            let pixels = g.h * g.w;
            for ci in 0..g.c {
                // SAFETY: masked loads and stores of the plane's pixels and the row's lanes.
                unsafe {
                    let plane = dx.add(ci * pixels);
                    let mut acc = load_plane(plane, pixels, rg.n);
                    for t in 0..taps {
                        let row = cols.add((ci * taps + t) * ld + off);
                        let v = _mm512_maskz_loadu_ps(pl.lanes[0], row);
                        for (r, acc) in acc.iter_mut().enumerate().take(rg.n) {
                            let m = rg.inv_mask[t][r];
                            if m != 0 {
                                let inv = _mm512_loadu_si512(rg.inv[t][r].as_ptr() as *const _);
                                let moved = _mm512_permutexvar_ps(inv, v);
                                *acc = _mm512_mask_add_ps(*acc, m, *acc, moved);
                            }
                        }
                    }
                    for (r, acc) in acc.iter().enumerate().take(rg.n) {
                        _mm512_mask_storeu_ps(plane.add(16 * r), plane_mask(pixels, r), *acc);
                    }
                }
            }
            return;
        }
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
