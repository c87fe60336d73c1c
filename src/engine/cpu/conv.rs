//! 2-D convolution as im2col + one gemm per sample (or per few samples side by side when
//! the output is small), with the bias and the activation fused into the pass that writes
//! the output.
//!
//! Samples run in parallel, each on one thread with its own column buffer (a keras-cnn
//! sample's columns are 288 x 576 floats, cache-sized), so the products are many
//! single-threaded gemms rather than one badly shaped parallel one, and nothing is
//! allocated per batch beyond a column buffer per worker thread. The backward pass
//! rebuilds the columns instead of keeping them (21 MB a batch for keras-cnn), and sums the
//! weight gradient over fixed groups of samples in a fixed order: the result does not
//! depend on how many threads ran it.

use rayon::prelude::*;

use super::gather;
use super::gemm::{M, Threads, matmul};
use super::layers::{Pool, scalar_act};
use super::maxpool;
use super::scratch;
use crate::spec::Activation;

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy)]
pub struct Geom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub f: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    /// Zero rows above and columns left of the input ("same" padding; the bottom and right
    /// padding is implied by `oh`/`ow`).
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    /// Rows of the column matrix: one per weight of a filter.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output positions per channel.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn out_len(&self) -> usize {
        self.f * self.p()
    }
    /// Stride 1 without padding: columns can be taken at full input width (see
    /// [`im2col_wide`]). No padding on any side: "same" padding of an even kernel puts
    /// its one row and column at the bottom and right, where `pt` and `pl` are 0.
    fn is_wide(&self) -> bool {
        self.sh == 1
            && self.sw == 1
            && self.pt == 0
            && self.pl == 0
            && self.oh + self.kh - 1 <= self.h
            && self.ow + self.kw - 1 <= self.w
    }
    /// One gemm per sample on full-width columns: stride 1, no padding, and an output
    /// large enough to make a per-sample gemm worth its call (keras-cnn's 24x24, not
    /// torch-cnn's 4x4, which goes batched).
    fn per_sample(&self) -> bool {
        self.is_wide() && self.p() >= 256
    }
    /// Samples whose columns go side by side into one gemm: enough for 256 columns.
    fn batched(&self) -> usize {
        if self.per_sample() {
            1
        } else {
            256usize.div_ceil(self.p()).clamp(1, 64)
        }
    }
    /// Column positions per channel in the wide layout: full input width.
    fn pw(&self) -> usize {
        self.oh * self.w
    }

    /// Output columns `[lo, hi)` whose input column `ox * sw + j - pl` is inside the image.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let lo = self.pl.saturating_sub(j).div_ceil(self.sw);
        // ox * sw + j - pl < w  <=>  ox * sw < w + pl - j
        let lim = (self.w + self.pl).saturating_sub(j);
        let hi = lim.div_ceil(self.sw).min(self.ow);
        (lo.min(hi), hi)
    }
}

/// `cols[(ci * kh + i) * kw + j][oy * ow + ox] = x[ci][oy*sh + i - pt][ox*sw + j - pl]`, zero
/// outside the image. Row order matches the weight layout `[f, c, kh, kw]`.
/// Into columns `[off, off + p)` of a matrix with `ld` columns.
fn im2col_at(g: &Geom, x: &[f32], cols: &mut [f32], ld: usize, off: usize) {
    let p = g.p();
    for ci in 0..g.c {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let r = (ci * g.kh + i) * g.kw + j;
                let row = &mut cols[r * ld + off..r * ld + off + p];
                let (lo, hi) = g.valid_cols(j);
                for oy in 0..g.oh {
                    let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    let iy = (oy * g.sh + i) as isize - g.pt as isize;
                    if iy < 0 || iy >= g.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    if g.sw == 1 {
                        // An element loop, not copy_from_slice: rows are a few floats
                        // long (torch-cnn's 4), too short to pay for a memcpy call.
                        let start = lo + j - g.pl;
                        for (o, &v) in out[lo..hi].iter_mut().zip(&src[start..]) {
                            *o = v;
                        }
                    } else {
                        for (ox, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                            *o = src[ox * g.sw + j - g.pl];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry back onto the pixel it was read from.
/// From columns `[off, off + p)` of a matrix with `ld` columns.
fn col2im_add_at(g: &Geom, cols: &[f32], dx: &mut [f32], ld: usize, off: usize) {
    let p = g.p();
    for ci in 0..g.c {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let r = (ci * g.kh + i) * g.kw + j;
                let row = &cols[r * ld + off..r * ld + off + p];
                let (lo, hi) = g.valid_cols(j);
                for oy in 0..g.oh {
                    let iy = (oy * g.sh + i) as isize - g.pt as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let src = &row[oy * g.ow..(oy + 1) * g.ow];
                    for ox in lo..hi {
                        dst[ox * g.sw + j - g.pl] += src[ox];
                    }
                }
            }
        }
    }
}

/// `y[n] = act(w @ cols(x[n]) + b)` for every sample; `w` is `[f, k]`, `y` is `[n, f, p]`.
#[cfg(test)]
pub fn forward(g: &Geom, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], act: Activation) {
    forward_pooled(g, x, w, b, y, act, None)
}

/// A 2x2, stride-2 max pooling that follows a convolution: its output and argmax buffers,
/// filled from each sample's output while it is still in cache.
pub struct Pooled<'a> {
    pub pool: &'a Pool,
    pub y: &'a mut [f32],
    pub arg: &'a mut [u32],
}

/// Whether [`forward_pooled`] can pool after `g` (a per-sample convolution) with `p`.
pub fn can_pool(g: &Geom, p: &Pool) -> bool {
    g.per_sample() && maxpool::is_2x2(p) && p.in_len() == g.out_len()
}

/// [`forward`], and the max pooling after it when given (see [`can_pool`]).
pub fn forward_pooled(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    act: Activation,
    pooled: Option<Pooled>,
) {
    if !g.per_sample() {
        assert!(
            pooled.is_none(),
            "pooling fused after a batched convolution"
        );
        return forward_batched(g, x, w, b, y, act);
    }
    let (k, p, pw) = (g.k(), g.p(), g.pw());
    let n = y.len() / g.out_len();
    // Each sample's share of the pooling buffers, or none.
    let pool = pooled.as_ref().map(|pl| pl.pool);
    let mut slots: Vec<Option<(&mut [f32], &mut [u32])>> = match pooled {
        Some(pl) => {
            let len = pl.pool.c * pl.pool.oh * pl.pool.ow;
            pl.y[..n * len]
                .chunks_mut(len)
                .zip(pl.arg[..n * len].chunks_mut(len))
                .map(Some)
                .collect()
        }
        None => (0..n).map(|_| None).collect(),
    };
    y.par_chunks_mut(g.out_len())
        .zip(slots.par_iter_mut())
        .enumerate()
        .for_each(|(s, (y_n, slot))| {
            scratch::with((k + g.f) * pw, |buf| {
                let (cols, yw) = buf.split_at_mut(k * pw);
                // Full-width rows: the input planes are the columns' rows as they lie.
                im2col_wide(g, &x[s * g.in_len()..], cols);
                matmul(
                    yw,
                    M::n(w, g.f, k),
                    M::n(cols, k, pw),
                    1.0,
                    0.0,
                    Threads::One,
                );
                for ((out, rows), &bias) in y_n.chunks_mut(p).zip(yw.chunks(pw)).zip(b) {
                    for (o, r) in out.chunks_mut(g.ow).zip(rows.chunks(g.w)) {
                        bias_act(o, &r[..g.ow], bias, act);
                    }
                }
            });
            if let (Some(pool), Some((py, parg))) = (pool, slot.as_mut()) {
                maxpool::planes_2x2(pool, y_n, py, parg);
            }
        });
}

/// Small, strided or padded outputs: one gemm per [`Geom::batched`] samples side by side,
/// `[f, k] @ [k, s * p]`, so that small outputs still make a gemm large enough to reach
/// the kernels' speed.
fn forward_batched(g: &Geom, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], act: Activation) {
    let (k, p, sb) = (g.k(), g.p(), g.batched());
    let plan = gather::Plan::new(g);
    y.par_chunks_mut(sb * g.out_len())
        .zip(x.par_chunks(sb * g.in_len()))
        .for_each(|(y, x)| {
            scratch::with((k + g.f) * sb * p, |buf| {
                let (cols, out) = buf.split_at_mut(k * sb * p);
                let s = y.len() / g.out_len();
                let ld = s * p;
                for (i, x_n) in x.chunks(g.in_len()).enumerate() {
                    match &plan {
                        Some(plan) => plan.im2col(x_n, cols, ld, i * p),
                        None => im2col_at(g, x_n, cols, ld, i * p),
                    }
                }
                matmul(
                    out,
                    M::n(w, g.f, k),
                    M::n(&cols[..k * ld], k, ld),
                    1.0,
                    0.0,
                    Threads::One,
                );
                for (i, y_n) in y.chunks_mut(g.out_len()).enumerate() {
                    for (fi, (row, &bias)) in y_n.chunks_mut(p).zip(b).enumerate() {
                        bias_act(row, &out[fi * ld + i * p..fi * ld + (i + 1) * p], bias, act);
                    }
                }
            })
        });
}

/// `out = act(src + bias)`, in the arithmetic of the Candle path (ReLU as `x * (x > 0)`).
fn bias_act(out: &mut [f32], src: &[f32], bias: f32, act: Activation) {
    match act {
        Activation::Relu => {
            for (o, &v) in out.iter_mut().zip(src) {
                let x = v + bias;
                *o = x * ((x > 0.0) as u8 as f32);
            }
        }
        Activation::None => {
            for (o, &v) in out.iter_mut().zip(src) {
                *o = v + bias;
            }
        }
        _ => {
            let f = scalar_act(act);
            for (o, &v) in out.iter_mut().zip(src) {
                *o = f(v + bias);
            }
        }
    }
}

/// Columns of a stride-1 unpadded convolution at full input width: row `(ci, i, j)` is the
/// input from `x[ci][i][j]` on, `oh * w` values as they lie in memory. The last `kw - 1`
/// positions of each output row are garbage (they wrap to the next input row); callers drop
/// them in the output and give them zero gradient. One copy per row instead of `oh`.
fn im2col_wide(g: &Geom, x: &[f32], cols: &mut [f32]) {
    let pw = g.pw();
    for ci in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let r = (ci * g.kh + i) * g.kw + j;
                let row = &mut cols[r * pw..(r + 1) * pw];
                let start = ci * g.h * g.w + i * g.w + j;
                // Past the last sample's end only garbage positions are read: zero them.
                let avail = x.len().saturating_sub(start).min(pw);
                row[..avail].copy_from_slice(&x[start..start + avail]);
                row[avail..].fill(0.0);
            }
        }
    }
}

/// The adjoint of [`im2col_wide`] for column gradients whose garbage positions are zero.
fn col2im_wide_add(g: &Geom, cols: &[f32], dx: &mut [f32]) {
    let pw = g.pw();
    for ci in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let r = (ci * g.kh + i) * g.kw + j;
                let start = ci * g.h * g.w + i * g.w + j;
                let len = dx.len().saturating_sub(start).min(pw);
                for (d, v) in dx[start..start + len].iter_mut().zip(&cols[r * pw..]) {
                    *d += v;
                }
            }
        }
    }
}

/// The two products of a convolution's backward pass over `n` columns, on this thread:
/// `dwt += cols @ gout^T` (`cols` `[k, n]`, `gout` `[f, n]`; this orientation runs twice
/// as fast as `gout @ cols^T`, reading the large operand as stored), and, when asked,
/// `dcols = w^T @ gout` for the input gradient.
fn column_products(
    dwt: &mut [f32],
    cols: &[f32],
    gout: &[f32],
    w: &[f32],
    dcols: Option<&mut [f32]>,
    (k, f, n): (usize, usize, usize),
) {
    matmul(
        dwt,
        M::n(cols, k, n),
        M::t(gout, f, n),
        1.0,
        1.0,
        Threads::One,
    );
    if let Some(dcols) = dcols {
        matmul(
            dcols,
            M::t(w, f, k),
            M::n(gout, f, n),
            1.0,
            0.0,
            Threads::One,
        );
    }
}

/// The gradient of a convolution's output, and the output itself when it is a ReLU's: its
/// gradient is then taken here, in the pass that copies the gradient into the layout the
/// products read, instead of in a pass of its own over the whole batch.
#[derive(Clone, Copy)]
struct Grad<'a> {
    g: &'a [f32],
    relu_out: Option<&'a [f32]>,
}

impl<'a> Grad<'a> {
    /// Sample `s`'s gradient and ReLU output, `len` values each.
    fn sample(&self, s: usize, len: usize) -> (&'a [f32], Option<&'a [f32]>) {
        let at = s * len..(s + 1) * len;
        (&self.g[at.clone()], self.relu_out.map(|y| &y[at]))
    }
}

/// `dst = g`, or `g * (y > 0)` as `layers::activate_backward` computes ReLU's gradient.
fn grad_into(dst: &mut [f32], g: &[f32], relu_out: Option<&[f32]>) {
    match relu_out {
        None => dst.copy_from_slice(g),
        Some(y) => {
            for ((d, &g), &y) in dst.iter_mut().zip(g).zip(y) {
                *d = g * ((y > 0.0) as u8 as f32);
            }
        }
    }
}

/// The sum of `v` in 16 interleaved partial sums, added up at the end. A plain `sum()`
/// is one chain of dependent adds, which the compiler may not reorder: for keras-cnn's
/// bias gradients (576 and 676 positions per channel) that chain took longer than the
/// products beside it.
fn lane_sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut s = 0.0;
    for x in chunks.remainder() {
        s += x;
    }
    acc.iter().sum::<f32>() + s
}

/// Largest number of sample groups a weight gradient is split into.
const GROUPS: usize = 8;

/// Gradients of a convolution from `gy`, the gradient of its pre-activation output
/// `[n, f, p]`: `dw` (`[f, k]`) and `db` are overwritten; `dx`, when given, receives the
/// input gradient (overwritten). With `relu_out`, the output is a ReLU's and `gy` the
/// gradient after it: ReLU's gradient is taken here too.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    relu_out: Option<&[f32]>,
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let (k, f) = (g.k(), g.f);
    let n = gy.len() / g.out_len();
    let per = n.div_ceil(GROUPS).max(1);
    let groups = n.div_ceil(per);
    let part_len = f * k + f;
    let mut parts = vec![0f32; groups * part_len];
    let mut dx_groups: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx[..n * g.in_len()]
            .chunks_mut(per * g.in_len())
            .map(Some)
            .collect(),
        None => (0..groups).map(|_| None).collect(),
    };
    let pw = g.pw();
    let plan = if g.per_sample() {
        None
    } else {
        gather::Plan::new(g)
    };
    parts
        .par_chunks_mut(part_len)
        .zip(dx_groups.par_iter_mut())
        .enumerate()
        .for_each(|(gi, (part, dx_g))| {
            let (lo, hi) = (gi * per, ((gi + 1) * per).min(n));
            let (x, gy) = (
                &x[lo * g.in_len()..],
                &gy[lo * g.out_len()..hi * g.out_len()],
            );
            let gy = Grad {
                g: gy,
                relu_out: relu_out.map(|y| &y[lo * g.out_len()..hi * g.out_len()]),
            };
            let dx_g = dx_g.as_deref_mut();
            if !g.per_sample() {
                let x = &x[..(hi - lo) * g.in_len()];
                return backward_batched(g, plan.as_ref(), x, w, gy, part, dx_g);
            }
            let (pw_, pb) = part.split_at_mut(f * k);
            scratch::with((2 * k + f) * pw, |buf| {
                let (cols, rest) = buf.split_at_mut(k * pw);
                // The wide layout's output gradient, with zeros at the garbage positions.
                let (dcols, gw) = rest.split_at_mut(k * pw);
                backward_wide(g, x, w, gy, (pw_, pb), dx_g, (cols, dcols, gw));
            })
        });
    dw.fill(0.0);
    db.fill(0.0);
    for part in parts.chunks(part_len) {
        // Groups hold dw^T ([k, f]).
        let (pw, pb) = part.split_at(f * k);
        for (kk, row) in pw.chunks(f).enumerate() {
            for (fi, v) in row.iter().enumerate() {
                dw[fi * k + kk] += v;
            }
        }
        for (d, v) in db.iter_mut().zip(pb) {
            *d += v;
        }
    }
}

/// One group's weight and bias gradients (accumulated into `dwt` and `db`) and input
/// gradients, one sample at a time on full-width columns.
fn backward_wide(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    gy: Grad,
    (pw_, pb): (&mut [f32], &mut [f32]),
    mut dx_g: Option<&mut [f32]>,
    (cols, dcols, gw): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (k, p, f, pw) = (g.k(), g.p(), g.f, g.pw());
    for s in 0..gy.g.len() / g.out_len() {
        let (gy_n, y_n) = gy.sample(s, g.out_len());
        for (fi, (acc, wrow)) in pb.iter_mut().zip(gw.chunks_mut(pw)).enumerate() {
            let plane = fi * p..(fi + 1) * p;
            let (grow, yrow) = (&gy_n[plane.clone()], y_n.map(|y| &y[plane]));
            for (r, w) in wrow.chunks_mut(g.w).enumerate() {
                let at = r * g.ow..(r + 1) * g.ow;
                grad_into(&mut w[..g.ow], &grow[at.clone()], yrow.map(|y| &y[at]));
                w[g.ow..].fill(0.0);
            }
            *acc += lane_sum(wrow);
        }
        // Reads past this sample into the next (or zeros): garbage positions only.
        im2col_wide(g, &x[s * g.in_len()..], cols);
        let want_dx = dx_g.is_some();
        column_products(pw_, cols, gw, w, want_dx.then_some(&mut *dcols), (k, f, pw));
        if let Some(dx_g) = dx_g.as_deref_mut() {
            let dx_n = &mut dx_g[s * g.in_len()..(s + 1) * g.in_len()];
            dx_n.fill(0.0);
            col2im_wide_add(g, dcols, dx_n);
        }
    }
}

/// One group's weight and bias gradients (accumulated into `part`, `[f*k | f]`) and input
/// gradients, [`Geom::batched`] samples per gemm.
fn backward_batched(
    g: &Geom,
    plan: Option<&gather::Plan>,
    x: &[f32],
    w: &[f32],
    gy: Grad,
    part: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let (k, p, f, sb) = (g.k(), g.p(), g.f, g.batched());
    let (pw_, pb) = part.split_at_mut(f * k);
    scratch::with((2 * k + f) * sb * p, |buf| {
        let (cols, rest) = buf.split_at_mut(k * sb * p);
        let (dcols, gb) = rest.split_at_mut(k * sb * p);
        backward_batched_in(g, plan, x, w, gy, (pw_, pb), dx, (cols, dcols, gb))
    })
}

/// [`backward_batched`] in the scratch buffers it was given.
#[allow(clippy::too_many_arguments)]
fn backward_batched_in(
    g: &Geom,
    plan: Option<&gather::Plan>,
    x: &[f32],
    w: &[f32],
    gy: Grad,
    (pw_, pb): (&mut [f32], &mut [f32]),
    mut dx: Option<&mut [f32]>,
    (cols, dcols, gb): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (k, p, f, sb) = (g.k(), g.p(), g.f, g.batched());
    let n = gy.g.len() / g.out_len();
    for lo in (0..n).step_by(sb) {
        let s = sb.min(n - lo);
        let ld = s * p;
        for i in 0..s {
            let x_n = &x[(lo + i) * g.in_len()..(lo + i + 1) * g.in_len()];
            match plan {
                Some(plan) => plan.im2col(x_n, cols, ld, i * p),
                None => im2col_at(g, x_n, cols, ld, i * p),
            }
            let (gy_n, y_n) = gy.sample(lo + i, g.out_len());
            for fi in 0..f {
                let dst = &mut gb[fi * ld + i * p..fi * ld + (i + 1) * p];
                let plane = fi * p..(fi + 1) * p;
                grad_into(dst, &gy_n[plane.clone()], y_n.map(|y| &y[plane]));
                pb[fi] += lane_sum(dst);
            }
        }
        let (cols, gb) = (&cols[..k * ld], &gb[..f * ld]);
        let dcols = &mut dcols[..k * ld];
        column_products(
            pw_,
            cols,
            gb,
            w,
            dx.is_some().then_some(&mut *dcols),
            (k, f, ld),
        );
        if let Some(dx) = dx.as_deref_mut() {
            for i in 0..s {
                let dx_n = &mut dx[(lo + i) * g.in_len()..(lo + i + 1) * g.in_len()];
                dx_n.fill(0.0);
                match plan {
                    Some(plan) => plan.col2im_add(dcols, dx_n, ld, i * p),
                    None => col2im_add_at(g, dcols, dx_n, ld, i * p),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, the definition.
    fn direct(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0; g.out_len()];
        for fi in 0..g.f {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut s = 0.0;
                    for ci in 0..g.c {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let iy = (oy * g.sh + i) as isize - g.pt as isize;
                                let ix = (ox * g.sw + j) as isize - g.pl as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w
                                {
                                    s += x[(ci * g.h + iy as usize) * g.w + ix as usize]
                                        * w[((fi * g.c + ci) * g.kh + i) * g.kw + j];
                                }
                            }
                        }
                    }
                    y[(fi * g.oh + oy) * g.ow + ox] = s;
                }
            }
        }
        y
    }

    /// The gradients by their definitions, in f64: `(dw, db, dx)` for `n` samples.
    fn direct_backward(
        g: &Geom,
        x: &[f32],
        w: &[f32],
        gy: &[f32],
        n: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut dw, mut db, mut dx) = (vec![0.0; w.len()], vec![0.0; g.f], vec![0.0; x.len()]);
        for s in 0..n {
            for fi in 0..g.f {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let gv = gy[s * g.out_len() + (fi * g.oh + oy) * g.ow + ox] as f64;
                        db[fi] += gv;
                        for ci in 0..g.c {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (oy * g.sh + i) as isize - g.pt as isize;
                                    let ix = (ox * g.sw + j) as isize - g.pl as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w
                                    {
                                        continue;
                                    }
                                    let xi = s * g.in_len()
                                        + (ci * g.h + iy as usize) * g.w
                                        + ix as usize;
                                    let wi = ((fi * g.c + ci) * g.kh + i) * g.kw + j;
                                    dw[wi] += gv * x[xi] as f64;
                                    dx[xi] += gv * w[wi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (dw, db, dx)
    }

    /// Geometries as specs make them: "valid" or "same" padding, any stride, kernels up
    /// to the image, outputs from one pixel to several hundred (the per-sample, batched,
    /// gathered and in-register paths all occur).
    fn random_geoms(count: usize) -> Vec<Geom> {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = |lo: usize, hi: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (state >> 33) as usize % (hi - lo + 1)
        };
        (0..count)
            .map(|_| {
                let (c, f) = (next(1, 3), next(1, 5));
                let (h, w) = (next(1, 30), next(1, 30));
                let (kh, kw) = (next(1, 4.min(h)), next(1, 4.min(w)));
                let (sh, sw) = (next(1, 3), next(1, 3));
                let same = next(0, 1) == 1;
                let dim = |len: usize, k: usize, st: usize| {
                    if same {
                        let out = len.div_ceil(st);
                        let total = ((out - 1) * st + k).saturating_sub(len);
                        (out, total / 2)
                    } else {
                        ((len - k) / st + 1, 0)
                    }
                };
                let ((oh, pt), (ow, pl)) = (dim(h, kh, sh), dim(w, kw, sw));
                Geom {
                    c,
                    h,
                    w,
                    f,
                    kh,
                    kw,
                    sh,
                    sw,
                    pt,
                    pl,
                    oh,
                    ow,
                }
            })
            .collect()
    }

    #[test]
    fn random_geometries_match_the_definitions_forward_and_backward() {
        for g in random_geoms(200) {
            let n = 2;
            let x = input(n * g.in_len(), 0.37, f32::sin);
            let w = input(g.f * g.k(), 0.71, f32::cos);
            let gy = input(n * g.out_len(), 0.13, f32::cos);
            let b = vec![0.25; g.f];
            let mut y = vec![0.0; n * g.out_len()];
            forward(&g, &x, &w, &b, &mut y, Activation::None);
            for s in 0..n {
                let want = direct(&g, &x[s * g.in_len()..(s + 1) * g.in_len()], &w);
                for (a, b) in y[s * g.out_len()..(s + 1) * g.out_len()].iter().zip(&want) {
                    assert!((a - (b + 0.25)).abs() < 1e-4, "{g:?}: {a} vs {}", b + 0.25);
                }
            }
            let (mut dw, mut db, mut dx) = (vec![0.0; w.len()], vec![0.0; g.f], vec![0.0; x.len()]);
            backward(&g, &x, &w, &gy, None, &mut dw, &mut db, Some(&mut dx));
            let (wdw, wdb, wdx) = direct_backward(&g, &x, &w, &gy, n);
            for (what, got, want) in [("dw", &dw, &wdw), ("db", &db, &wdb), ("dx", &dx, &wdx)] {
                for (a, b) in got.iter().zip(want) {
                    assert!(
                        (*a as f64 - b).abs() < 1e-3 * (1.0 + b.abs()),
                        "{g:?} {what}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn gathered_columns_and_their_adjoint_equal_the_row_copies() {
        for g in geoms() {
            let Some(plan) = gather::Plan::new(&g) else {
                continue;
            };
            let (k, p) = (g.k(), g.p());
            // Columns [off, off + p) of a wider matrix, as the batched path writes them.
            let (ld, off) = (2 * p + 3, p + 1);
            let x: Vec<f32> = (0..g.in_len()).map(|i| (i as f32 * 0.7).sin()).collect();
            let (mut want, mut got) = (vec![9.0; k * ld], vec![9.0; k * ld]);
            im2col_at(&g, &x, &mut want, ld, off);
            plan.im2col(&x, &mut got, ld, off);
            assert_eq!(want, got, "{g:?}");
            let cols: Vec<f32> = (0..k * ld).map(|i| (i as f32 * 0.3).cos()).collect();
            let (mut want, mut got) = (vec![0.5; g.in_len()], vec![0.5; g.in_len()]);
            col2im_add_at(&g, &cols, &mut want, ld, off);
            plan.col2im_add(&cols, &mut got, ld, off);
            assert_eq!(want, got, "{g:?}");
        }
    }

    #[test]
    fn a_relu_output_masks_the_gradient_as_activate_backward_does() {
        for g in geoms() {
            let n = 3;
            let x = input(n * g.in_len(), 0.3, f32::sin);
            let w = input(g.f * g.k(), 0.7, f32::cos);
            let gy = input(n * g.out_len(), 0.13, f32::cos);
            // A ReLU output with zeros at about a third of the positions.
            let y: Vec<f32> = (0..n * g.out_len())
                .map(|i| if i % 3 == 0 { 0.0 } else { 1.0 + i as f32 })
                .collect();
            let mut masked = gy.clone();
            crate::engine::cpu::layers::activate_backward(Activation::Relu, &y, &mut masked, 1);
            let run = |gy: &[f32], relu: Option<&[f32]>| {
                let (mut dw, mut db, mut dx) =
                    (vec![0.0; w.len()], vec![0.0; g.f], vec![0.0; x.len()]);
                backward(&g, &x, &w, gy, relu, &mut dw, &mut db, Some(&mut dx));
                (dw, db, dx)
            };
            assert_eq!(run(&gy, Some(&y)), run(&masked, None), "{g:?}");
        }
    }

    #[test]
    fn pooling_fused_after_the_convolution_equals_pooling_after_it() {
        let mut checked = 0;
        for g in geoms() {
            let p = Pool {
                c: g.f,
                h: g.oh,
                w: g.ow,
                kh: 2,
                kw: 2,
                sh: 2,
                sw: 2,
                oh: g.oh / 2,
                ow: g.ow / 2,
            };
            if !can_pool(&g, &p) {
                continue;
            }
            let n = 3;
            let x = input(n * g.in_len(), 0.3, f32::sin);
            let w = input(g.f * g.k(), 0.7, f32::cos);
            let b: Vec<f32> = (0..g.f).map(|i| i as f32 * 0.1 - 0.2).collect();
            let plen = n * g.f * p.oh * p.ow;
            let (mut y, mut py, mut parg) =
                (vec![0.0; n * g.out_len()], vec![0.0; plen], vec![0; plen]);
            crate::engine::cpu::layers::max_pool(
                &p,
                &{
                    forward(&g, &x, &w, &b, &mut y, Activation::Relu);
                    y.clone()
                },
                &mut py,
                &mut parg,
            );
            let (mut y2, mut py2, mut parg2) =
                (vec![0.0; n * g.out_len()], vec![0.0; plen], vec![0; plen]);
            let pooled = Pooled {
                pool: &p,
                y: &mut py2,
                arg: &mut parg2,
            };
            forward_pooled(&g, &x, &w, &b, &mut y2, Activation::Relu, Some(pooled));
            assert_eq!((y, py, parg), (y2, py2, parg2), "{g:?}");
            checked += 1;
        }
        assert!(checked > 0, "no geometry took the fused pooling");
    }

    /// `len` smooth test values, `f(i * step)`.
    fn input(len: usize, step: f32, f: fn(f32) -> f32) -> Vec<f32> {
        (0..len).map(|i| f(i as f32 * step)).collect()
    }

    fn geoms() -> Vec<Geom> {
        let mk = |c, h, w, f, kh, kw, sh, sw, pt, pl, oh, ow| Geom {
            c,
            h,
            w,
            f,
            kh,
            kw,
            sh,
            sw,
            pt,
            pl,
            oh,
            ow,
        };
        vec![
            mk(1, 8, 8, 3, 3, 3, 1, 1, 0, 0, 6, 6),
            // Large enough for the per-sample wide path.
            mk(2, 20, 18, 3, 3, 3, 1, 1, 0, 0, 18, 16),
            mk(2, 7, 9, 4, 3, 2, 2, 3, 1, 0, 4, 3),
            mk(3, 5, 5, 2, 1, 1, 1, 1, 0, 0, 5, 5),
            mk(2, 6, 6, 2, 3, 3, 2, 2, 0, 1, 3, 3),
            // A plane of at most 32 pixels (two registers in the gather plan).
            mk(2, 5, 5, 2, 3, 3, 1, 1, 0, 0, 3, 3),
        ]
    }

    #[test]
    fn forward_matches_the_direct_convolution() {
        for g in geoms() {
            let x: Vec<f32> = (0..2 * g.in_len())
                .map(|i| (i as f32 * 0.3).sin())
                .collect();
            let w = input(g.f * g.k(), 0.7, f32::cos);
            let b = vec![0.0; g.f];
            let mut y = vec![0.0; 2 * g.out_len()];
            forward(&g, &x, &w, &b, &mut y, Activation::None);
            for s in 0..2 {
                let want = direct(&g, &x[s * g.in_len()..(s + 1) * g.in_len()], &w);
                for (a, b) in y[s * g.out_len()..(s + 1) * g.out_len()].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{g:?}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn backward_is_the_adjoint_of_forward() {
        // <gy, conv(x; w)> is bilinear: its gradients in x and w are what backward returns.
        for g in geoms() {
            let n = 3;
            let x = input(n * g.in_len(), 0.3, f32::sin);
            let w = input(g.f * g.k(), 0.7, f32::cos);
            let gy = input(n * g.out_len(), 0.13, f32::cos);
            let (mut dw, mut db, mut dx) = (vec![0.0; w.len()], vec![0.0; g.f], vec![0.0; x.len()]);
            backward(&g, &x, &w, &gy, None, &mut dw, &mut db, Some(&mut dx));
            let dot = |x: &[f32], w: &[f32]| -> f64 {
                (0..n)
                    .map(|s| {
                        direct(&g, &x[s * g.in_len()..(s + 1) * g.in_len()], w)
                            .iter()
                            .zip(&gy[s * g.out_len()..(s + 1) * g.out_len()])
                            .map(|(a, b)| (*a as f64) * (*b as f64))
                            .sum::<f64>()
                    })
                    .sum()
            };
            // Linear in x: <dx, x> = <gy, conv(x)>; linear in w: <dw, w> = <gy, conv(x)>.
            let base = dot(&x, &w);
            let dxx: f64 = dx
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let dww: f64 = dw
                .iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            assert!((dxx - base).abs() < 1e-3 * base.abs().max(1.0), "{g:?} dx");
            assert!((dww - base).abs() < 1e-3 * base.abs().max(1.0), "{g:?} dw");
            // db[1]: the sum of channel 1's gradient over every sample and position.
            let gsum: f32 = (0..n)
                .map(|s| {
                    let lo = s * g.out_len() + g.p();
                    gy[lo..lo + g.p()].iter().sum::<f32>()
                })
                .sum();
            if g.f > 1 {
                assert!((db[1] - gsum).abs() < 1e-4);
            }
        }
    }
}
