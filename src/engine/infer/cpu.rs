//! The CPU kernels of inference: convolution and dense layers as direct `gemm` calls.
//!
//! Measured on keras-cnn (2 cores), Candle 0.11's CPU path spent most of a forward pass
//! outside arithmetic: its conv2d gathers im2col patches one scalar at a time, and each
//! bias add and ReLU is a separate parallel pass whose threads meet at a spinning barrier,
//! which on a machine shared with the HTTP server and its clients burns the very cores
//! the pass is waiting for. Here a layer is one matrix product per image (per batch for a
//! dense layer) written straight into a buffer that already holds the bias, then ReLU in
//! the same buffer: the im2col patches are slice copies, and the only threads are the
//! matrix product's own.

use candle_core::{Device, Result, Tensor};
use gemm::{Parallelism, gemm};

/// `dst[m, n] += lhs[m, k] * rhs[k, n]`, every matrix dense row-major, except that
/// `rhs_t` takes `rhs` as the transpose of a row-major `[n, k]` matrix.
fn matmul_acc(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    rhs_t: bool,
) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n);
    let (rhs_cs, rhs_rs) = if rhs_t { (k, 1) } else { (1, n) };
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 && m * n * k >= 1 << 18 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides reach inside its slice, and
    // `dst` is borrowed mutably, so nothing else reads or writes it meanwhile.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn relu(v: &mut [f32]) {
    for x in v {
        *x = x.max(0.0);
    }
}

/// A convolution's weights as `[c_out, c_in * kh * kw]`, and its bias.
pub(super) struct ConvWeights {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub c_out: usize,
    pub kernel: (usize, usize),
}

/// Convolution of NCHW `x` (stride, padding top/bottom/left/right), optionally with ReLU.
pub(super) fn conv2d(
    x: &Tensor,
    cw: &ConvWeights,
    (sh, sw): (usize, usize),
    [top, bottom, left, right]: [usize; 4],
    with_relu: bool,
) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (kh, kw) = cw.kernel;
    let (oh, ow) = (
        (h + top + bottom - kh) / sh + 1,
        (wd + left + right - kw) / sw + 1,
    );
    let (k, p) = (c * kh * kw, oh * ow);
    let src = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; b * cw.c_out * p];
    let mut cols = vec![0f32; k * p];
    for (img, dst) in src
        .chunks_exact(c * h * wd)
        .zip(out.chunks_exact_mut(cw.c_out * p))
    {
        // The image's im2col matrix: row (ci, i, j) holds, for every output pixel, the
        // input pixel under kernel tap (i, j) of channel ci (zero in the padding).
        cols.fill(0.0);
        for ci in 0..c {
            let plane = &img[ci * h * wd..(ci + 1) * h * wd];
            for i in 0..kh {
                for j in 0..kw {
                    let row = &mut cols[((ci * kh + i) * kw + j) * p..][..p];
                    for oy in 0..oh {
                        let Some(y) = (oy * sh + i).checked_sub(top).filter(|&y| y < h) else {
                            continue;
                        };
                        let src_row = &plane[y * wd..(y + 1) * wd];
                        let dst_row = &mut row[oy * ow..(oy + 1) * ow];
                        if sw == 1 && left == 0 && right == 0 {
                            dst_row.copy_from_slice(&src_row[j..j + ow]);
                        } else {
                            for (ox, d) in dst_row.iter_mut().enumerate() {
                                let xx = (ox * sw + j).checked_sub(left);
                                if let Some(v) = xx.and_then(|xx| src_row.get(xx)) {
                                    *d = *v;
                                }
                            }
                        }
                    }
                }
            }
        }
        for (row, &bias) in dst.chunks_exact_mut(p).zip(&cw.b) {
            row.fill(bias);
        }
        matmul_acc(dst, &cw.w, &cols, (cw.c_out, p, k), false);
        if with_relu {
            relu(dst);
        }
    }
    Tensor::from_vec(out, (b, cw.c_out, oh, ow), &Device::Cpu)
}

/// `x @ w^T + b` for `x: [n, in]` and PyTorch's `w: [out, in]`, optionally with ReLU.
pub(super) fn dense(x: &Tensor, w: &[f32], bias: &[f32], with_relu: bool) -> Result<Tensor> {
    let (n, k) = x.dims2()?;
    let m = bias.len();
    let src = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out: Vec<f32> = (0..n).flat_map(|_| bias.iter().copied()).collect();
    matmul_acc(&mut out, &src, w, (n, m, k), true);
    if with_relu {
        relu(&mut out);
    }
    Tensor::from_vec(out, (n, m), &Device::Cpu)
}
