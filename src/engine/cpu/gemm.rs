//! Row-major matrix products on the `gemm` crate (the same kernels Candle's CPU matmul
//! uses, with their AVX-512 variants), without Candle's per-call overhead: no allocation,
//! no layout checks, and accumulation into the destination when asked.
//!
//! Every matrix is a dense row-major slice; a transposed operand is described by its
//! strides, never copied.

use gemm::Parallelism;

use super::skinny;
use rayon::prelude::*;

/// An operand: `rows x cols` as stored, read transposed when `t` is set.
#[derive(Clone, Copy)]
pub struct M<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub t: bool,
}

impl<'a> M<'a> {
    pub fn n(data: &'a [f32], rows: usize, cols: usize) -> Self {
        M {
            data,
            rows,
            cols,
            t: false,
        }
    }
    pub fn t(data: &'a [f32], rows: usize, cols: usize) -> Self {
        M {
            data,
            rows,
            cols,
            t: true,
        }
    }
    /// Logical shape (after the transpose).
    fn shape(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// (column stride, row stride) of the logical matrix.
    fn strides(&self) -> (isize, isize) {
        if self.t {
            (self.cols as isize, 1)
        } else {
            (1, self.cols as isize)
        }
    }
}

/// How many threads a product may use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Threads {
    /// This thread only (the caller already runs in parallel).
    One,
    /// The rayon pool.
    All,
}

/// `dst = beta * dst + alpha * a @ b` where `dst` is `m x n` row-major (`beta` 0 or 1
/// ignores or keeps `dst`).
pub fn matmul(dst: &mut [f32], a: M, b: M, alpha: f32, beta: f32, threads: Threads) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "inner dimensions differ");
    assert!(dst.len() >= m * n, "destination too small");
    assert!(
        a.data.len() >= m * k && b.data.len() >= k * n,
        "operand too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for v in &mut dst[..m * n] {
            *v = if beta == 0.0 { 0.0 } else { *v * beta };
        }
        return;
    }
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    let threads = match threads {
        Threads::One => 1,
        Threads::All => rayon::current_num_threads(),
    };
    let raw = Raw {
        dst: dst.as_mut_ptr(),
        a: a.data.as_ptr(),
        b: b.data.as_ptr(),
    };
    if !b.t
        && (m <= SKINNY_ROWS || n <= NARROW_COLS || k * n <= skinny::SMALL_B)
        && skinny::available()
    {
        return skinny_matmul(raw, (m, n, k), (a_cs, a_rs), alpha, beta, threads);
    }
    // A skinny product (a batch of 32 against a dense layer's weights) spends its time
    // packing `b`, and the crate's own threading packs it no faster: split the columns
    // instead, one single-threaded gemm per share of `b`. Measured on 2 cores in
    // keras-cnn's step (32x9216 @ 9216x1024): 11.1 -> 10.2 ms, alternating runs. The
    // shares are fixed, not one per thread: the crate blocks the inner dimension by the
    // product's shape, so shares sized by the thread count would make the results
    // depend on it.
    if m <= SKINNY_ROWS && n >= 2 * SPLIT_COLS {
        let tasks = n.div_ceil(SPLIT_COLS);
        let share = |t: usize| {
            let (j0, j1) = (t * SPLIT_COLS, ((t + 1) * SPLIT_COLS).min(n));
            // SAFETY: as below; the tasks write disjoint column ranges of `dst`.
            unsafe {
                raw.gemm(
                    (m, j1 - j0, k),
                    j0 as isize,
                    (a_cs, a_rs),
                    j0 as isize * b_cs,
                    (b_cs, b_rs),
                    n as isize,
                    (alpha, beta),
                    Parallelism::None,
                )
            };
        };
        if threads > 1 {
            (0..tasks).into_par_iter().for_each(share);
        } else {
            (0..tasks).for_each(share);
        }
        return;
    }
    let par = if threads > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above bound every index the kernel reads or writes by the slices'
    // lengths; `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        raw.gemm(
            (m, n, k),
            0,
            (a_cs, a_rs),
            0,
            (b_cs, b_rs),
            n as isize,
            (alpha, beta),
            par,
        )
    };
}

/// Most rows of `a` for which [`matmul`] splits the columns across threads, or takes the
/// hand-written kernels of [`skinny`] (which also take products whose `b` stays in cache).
const SKINNY_ROWS: usize = 64;
/// Most columns of the result for which [`matmul`] takes the hand-written kernels.
const NARROW_COLS: usize = 32;

/// A skinny or narrow product on [`skinny`]'s kernels, which read `b` in place: split by
/// columns across threads when wide enough, else by rows when tall enough.
fn skinny_matmul(
    raw: Raw,
    (m, n, k): (usize, usize, usize),
    (a_cs, a_rs): (isize, isize),
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    // SAFETY: `matmul` checked every operand's extent; each task writes its own block of
    // rows or columns of `dst`, which aliases neither operand.
    let run = |rows, cols| unsafe { raw.skinny(rows, cols, (n, k), (a_cs, a_rs), alpha, beta) };
    if threads > 1 && n >= threads * SKINNY_MIN_COLS {
        let per = n.div_ceil(threads).next_multiple_of(16);
        (0..n.div_ceil(per))
            .into_par_iter()
            .for_each(|t| run((0, m), (t * per, ((t + 1) * per).min(n))));
    } else if threads > 1 && m >= threads * 48 {
        let per = m.div_ceil(threads).next_multiple_of(24);
        (0..m.div_ceil(per))
            .into_par_iter()
            .for_each(|t| run((t * per, ((t + 1) * per).min(m)), (0, n)));
    } else {
        run((0, m), (0, n));
    }
}
/// Fewest columns per thread worth a split.
const SKINNY_MIN_COLS: usize = 128;
/// Columns of each share of a skinny product on the gemm crate.
const SPLIT_COLS: usize = 256;

/// The operands' base pointers, shared by the column-split tasks.
#[derive(Clone, Copy)]
struct Raw {
    dst: *mut f32,
    a: *const f32,
    b: *const f32,
}

// SAFETY: tasks holding a `Raw` write disjoint parts of `dst` and only read `a` and `b`.
unsafe impl Send for Raw {}
unsafe impl Sync for Raw {}

impl Raw {
    /// Rows `[i0, i1)` and columns `[j0, j1)` of an `m x n x k` product on [`skinny`]'s
    /// kernels, `b` and `dst` row-major with `n` columns.
    ///
    /// # Safety
    /// As [`Raw::gemm`].
    unsafe fn skinny(
        self,
        (i0, i1): (usize, usize),
        (j0, j1): (usize, usize),
        (n, k): (usize, usize),
        (a_cs, a_rs): (isize, isize),
        alpha: f32,
        beta: f32,
    ) {
        unsafe {
            skinny::gemm(
                (i1 - i0, j1 - j0, k),
                skinny::Lhs {
                    ptr: self.a.add(i0 * a_rs as usize),
                    rs: a_rs as usize,
                    cs: a_cs as usize,
                },
                skinny::Rm {
                    ptr: self.b.add(j0),
                    ld: n,
                },
                self.dst.add(i0 * n + j0),
                n,
                alpha,
                beta,
            )
        }
    }

    /// `dst[.., dst_off..] = beta * dst + alpha * a @ b[.., b_off..]` for an `m x n x k`
    /// product; `dst` has row stride `dst_rs`.
    ///
    /// # Safety
    /// Every element the product touches must lie inside the original slices, and no other
    /// task may write the same part of `dst`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        self,
        (m, n, k): (usize, usize, usize),
        dst_off: isize,
        (a_cs, a_rs): (isize, isize),
        b_off: isize,
        (b_cs, b_rs): (isize, isize),
        dst_rs: isize,
        (alpha, beta): (f32, f32),
        par: Parallelism,
    ) {
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                self.dst.offset(dst_off),
                1,
                dst_rs,
                beta != 0.0,
                self.a,
                a_cs,
                a_rs,
                self.b.offset(b_off),
                b_cs,
                b_rs,
                beta,
                alpha,
                false,
                false,
                false,
                par,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = x[i * c + j];
            }
        }
        out
    }

    #[test]
    fn products_with_every_transpose_match_the_naive_loop() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        for (la, lb) in [
            (M::n(&a, m, k), M::n(&b, k, n)),
            (M::t(&at, k, m), M::n(&b, k, n)),
            (M::n(&a, m, k), M::t(&bt, n, k)),
            (M::t(&at, k, m), M::t(&bt, n, k)),
        ] {
            let mut got = vec![0.0; m * n];
            matmul(&mut got, la, lb, 1.0, 0.0, Threads::All);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
        // Accumulation: dst = dst - 0.5 a@b.
        let mut got = want.clone();
        matmul(
            &mut got,
            M::n(&a, m, k),
            M::n(&b, k, n),
            -0.5,
            1.0,
            Threads::One,
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - 0.5 * w).abs() < 1e-5);
        }
    }

    #[test]
    fn skinny_products_split_by_columns_match_the_naive_loop() {
        // Few rows and many columns: the column-split path on a 2-thread pool.
        let (m, k, n) = (8, 33, 600);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let bt = transpose(&b, k, n);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            for lb in [M::n(&b, k, n), M::t(&bt, n, k)] {
                let mut got = vec![1.0; m * n];
                matmul(&mut got, M::n(&a, m, k), lb, 2.0, 1.0, Threads::All);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - (1.0 + 2.0 * w)).abs() < 1e-4, "{g} vs {w}");
                }
            }
        });
    }
}
