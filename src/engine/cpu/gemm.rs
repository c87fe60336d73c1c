//! Row-major matrix products on the `gemm` crate (the same kernels Candle's CPU matmul
//! uses, with their AVX-512 variants), without Candle's per-call overhead: no allocation,
//! no layout checks, and accumulation into the destination when asked.
//!
//! Every matrix is a dense row-major slice; a transposed operand is described by its
//! strides, never copied.

use gemm::Parallelism;

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
            *v *= beta;
        }
        return;
    }
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    let par = match threads {
        Threads::One => Parallelism::None,
        Threads::All => Parallelism::Rayon(0),
    };
    // SAFETY: the asserts above bound every index the kernel reads or writes by the slices'
    // lengths; `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            par,
        );
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
}
