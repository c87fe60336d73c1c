//! Inference from a checkpoint: images in, class probabilities out.
//!
//! A weights file carries its spec, so it alone says how to preprocess: the images are
//! taken as 28x28 grayscale u8 (MNIST's format: white digit on black), then go through the
//! spec's own resize and normalisation, exactly as the training data did.
//!
//! The training [`Model`] is built for gradients: ReLU and max pooling are composed of
//! several ops so that their backward passes match PyTorch's, its weights are `Var`s (so
//! every forward records a graph), and its forward takes `&mut self` for batch-norm
//! statistics. None of that is needed to classify. So the weights are loaded and checked
//! through [`Model`] (one place decides names and shapes), then copied into a plain,
//! detached layer list whose forward is `&self`: one predictor serves any number of
//! threads without a lock, and each layer is a single Candle op with the same values
//! (`infer_matches_the_training_forward` checks that against the training forward).
//!
//! On the CPU, specs the training CPU path takes (`engine::cpu`) run on its kernels,
//! forward only, with buffers kept between calls: the same fused im2col + gemm layers
//! that train, and the fastest this machine has. Other devices and specs use the layer
//! list of single Candle ops.

use std::collections::HashMap;

use candle_core::{D, Device, Tensor};

use super::EngineError;
use super::checkpoint::Checkpoint;
use super::cpu::FastNet;
use super::model::Model;
use super::ops;
use crate::data::prepare::Preprocess;
use crate::spec::{
    Activation, BatchNorm, Conv2d, Dense, ExperimentSpec, LayerSpec, Padding, validate,
};

/// Side of the images a model's dataset is made of (before the spec's own resize).
pub const SOURCE_SIDE: usize = 28;

enum Op {
    Conv {
        w: Tensor,
        /// `[1, c, 1, 1]`, ready to broadcast.
        b: Tensor,
        stride: (usize, usize),
        /// top, bottom, left, right
        pad: [usize; 4],
        act: Activation,
    },
    MaxPool((usize, usize), (usize, usize)),
    AvgPool((usize, usize), (usize, usize)),
    Flatten,
    Dense {
        w: Tensor,
        b: Tensor,
        act: Activation,
    },
    /// Eval-mode batch norm, `(x - mean) * scale + shift` per channel (`[c]` each), in
    /// the training forward's order of operations.
    BatchNorm {
        mean: Tensor,
        scale: Tensor,
        shift: Tensor,
    },
}

/// A loaded model, ready to classify. `Send + Sync`: share it behind an `Arc`.
pub struct Predictor {
    /// The CPU path's kernels (`engine::cpu`), where the spec runs there; else `ops`.
    fast: Option<FastNet>,
    ops: Vec<Op>,
    last: Activation,
    pre: Preprocess,
    spec: ExperimentSpec,
    epoch: u32,
    device: Device,
}

fn activate(x: Tensor, act: Activation) -> candle_core::Result<Tensor> {
    match act {
        Activation::Relu => x.relu(),
        Activation::Sigmoid => candle_nn::ops::sigmoid(&x),
        Activation::Tanh => x.tanh(),
        Activation::Softmax => candle_nn::ops::softmax_last_dim(&x),
        Activation::LogSoftmax => candle_nn::ops::log_softmax(&x, D::Minus1),
        Activation::None => Ok(x),
    }
}

impl Predictor {
    /// Builds the model of a checkpoint's spec and loads its weights.
    pub fn new(ckpt: &Checkpoint, device: &Device) -> Result<Self, EngineError> {
        let summary = validate(&ckpt.spec)?;
        let mut model = Model::new(&ckpt.spec, &summary, device)?;
        model.load_state_dict(&ckpt.weight_map())?;
        let state: HashMap<String, Tensor> = model.state_dict()?.into_iter().collect();
        // Every name below exists: load_state_dict checked the full state dict.
        let get = |name: &Option<String>, key: &str| -> candle_core::Result<Tensor> {
            let k = format!("{}.{key}", name.as_deref().unwrap_or_default());
            state[&k].to_device(device)?.detach().contiguous()
        };
        let mut ops = Vec::new();
        let mut last = Activation::None;
        let mut shape: Vec<usize> = summary.input.to_vec();
        for (layer, info) in ckpt.spec.model.layers.iter().zip(&summary.layers) {
            let op = match layer {
                LayerSpec::Conv2d(Conv2d {
                    kernel,
                    stride,
                    padding,
                    activation,
                    ..
                }) => {
                    let ((kh, kw), (sh, sw)) = (kernel.hw(), stride.hw());
                    let pad = match padding {
                        Padding::Valid => [0; 4],
                        Padding::Same => {
                            let (t, bo) = ops::same_padding(shape[1], kh, sh);
                            let (l, r) = ops::same_padding(shape[2], kw, sw);
                            [t, bo, l, r]
                        }
                    };
                    last = *activation;
                    let (w, b) = (get(&info.name, "weight")?, get(&info.name, "bias")?);
                    Op::Conv {
                        w,
                        b: b.reshape((1, (), 1, 1))?,
                        stride: (sh, sw),
                        pad,
                        act: *activation,
                    }
                }
                LayerSpec::MaxPool2d(p) => Op::MaxPool(p.size.hw(), p.stride_hw()),
                LayerSpec::AvgPool2d(p) => Op::AvgPool(p.size.hw(), p.stride_hw()),
                LayerSpec::Flatten => Op::Flatten,
                LayerSpec::Dense(Dense { activation, .. }) => {
                    last = *activation;
                    let (w, b) = (get(&info.name, "weight")?, get(&info.name, "bias")?);
                    Op::Dense {
                        w,
                        b,
                        act: *activation,
                    }
                }
                LayerSpec::Dropout(_) => {
                    // Identity at inference; like any layer, it ends the last activation.
                    last = Activation::None;
                    shape = info.output.clone();
                    continue;
                }
                LayerSpec::BatchNorm(BatchNorm { eps, .. }) => {
                    let var = get(&info.name, "running_var")?;
                    let scale = ((var + *eps)?.sqrt()?.recip()? * get(&info.name, "weight")?)?;
                    Op::BatchNorm {
                        mean: get(&info.name, "running_mean")?,
                        scale,
                        shift: get(&info.name, "bias")?,
                    }
                }
            };
            if !matches!(op, Op::Conv { .. } | Op::Dense { .. }) {
                last = Activation::None;
            }
            ops.push(op);
            shape = info.output.clone();
        }
        let fast = match device {
            Device::Cpu if FastNet::supports(&ckpt.spec).is_ok() => {
                Some(FastNet::for_inference(&ckpt.spec, &summary, &model)?)
            }
            _ => None,
        };
        if fast.is_some() {
            // The CPU path answers: the Candle ops would only hold a second copy of the
            // weights.
            ops.clear();
        }
        Ok(Predictor {
            fast,
            ops,
            last,
            pre: Preprocess::new(&ckpt.spec.dataset, SOURCE_SIDE, SOURCE_SIDE),
            spec: ckpt.spec.clone(),
            epoch: ckpt.epoch,
            device: device.clone(),
        })
    }

    pub fn spec(&self) -> &ExperimentSpec {
        &self.spec
    }

    /// The epoch whose weights answer.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Class probabilities for each of `n` 28x28 u8 images laid end to end.
    pub fn predict(&self, images: &[u8]) -> Result<Vec<Vec<f32>>, EngineError> {
        let px = SOURCE_SIDE * SOURCE_SIDE;
        if images.is_empty() || !images.len().is_multiple_of(px) {
            return Err(EngineError::Input(format!(
                "expected whole {SOURCE_SIDE}x{SOURCE_SIDE} images, got {} bytes",
                images.len()
            )));
        }
        let n = images.len() / px;
        let (h, w) = self.pre.output_size();
        let mut x = Vec::with_capacity(n * h * w);
        self.pre.extend(images, &mut x);
        if let Some(fast) = &self.fast {
            let out = fast.outputs(&x, n);
            return Ok(out
                .chunks(fast.classes())
                .map(|row| self.row_probabilities(row))
                .collect());
        }
        let x = Tensor::from_vec(x, (n, 1, h, w), &self.device)?;
        let p = self.probabilities(self.forward(x)?)?;
        Ok(p.to_vec2::<f32>()?)
    }

    /// The last layer's output (after its activation), `[n, classes]`.
    fn forward(&self, mut x: Tensor) -> candle_core::Result<Tensor> {
        for op in &self.ops {
            x = match op {
                Op::Conv {
                    w,
                    b,
                    stride,
                    pad,
                    act,
                } => activate(conv_candle(x, w, *stride, *pad)?.broadcast_add(b)?, *act)?,
                Op::MaxPool(size, stride) => {
                    if *size == (1, 1) && *stride == (1, 1) {
                        x
                    } else {
                        x.max_pool2d_with_stride(*size, *stride)?
                    }
                }
                Op::AvgPool(size, stride) => ops::avg_pool2d(&x, *size, *stride)?,
                Op::Flatten => x.flatten_from(1)?,
                Op::Dense { w, b, act } => activate(x.matmul(&w.t()?)?.broadcast_add(b)?, *act)?,
                Op::BatchNorm { mean, scale, shift } => {
                    let mut bshape = vec![1; x.rank()];
                    bshape[1] = scale.dim(0)?;
                    let per_channel = |t: &Tensor| t.reshape(bshape.as_slice());
                    x.broadcast_sub(&per_channel(mean)?)?
                        .broadcast_mul(&per_channel(scale)?)?
                        .broadcast_add(&per_channel(shift)?)?
                }
            };
        }
        Ok(x)
    }

    /// [`Predictor::probabilities`] of one row of the CPU path's output.
    fn row_probabilities(&self, row: &[f32]) -> Vec<f32> {
        match self.last {
            Activation::Softmax => row.to_vec(),
            Activation::LogSoftmax => row.iter().map(|v| v.exp()).collect(),
            _ => {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                e.into_iter().map(|v| v / sum).collect()
            }
        }
    }

    /// Probabilities from the last layer's output, as training's evaluation computes them.
    fn probabilities(&self, out: Tensor) -> candle_core::Result<Tensor> {
        match self.last {
            Activation::Softmax => Ok(out),
            Activation::LogSoftmax => out.exp(),
            _ => candle_nn::ops::softmax_last_dim(&out),
        }
    }
}

/// Candle's convolution (other devices). It takes one stride for both axes: with two,
/// convolve densely and keep every stride-th row and column.
fn conv_candle(
    x: Tensor,
    w: &Tensor,
    stride: (usize, usize),
    pad: [usize; 4],
) -> candle_core::Result<Tensor> {
    let (input, p) = if pad.iter().all(|&p| p == pad[0]) {
        (x, pad[0])
    } else {
        let padded = x.pad_with_zeros(2, pad[0], pad[1])?;
        (padded.pad_with_zeros(3, pad[2], pad[3])?, 0)
    };
    if stride.0 == stride.1 {
        return input.conv2d(w, p, stride.0, 1, 1);
    }
    let full = input.conv2d(w, p, 1, 1, 1)?;
    let (_, _, fh, fw) = full.dims4()?;
    let rows = ops::strided(&full, 2, 0, stride.0, (fh - 1) / stride.0 + 1)?;
    ops::strided(&rows, 3, 0, stride.1, (fw - 1) / stride.1 + 1)
}

/// Index of the largest probability.
pub fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

#[cfg(test)]
mod tests;
