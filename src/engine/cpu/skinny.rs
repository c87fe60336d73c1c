//! Hand-written AVX-512 products for the shapes the gemm crate handles worst: a batch of a
//! few dozen rows against a dense layer's weights (keras-cnn's 32 x 9216 @ 9216 x 1024).
//!
//! The gemm crate packs its right operand into panels before every product. For a skinny
//! product that packing is most of the work: the 38 MB weight matrix is read, written
//! and read again to multiply it by 32 rows, and it changes every step, so the packing
//! cannot be kept. These kernels read both operands where they lie, row-major, with
//! the right operand's rows streamed 48 floats (three vectors) at a time: a
//! microtile of up to 8 rows x 48 columns (or 12 x 32) stays in registers while the
//! inner dimension runs, in blocks of [`KC`] so the left operand's block stays in cache.
//!
//! Each element of the result is one task's sum over the inner dimension in order, so
//! the result does not depend on how many threads ran it. The kernels are chosen at run
//! time; without AVX-512 the caller uses the gemm crate.

use std::sync::OnceLock;

/// Inner-dimension block: 32 rows x 256 floats of the left operand is 32 KB.
const KC: usize = 256;
/// Strips of the right operand between the one being used and the one being prefetched:
/// one strip's arithmetic (about 3 us) is too short to cover another's fetch from memory
/// (measured on keras-cnn's dense forward, one thread: 4.7 ms one ahead, 3.75 two ahead).
const PREFETCH_AHEAD: usize = 2;
/// Floats of the right operand that stay in cache through a product (256 KB).
pub const SMALL_B: usize = 64 * 1024;

/// Whether this CPU runs the kernels.
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::env::var_os("TRAINYARD_NO_AVX512").is_none()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// The left operand: base pointer, row stride and column stride, in floats (a transposed
/// matrix is read in place).
#[derive(Clone, Copy)]
pub struct Lhs {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// The right operand, row-major: base pointer and row stride, in floats.
#[derive(Clone, Copy)]
pub struct Rm {
    pub ptr: *const f32,
    pub ld: usize,
}

/// `c[m, n] = beta * c + alpha * a[m, k] @ b[k, n]` on this thread, `b` and `c` row-major
/// (`beta` 0 never reads `c`).
///
/// # Safety
/// [`available`] must be true; every row and column the product touches must lie inside
/// the operands' allocations, and `c` must not overlap `a` or `b` or be written by another
/// thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    a: Lhs,
    b: Rm,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        x86::gemm((m, n, k), a, b, c, ldc, alpha, beta)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ((m, n, k), a, b, c, ldc, alpha, beta);
        unreachable!("AVX-512 kernels on a CPU without them")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{KC, Lhs, PREFETCH_AHEAD, Rm, SMALL_B};

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm(
        (m, n, k): (usize, usize, usize),
        a: Lhs,
        b: Rm,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: inside c by the caller's contract.
                    unsafe {
                        let p = c.add(i * ldc + j);
                        *p = if beta == 0.0 { 0.0 } else { beta * *p };
                    }
                }
            }
            return;
        }
        // Tiles of about 24 accumulators, as wide as the result allows: 24 rows of one
        // vector for up to 16 columns, 12 of two for 32 (a transposed input gradient),
        // 6 of four for 64 (a convolution's filters), 8 of three for wider results.
        let (mr, nv) = match n {
            0..=16 => (24, 1),
            17..=32 => (12, 2),
            33..=64 => (6, 4),
            _ => (8, 3),
        };
        let nr = 16 * nv;
        let tile = |k0: usize,
                    kc: usize,
                    (i0, rows): (usize, usize),
                    (j0, cols): (usize, usize),
                    pf: Option<(usize, usize, usize, usize)>| {
            // SAFETY: the tile lies inside the operands by the caller's contract.
            unsafe {
                let (pf, pf_vecs, pf_rows) = match pf {
                    Some((pk, pj, pcols, pkc)) => {
                        (b.ptr.add(pk * b.ld + pj), pcols.div_ceil(16), pkc.min(kc))
                    }
                    None => (std::ptr::null(), 0, 0),
                };
                let t = Tile {
                    kc,
                    a: a.ptr.add(i0 * a.rs + k0 * a.cs),
                    ars: a.rs,
                    acs: a.cs,
                    b: b.ptr.add(k0 * b.ld + j0),
                    ldb: b.ld,
                    c: c.add(i0 * ldc + j0),
                    ldc,
                    cols,
                    alpha,
                    beta: if k0 == 0 { beta } else { 1.0 },
                    pf,
                    pf_vecs,
                    pf_rows,
                };
                match nv {
                    1 => tile1(rows, t),
                    2 => tile2(rows, t),
                    4 => tile4(rows, t),
                    _ => tile3(rows, t),
                }
            }
        };
        let steps = |len: usize, by: usize| {
            (0..len.div_ceil(by)).map(move |t| (t * by, by.min(len - t * by)))
        };
        if k * n <= SMALL_B {
            // All of `b` stays in cache: one pass down the rows of `c`, each row tile
            // across every column, so `c` (the larger operand, often updated in place) is
            // read and written as contiguous rows. The inner dimension still runs in
            // blocks of [`KC`], as below: every element is summed the same way whichever
            // order runs (a column split across threads can change the order).
            for rt in steps(m, mr) {
                for ct in steps(n, nr) {
                    for (k0, kc) in steps(k, KC) {
                        tile(k0, kc, rt, ct, None);
                    }
                }
            }
            return;
        }
        // `b` is streamed from memory once, strip by strip of `nr` columns and [`KC`]
        // rows, while every row tile of `a` uses the strip. The first row tile of a strip
        // also prefetches a strip [`PREFETCH_AHEAD`] further on: its rows are a page
        // apart, too far apart for the hardware prefetchers, and would otherwise each
        // wait for memory.
        let strips: Vec<(usize, usize, usize, usize)> = steps(k, KC)
            .flat_map(|(k0, kc)| steps(n, nr).map(move |(j0, cols)| (k0, kc, j0, cols)))
            .collect();
        for (s, &(k0, kc, j0, cols)) in strips.iter().enumerate() {
            let next = strips
                .get(s + PREFETCH_AHEAD)
                .map(|&(pk, pkc, pj, pcols)| (pk, pj, pcols, pkc));
            for (i0, rows) in steps(m, mr) {
                tile(
                    k0,
                    kc,
                    (i0, rows),
                    (j0, cols),
                    if i0 == 0 { next } else { None },
                );
            }
        }
    }

    /// One microtile's operands: `cols` (at most the tile's width) columns.
    #[derive(Clone, Copy)]
    struct Tile {
        kc: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        alpha: f32,
        beta: f32,
        /// Prefetch, one row per step: `pf_vecs` vectors of `pf_rows` rows `ldb` apart.
        pf: *const f32,
        pf_vecs: usize,
        pf_rows: usize,
    }

    macro_rules! dispatch {
        ($f:ident, $nv:literal, $rows:expr, $t:expr, [$($r:literal),*]) => {
            match $rows {
                $($r => unsafe { $f::<$r, $nv>($t) },)*
                _ => unreachable!(),
            }
        };
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile3(rows: usize, t: Tile) {
        dispatch!(micro, 3, rows, t, [1, 2, 3, 4, 5, 6, 7, 8])
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile4(rows: usize, t: Tile) {
        dispatch!(micro, 4, rows, t, [1, 2, 3, 4, 5, 6])
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile1(rows: usize, t: Tile) {
        dispatch!(
            micro,
            1,
            rows,
            t,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                24
            ]
        )
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile2(rows: usize, t: Tile) {
        dispatch!(micro, 2, rows, t, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    }

    /// Mask of the lanes of vector `v` that hold one of the first `cols` columns.
    #[inline(always)]
    fn lane_mask(cols: usize, v: usize) -> __mmask16 {
        let n = cols.saturating_sub(16 * v).min(16);
        ((1u32 << n) - 1) as __mmask16
    }

    /// `MR x (16 * NV)` accumulators in registers over `kc` steps of the inner dimension,
    /// then `c = beta * c + alpha * acc` on the first `cols` columns.
    // Index loops over the register tile read more plainly than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn micro<const MR: usize, const NV: usize>(t: Tile) {
        unsafe {
            let mut mask = [0 as __mmask16; NV];
            for (v, m) in mask.iter_mut().enumerate() {
                *m = lane_mask(t.cols, v);
            }
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            let mut a = t.a;
            let mut b = t.b;
            let mut pf = t.pf;
            for p in 0..t.kc {
                if p < t.pf_rows {
                    for v in 0..t.pf_vecs.min(NV) {
                        _mm_prefetch::<_MM_HINT_T0>(pf.add(16 * v) as *const i8);
                    }
                    pf = pf.wrapping_add(t.ldb);
                }
                let mut bv = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    bv[v] = _mm512_maskz_loadu_ps(mask[v], b.wrapping_add(16 * v));
                }
                for r in 0..MR {
                    let av = _mm512_set1_ps(*a.add(r * t.ars));
                    for v in 0..NV {
                        acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                    }
                }
                a = a.wrapping_add(t.acs);
                b = b.wrapping_add(t.ldb);
            }
            let alpha = _mm512_set1_ps(t.alpha);
            let beta = _mm512_set1_ps(t.beta);
            for (r, acc) in acc.iter().enumerate() {
                for v in 0..NV {
                    let p = t.c.wrapping_add(r * t.ldc + 16 * v);
                    let out = if t.beta == 0.0 {
                        _mm512_mul_ps(alpha, acc[v])
                    } else {
                        let old = _mm512_maskz_loadu_ps(mask[v], p);
                        _mm512_fmadd_ps(alpha, acc[v], _mm512_mul_ps(beta, old))
                    };
                    _mm512_mask_storeu_ps(p, mask[v], out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
            }
        }
        out
    }

    #[test]
    fn every_tile_edge_matches_the_naive_product() {
        if !available() {
            eprintln!("no AVX-512 here: nothing to check");
            return;
        }
        // Row counts around the 8- and 12-row tiles, column counts around 16/32/48, inner
        // dimensions around the 256 block.
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 17, 5),
            (8, 48, 256),
            (9, 49, 257),
            (13, 32, 300),
            (25, 31, 40),
            (32, 100, 513),
            (7, 96, 3),
            (30, 10, 70),
            (50, 64, 600),
            (13, 60, 9),
            (300, 16, 5),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive(&a, &b, m, k, n);
            // The left operand as stored, and transposed in memory (read by strides).
            let mut at = vec![0.0; m * k];
            for i in 0..m {
                for p in 0..k {
                    at[p * m + i] = a[i * k + p];
                }
            }
            let lhs = [
                Lhs {
                    ptr: a.as_ptr(),
                    rs: k,
                    cs: 1,
                },
                Lhs {
                    ptr: at.as_ptr(),
                    rs: 1,
                    cs: m,
                },
            ];
            for (lhs, (alpha, beta)) in lhs
                .into_iter()
                .flat_map(|l| [(1.0f32, 0.0f32), (-0.5, 1.0), (2.0, 0.9)].map(|ab| (l, ab)))
            {
                // Padding around c checks that nothing outside the product is written.
                let ldc = n + 3;
                let init: Vec<f32> = (0..m * ldc).map(|i| (i % 7) as f32).collect();
                let mut c = init.clone();
                unsafe {
                    gemm(
                        (m, n, k),
                        lhs,
                        Rm {
                            ptr: b.as_ptr(),
                            ld: n,
                        },
                        c.as_mut_ptr(),
                        ldc,
                        alpha,
                        beta,
                    )
                };
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j] as f64;
                        let old = init[i * ldc + j] as f64;
                        let exp = if j < n {
                            beta as f64 * old + alpha as f64 * want[i * n + j]
                        } else {
                            old
                        };
                        assert!(
                            (got - exp).abs() < 1e-3 * (1.0 + exp.abs()),
                            "{m}x{n}x{k} a{alpha} b{beta} at {i},{j}: {got} vs {exp}"
                        );
                    }
                }
            }
        }
    }
}
