//! Tensor operations whose Candle versions have the wrong gradient for our purpose.
//!
//! - `Tensor::max_pool2d` in candle 0.11 gives each window's maximum only
//!   (maxima / window size) of the gradient (a quarter for 2x2), so keras-cnn learned
//!   visibly slower than in Keras. Here pooling gathers each window's values and passes
//!   the whole gradient to the first maximum, exactly as PyTorch does. A plain `max`
//!   reduction is not enough either: on ties (uniform background regions give identical
//!   activations) it passes the gradient to every tied element. Any stride works, where
//!   Candle's backward assumes stride == size.
//! - Candle's ReLU passes the gradient at exactly 0 (`x >= 0`); PyTorch does not
//!   (`x > 0`). It matters on the first step with zero biases, so ReLU here multiplies by
//!   a detached `x > 0` mask.
//!
//! Everything is made of Candle tensor ops, so it runs on every device.

use candle_core::{D, Result, Tensor};

/// ReLU with PyTorch's gradient: 0 where `x <= 0`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let mask = x.gt(0f64)?.to_dtype(x.dtype())?.detach();
    x.mul(&mask)
}

/// Every `stride`-th index along `dim`, starting at `start`, `count` of them.
pub(crate) fn strided(
    x: &Tensor,
    dim: usize,
    start: usize,
    stride: usize,
    count: usize,
) -> Result<Tensor> {
    if stride == 1 {
        return x.narrow(dim, start, count);
    }
    let len = x.dim(dim)?;
    let avail = len - start;
    let want = count * stride;
    let part = if avail >= want {
        x.narrow(dim, start, want)?
    } else {
        // Pad the tail; only index 0 of each group is read, and that is always in range.
        x.narrow(dim, start, avail)?
            .pad_with_zeros(dim, 0, want - avail)?
    };
    let mut shape = part.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, stride);
    part.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// The `kh * kw` strided views of a pooling window over `[b, c, h, w]`, stacked on a new
/// last dimension: `[b, c, oh, ow, kh * kw]`.
fn windows(x: &Tensor, (kh, kw): (usize, usize), (sh, sw): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = ((h - kh) / sh + 1, (w - kw) / sw + 1);
    let mut views = Vec::with_capacity(kh * kw);
    for di in 0..kh {
        let rows = strided(x, 2, di, sh, oh)?;
        for dj in 0..kw {
            views.push(strided(&rows, 3, dj, sw, ow)?);
        }
    }
    Tensor::stack(&views, D::Minus1)
}

/// Max pooling over `[b, c, h, w]` (floor mode, no padding) with PyTorch's gradient.
pub fn max_pool2d(x: &Tensor, size: (usize, usize), stride: (usize, usize)) -> Result<Tensor> {
    if size == (1, 1) && stride == (1, 1) {
        return Ok(x.clone());
    }
    let (b, c, h, w) = x.dims4()?;
    let windows = if size == stride && h % size.0 == 0 && w % size.1 == 0 {
        // Non-overlapping windows tile the input: a reshape and a permute are enough.
        let (oh, ow) = (h / size.0, w / size.1);
        x.reshape((b, c, oh, size.0, ow, size.1))?
            .permute((0, 1, 2, 4, 3, 5))?
            .reshape((b, c, oh, ow, size.0 * size.1))?
    } else {
        windows(x, size, stride)?
    };
    select_first_max(&windows)
}

/// The maximum over the last dimension, with the gradient going to its first occurrence
/// only (window order is row-major, as PyTorch scans it). Ties are common: background
/// regions of an image give identical activations, and a `max` reduction would pass the
/// whole gradient to each of them.
fn select_first_max(windows: &Tensor) -> Result<Tensor> {
    let k = windows.dim(D::Minus1)?;
    let first = windows.argmax_keepdim(D::Minus1)?;
    let positions = Tensor::arange(0u32, k as u32, windows.device())?;
    let mask = first
        .broadcast_as(windows.shape())?
        .eq(&positions.broadcast_as(windows.shape())?)?
        .to_dtype(windows.dtype())?
        .detach();
    windows.mul(&mask)?.sum(D::Minus1)
}

/// Average pooling over `[b, c, h, w]` (floor mode, no padding).
pub fn avg_pool2d(x: &Tensor, size: (usize, usize), stride: (usize, usize)) -> Result<Tensor> {
    if size == (1, 1) && stride == (1, 1) {
        return Ok(x.clone());
    }
    windows(x, size, stride)?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn grad_of(x: &Var, y: &Tensor) -> Vec<f32> {
        let g = y.sum_all().unwrap().backward().unwrap();
        g.get(x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn max_pool_ties_give_the_gradient_to_the_first_maximum_only() {
        let x = Var::new(&[[[[2f32, 2.], [2., 1.]]]], &Device::Cpu).unwrap();
        let y = max_pool2d(&x, (2, 2), (2, 2)).unwrap();
        assert_eq!(grad_of(&x, &y), [1., 0., 0., 0.]);
        let y = max_pool2d(&x, (2, 1), (1, 1)).unwrap();
        assert_eq!(grad_of(&x, &y), [1., 1., 0., 0.]);
    }

    #[test]
    fn max_pool_2x2_gives_the_maximum_the_whole_gradient() {
        let x = Var::new(&[[[[1f32, 4., 2., 0.], [3., 2., 5., 1.]]]], &Device::Cpu).unwrap();
        let y = max_pool2d(&x, (2, 2), (2, 2)).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [4., 5.]);
        assert_eq!(grad_of(&x, &y), [0., 1., 0., 0., 0., 0., 1., 0.]);
    }

    #[test]
    fn overlapping_max_pool_accumulates_gradient_like_pytorch() {
        // 1x3 input, window 1x2, stride 1: the middle maximum is picked twice.
        let x = Var::new(&[[[[1f32, 3., 2.]]]], &Device::Cpu).unwrap();
        let y = max_pool2d(&x, (1, 2), (1, 1)).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [3., 3.]);
        assert_eq!(grad_of(&x, &y), [0., 2., 0.]);
    }

    #[test]
    fn pooling_with_stride_above_size_skips_inputs() {
        let x = Var::new(&[[[[1f32, 2., 3., 4., 5.]]]], &Device::Cpu).unwrap();
        let y = avg_pool2d(&x, (1, 2), (1, 3)).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1.5, 4.5]
        );
        assert_eq!(grad_of(&x, &y), [0.5, 0.5, 0., 0.5, 0.5]);
    }

    #[test]
    fn relu_gradient_at_zero_is_zero() {
        let x = Var::new(&[-1f32, 0., 2.], &Device::Cpu).unwrap();
        let y = relu(&x).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0., 0., 2.]);
        assert_eq!(grad_of(&x, &y), [0., 0., 1.]);
    }
}
