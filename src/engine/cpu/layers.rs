//! The other layers of the CPU path: pooling, dense, activations and the loss, each as a
//! forward that writes a preallocated buffer and a backward that writes the gradient.
//!
//! Gradients follow PyTorch's definitions, as the Candle path does (see `engine::ops`):
//! max pooling sends the gradient to the first maximum of a window (NaN counts as a
//! maximum), ReLU's gradient at 0 is 0.

use rayon::prelude::*;

use super::gemm::{M, Threads, matmul};
use super::skinny;
use crate::spec::Activation;

/// A pooling window's geometry over `[c, h, w]` planes.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Pool {
    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
}

/// Max pooling; `arg` receives each output's source index within its plane.
pub fn max_pool(p: &Pool, x: &[f32], y: &mut [f32], arg: &mut [u32]) {
    let (hw, ohw) = (p.h * p.w, p.oh * p.ow);
    if super::maxpool::is_2x2(p) {
        return super::maxpool::max_pool_2x2(p, x, y, arg);
    }
    y.par_chunks_mut(ohw)
        .zip(arg.par_chunks_mut(ohw))
        .zip(x.par_chunks(hw))
        .for_each(|((y, arg), x)| {
            for oy in 0..p.oh {
                for ox in 0..p.ow {
                    let (y0, x0) = (oy * p.sh, ox * p.sw);
                    let mut best = y0 * p.w + x0;
                    let mut max = x[best];
                    for i in 0..p.kh {
                        for j in 0..p.kw {
                            let at = (y0 + i) * p.w + x0 + j;
                            let v = x[at];
                            if v > max || v.is_nan() && !max.is_nan() {
                                max = v;
                                best = at;
                            }
                        }
                    }
                    y[oy * p.ow + ox] = max;
                    arg[oy * p.ow + ox] = best as u32;
                }
            }
        });
}

/// Max pooling's input gradient (overwritten).
pub fn max_pool_backward(p: &Pool, gy: &[f32], arg: &[u32], dx: &mut [f32]) {
    let (hw, ohw) = (p.h * p.w, p.oh * p.ow);
    dx.par_chunks_mut(hw)
        .zip(gy.par_chunks(ohw))
        .zip(arg.par_chunks(ohw))
        .for_each(|((dx, gy), arg)| {
            dx.fill(0.0);
            for (&g, &a) in gy.iter().zip(arg) {
                dx[a as usize] += g;
            }
        });
}

/// Average pooling (floor mode, no padding): the window's mean.
pub fn avg_pool(p: &Pool, x: &[f32], y: &mut [f32]) {
    let (hw, ohw) = (p.h * p.w, p.oh * p.ow);
    let area = (p.kh * p.kw) as f32;
    y.par_chunks_mut(ohw)
        .zip(x.par_chunks(hw))
        .for_each(|(y, x)| {
            for oy in 0..p.oh {
                for ox in 0..p.ow {
                    let mut s = 0.0;
                    for i in 0..p.kh {
                        let row = (oy * p.sh + i) * p.w + ox * p.sw;
                        s += x[row..row + p.kw].iter().sum::<f32>();
                    }
                    y[oy * p.ow + ox] = s / area;
                }
            }
        });
}

/// Average pooling's input gradient (overwritten).
pub fn avg_pool_backward(p: &Pool, gy: &[f32], dx: &mut [f32]) {
    let (hw, ohw) = (p.h * p.w, p.oh * p.ow);
    let area = (p.kh * p.kw) as f32;
    dx.par_chunks_mut(hw)
        .zip(gy.par_chunks(ohw))
        .for_each(|(dx, gy)| {
            dx.fill(0.0);
            for oy in 0..p.oh {
                for ox in 0..p.ow {
                    let g = gy[oy * p.ow + ox] / area;
                    for i in 0..p.kh {
                        let row = (oy * p.sh + i) * p.w + ox * p.sw;
                        for v in &mut dx[row..row + p.kw] {
                            *v += g;
                        }
                    }
                }
            }
        });
}

// Dense weights are kept transposed here, `wt` `[i, o]` (Keras's layout): the gemm crate
// runs these skinny products 2-3x faster with that layout than with PyTorch's `[o, i]`
// (keras-cnn's 9216x1024 layer, batch 32: forward 6 vs 21 ms, input gradient 8 vs 18 ms).

/// `y = x @ wt + b` for `x` `[n, i]`: the output before its activation.
pub fn dense(x: &[f32], wt: &[f32], b: &[f32], y: &mut [f32], n: usize, i: usize, o: usize) {
    matmul(y, M::n(x, n, i), M::n(wt, i, o), 1.0, 0.0, Threads::All);
    for row in y[..n * o].chunks_mut(o) {
        for (v, &bias) in row.iter_mut().zip(b) {
            *v += bias;
        }
    }
}

/// Dense gradients from `gy` (`[n, o]`, pre-activation): `dwt = x^T @ gy`, `db` the column
/// sums, and `dx = gy @ wt^T` when asked. All overwritten.
#[allow(clippy::too_many_arguments)]
pub fn dense_backward(
    x: &[f32],
    wt: &[f32],
    gy: &[f32],
    dwt: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    n: usize,
    i: usize,
    o: usize,
) {
    if let Some(dx) = dx {
        matmul(dx, M::n(gy, n, o), M::t(wt, i, o), 1.0, 0.0, Threads::All);
    }
    matmul(dwt, M::t(x, n, i), M::n(gy, n, o), 1.0, 0.0, Threads::All);
    column_sums(gy, db, n, o);
}

fn column_sums(gy: &[f32], db: &mut [f32], n: usize, o: usize) {
    db.fill(0.0);
    for row in gy[..n * o].chunks(o) {
        for (d, &g) in db.iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// Weights (floats) below which the dense update is not blocked.
const SMALL_WEIGHTS: usize = 1 << 16;

/// [`dense_backward`] fused with a plain SGD step, for layers too large to write their
/// weight gradient out and read it back (keras-cnn's 9.4M weights: 38 MB each way, per
/// step). `dx` is computed from the old weights first; then one gemm applies
/// `wt = (1 - lr*wd) * wt - lr * x^T @ gy` in place, and the bias takes PyTorch's update.
/// `db` receives the bias gradient.
#[allow(clippy::too_many_arguments)]
pub fn dense_backward_sgd(
    x: &[f32],
    wt: &mut [f32],
    b: &mut [f32],
    gy: &[f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
    n: usize,
    i: usize,
    o: usize,
    lr: f64,
    wd: f64,
) {
    let keep = (1.0 - lr * wd) as f32;
    match dx {
        // Small weights stay in cache anyway: two plain products, each on all threads.
        Some(dx) if i * o <= SMALL_WEIGHTS => {
            matmul(dx, M::n(gy, n, o), M::t(wt, i, o), 1.0, 0.0, Threads::All);
            matmul(
                wt,
                M::t(x, n, i),
                M::n(gy, n, o),
                -lr as f32,
                keep,
                Threads::All,
            );
        }
        Some(dx) if skinny::available() => {
            fused_sgd_skinny(x, wt, gy, dx, (n, i, o), -lr as f32, keep)
        }
        // One pass over the weights: each block of WT_ROWS rows of `wt` (256 KB for
        // keras-cnn) first gives its columns of dx, then takes its update, while it is in
        // cache. Both products are computed transposed so every block is contiguous.
        Some(dx) => {
            let mut xt = vec![0f32; n * i];
            transpose_into(&x[..n * i], n, i, &mut xt);
            let mut dxt = vec![0f32; i * n];
            wt.par_chunks_mut(WT_ROWS * o)
                .zip(dxt.par_chunks_mut(WT_ROWS * n))
                .zip(xt.par_chunks(WT_ROWS * n))
                .for_each(|((wb, dxb), xb)| {
                    let rows = wb.len() / o;
                    // dx^T[rows] = wt[rows] @ gy^T
                    matmul(
                        dxb,
                        M::n(wb, rows, o),
                        M::t(gy, n, o),
                        1.0,
                        0.0,
                        Threads::One,
                    );
                    // wt[rows] = keep * wt[rows] - lr * x^T[rows] @ gy
                    matmul(
                        wb,
                        M::n(xb, rows, n),
                        M::n(gy, n, o),
                        -lr as f32,
                        keep,
                        Threads::One,
                    );
                });
            transpose_into(&dxt, i, n, &mut dx[..n * i]);
        }
        None => matmul(
            wt,
            M::t(x, n, i),
            M::n(gy, n, o),
            -lr as f32,
            keep,
            Threads::All,
        ),
    }
    column_sums(gy, db, n, o);
    let (lr, wd) = (-lr as f32, wd as f32);
    for (b, &g) in b.iter_mut().zip(db.iter()) {
        let d = if wd != 0.0 { g + *b * wd } else { g };
        *b += d * lr;
    }
}

/// The blocked pass of [`dense_backward_sgd`] on [`skinny`]'s kernels, which read `x`
/// transposed in place and write each block's part of `dx` while it is in cache: nothing
/// the size of `x` or `dx` is transposed or allocated.
fn fused_sgd_skinny(
    x: &[f32],
    wt: &mut [f32],
    gy: &[f32],
    dx: &mut [f32],
    (n, i, o): (usize, usize, usize),
    neg_lr: f32,
    keep: f32,
) {
    assert!(x.len() >= n * i && wt.len() >= i * o && gy.len() >= n * o && dx.len() >= n * i);
    let gyt = transpose(&gy[..n * o], n, o);
    let dxp = SendPtr(dx.as_mut_ptr());
    wt[..i * o]
        .par_chunks_mut(WT_ROWS * o)
        .enumerate()
        .for_each_init(Vec::new, |dxt, (blk, wb)| {
            let rows = wb.len() / o;
            let r0 = blk * WT_ROWS;
            dxt.resize(rows * n, 0.0);
            // SAFETY: every product stays inside the slices asserted above; `dxt` and `wb`
            // are this task's own, and it writes only columns [r0, r0 + rows) of `dx`.
            unsafe {
                // dx^T[rows] = wt[rows] @ gy^T
                skinny::gemm(
                    (rows, n, o),
                    skinny::Lhs {
                        ptr: wb.as_ptr(),
                        rs: o,
                        cs: 1,
                    },
                    skinny::Rm {
                        ptr: gyt.as_ptr(),
                        ld: n,
                    },
                    dxt.as_mut_ptr(),
                    n,
                    1.0,
                    0.0,
                );
                let dx = dxp;
                for s in 0..n {
                    let out = dx.0.add(s * i + r0);
                    for r in 0..rows {
                        *out.add(r) = dxt[r * n + s];
                    }
                }
                // wt[rows] = keep * wt[rows] - lr * x^T[rows] @ gy
                skinny::gemm(
                    (rows, o, n),
                    skinny::Lhs {
                        ptr: x.as_ptr().add(r0),
                        rs: 1,
                        cs: i,
                    },
                    skinny::Rm {
                        ptr: gy.as_ptr(),
                        ld: o,
                    },
                    wb.as_mut_ptr(),
                    o,
                    neg_lr,
                    keep,
                );
            }
        });
}

/// A pointer the blocks of [`fused_sgd_skinny`] write disjoint parts through.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each task writes only its own columns.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Rows of a dense layer's `[in, out]` weights per block of the fused SGD backward.
const WT_ROWS: usize = 96;

/// `[r, c]` row-major to `[c, r]` row-major.
pub fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    transpose_into(v, r, c, &mut out);
    out
}

/// [`transpose`] into `out` (`r * c` values).
fn transpose_into(v: &[f32], r: usize, c: usize, out: &mut [f32]) {
    for (i, row) in v.chunks(c).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            out[j * r + i] = x;
        }
    }
}

/// An elementwise activation, as Candle's path computes it.
pub fn scalar_act(act: Activation) -> fn(f32) -> f32 {
    match act {
        Activation::Relu => |v| v * ((v > 0.0) as u8 as f32),
        Activation::Sigmoid => |v| 1.0 / (1.0 + (-v).exp()),
        Activation::Tanh => f32::tanh,
        _ => |v| v,
    }
}

/// Applies `act` in place to rows of `width` (softmax and log-softmax work per row).
pub fn activate(act: Activation, y: &mut [f32], width: usize) {
    match act {
        Activation::None => {}
        Activation::Softmax | Activation::LogSoftmax => {
            y.par_chunks_mut(width).for_each(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if act == Activation::Softmax {
                    let mut sum = 0.0;
                    for v in row.iter_mut() {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    for v in row.iter_mut() {
                        *v /= sum;
                    }
                } else {
                    let lse = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
                    for v in row.iter_mut() {
                        *v = *v - max - lse;
                    }
                }
            });
        }
        _ => {
            let f = scalar_act(act);
            y.par_chunks_mut(4096).for_each(|c| {
                for v in c {
                    *v = f(*v);
                }
            });
        }
    }
}

/// Turns the gradient of an activation's output into that of its input, in place, from
/// the activation's output `y`.
pub fn activate_backward(act: Activation, y: &[f32], g: &mut [f32], width: usize) {
    match act {
        Activation::None => {}
        Activation::Relu => g
            .par_chunks_mut(4096)
            .zip(y.par_chunks(4096))
            .for_each(|(g, y)| {
                for (g, &y) in g.iter_mut().zip(y) {
                    *g *= (y > 0.0) as u8 as f32;
                }
            }),
        Activation::Sigmoid => g
            .par_chunks_mut(4096)
            .zip(y.par_chunks(4096))
            .for_each(|(g, y)| {
                for (g, &y) in g.iter_mut().zip(y) {
                    *g *= y * (1.0 - y);
                }
            }),
        Activation::Tanh => g
            .par_chunks_mut(4096)
            .zip(y.par_chunks(4096))
            .for_each(|(g, y)| {
                for (g, &y) in g.iter_mut().zip(y) {
                    *g *= 1.0 - y * y;
                }
            }),
        Activation::Softmax => {
            g.par_chunks_mut(width)
                .zip(y.par_chunks(width))
                .for_each(|(g, y)| {
                    let dot: f32 = g.iter().zip(y).map(|(g, y)| g * y).sum();
                    for (g, &y) in g.iter_mut().zip(y) {
                        *g = y * (*g - dot);
                    }
                })
        }
        Activation::LogSoftmax => {
            g.par_chunks_mut(width)
                .zip(y.par_chunks(width))
                .for_each(|(g, y)| {
                    let sum: f32 = g.iter().sum();
                    for (g, &y) in g.iter_mut().zip(y) {
                        *g -= y.exp() * sum;
                    }
                })
        }
    }
}

/// Cross-entropy of `-log_softmax(z)[label]` per row of `z` (`[n, classes]`): returns the
/// summed loss, and writes `(softmax(z) - onehot) / scale` into `g` when given.
pub fn cross_entropy(
    z: &[f32],
    labels: &[u32],
    classes: usize,
    scale: f32,
    g: Option<&mut [f32]>,
) -> f64 {
    let mut total = 0f64;
    let mut g = g;
    for (r, (row, &label)) in z.chunks(classes).zip(labels).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let lse = sum.ln();
        total -= (row[label as usize] - max - lse) as f64;
        if let Some(g) = g.as_deref_mut() {
            let out = &mut g[r * classes..(r + 1) * classes];
            for (c, (o, &v)) in out.iter_mut().zip(row).enumerate() {
                let p = (v - max - lse).exp();
                *o = (p - if c == label as usize { 1.0 } else { 0.0 }) / scale;
            }
        }
    }
    total
}

/// Rows whose first maximum is at the label.
pub fn correct(y: &[f32], labels: &[u32], classes: usize) -> usize {
    y.chunks(classes)
        .zip(labels)
        .filter(|(row, label)| {
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0;
            best == **label as usize
        })
        .count()
}
