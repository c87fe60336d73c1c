//! Inference from a checkpoint: images in, class probabilities out.
//!
//! A weights file carries its spec and its data's shape, so it alone says how to
//! preprocess: the images are taken in the data's own format (28x28 grayscale u8 for
//! MNIST: white digit on black; an uploaded dataset's channels and size), then go through
//! the spec's own resize and normalisation, exactly as the training data did.
//!
//! The training [`Model`](super::model::Model) is built for gradients: ReLU and max pooling
//! are composed of several ops so that their backward passes match PyTorch's, its weights
//! are `Var`s (so every forward records a graph), and its forward takes `&mut self` for
//! batch-norm statistics. None of that is needed to classify. So the predictor is built
//! from the spec's [`Plan`] and the checkpoint alone: the weights are checked against the
//! plan's state dict (the same check, and the same errors, as loading them into a training
//! model), then lowered into a plain, detached layer list whose forward is `&self`: one
//! predictor serves any number of threads without a lock, and each layer is a single Candle
//! op with the same values (`infer_matches_the_training_forward` checks that against the
//! training forward).
//!
//! On the CPU, specs the training CPU path takes (`engine::cpu`) run on its kernels,
//! forward only, with buffers kept between calls: the same fused im2col + gemm layers
//! that train, and the fastest this machine has. Other devices and specs use the layer
//! list of single Candle ops.

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor};

use super::EngineError;
use super::checkpoint::Checkpoint;
use super::cpu::FastNet;
use super::model;
use super::ops;
use crate::data::prepare::Preprocess;
use crate::spec::plan::{LayerKind, Plan, Role};
use crate::spec::{Activation, DataInfo, ExperimentSpec, validate_for};

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
    /// Outputs of the last layer: one probability per class.
    classes: usize,
    pre: Preprocess,
    spec: ExperimentSpec,
    data: DataInfo,
    epoch: u32,
    device: Device,
}

/// The plan as single Candle ops on `device`. Identity pools and dropout (the identity
/// at inference) are left out.
fn lower(
    plan: &Plan,
    weights: &HashMap<String, Tensor>,
    device: &Device,
) -> Result<Vec<Op>, EngineError> {
    let mut ops = Vec::new();
    for layer in &plan.layers {
        // Every name exists: the state dict was checked against the plan.
        let get = |role: Role| -> candle_core::Result<Tensor> {
            let t = layer
                .tensor(role)
                .expect("the plan names this layer's tensors");
            weights[&t.name].to_device(device)?.detach().contiguous()
        };
        let op = match &layer.kind {
            LayerKind::Conv2d(c) => Op::Conv {
                w: get(Role::Weight)?,
                b: get(Role::Bias)?.reshape((1, (), 1, 1))?,
                stride: c.stride,
                pad: c.pad.as_array(),
                act: c.activation,
            },
            LayerKind::MaxPool2d(p) | LayerKind::AvgPool2d(p) if p.is_identity() => continue,
            LayerKind::MaxPool2d(p) => Op::MaxPool(p.size, p.stride),
            LayerKind::AvgPool2d(p) => Op::AvgPool(p.size, p.stride),
            LayerKind::Flatten => Op::Flatten,
            LayerKind::Dense(d) => Op::Dense {
                w: get(Role::Weight)?,
                b: get(Role::Bias)?,
                act: d.activation,
            },
            LayerKind::Dropout { .. } => continue,
            LayerKind::BatchNorm(n) => {
                let var = get(Role::RunningVar)?;
                let scale = ((var + n.eps)?.sqrt()?.recip()? * get(Role::Weight)?)?;
                Op::BatchNorm {
                    mean: get(Role::RunningMean)?,
                    scale,
                    shift: get(Role::Bias)?,
                }
            }
        };
        ops.push(op);
    }
    Ok(ops)
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
    /// Validates the checkpoint's spec for its data, then [`Predictor::with_plan`].
    pub fn new(ckpt: &Checkpoint, device: &Device) -> Result<Self, EngineError> {
        let plan = validate_for(&ckpt.spec, ckpt.data.shape())?;
        Self::with_plan(&plan, ckpt, device)
    }

    /// The model of `plan` (the checkpoint's spec's) with the checkpoint's weights: no
    /// training model is built and nothing is initialised.
    pub fn with_plan(plan: &Plan, ckpt: &Checkpoint, device: &Device) -> Result<Self, EngineError> {
        let stored = ckpt.weight_map();
        model::check_state_dict(&model::expected_state_dict(plan), &stored)?;
        // The float tensors in f32 on the host, as training holds them.
        let weights = plan
            .state_dict()
            .into_iter()
            .filter(|t| t.role != Role::BatchesTracked)
            .map(|t| Ok((t.name.clone(), stored[&t.name].to_dtype(DType::F32)?)))
            .collect::<Result<HashMap<_, _>, EngineError>>()?;
        let fast = match (device, plan.cpu_kernels_unsupported()) {
            (Device::Cpu, None) => Some(FastNet::for_inference(plan, &weights)?),
            _ => None,
        };
        // Where the CPU kernels answer, the Candle ops would only hold a second copy of
        // the weights.
        let ops = match fast {
            Some(_) => Vec::new(),
            None => lower(plan, &weights, device)?,
        };
        Ok(Predictor {
            fast,
            ops,
            last: plan.output_activation(),
            classes: plan.classes(),
            pre: Preprocess::new(
                &ckpt.spec.dataset,
                ckpt.data.channels,
                ckpt.data.height,
                ckpt.data.width,
            ),
            spec: ckpt.spec.clone(),
            data: ckpt.data.clone(),
            epoch: ckpt.epoch,
            device: device.clone(),
        })
    }

    pub fn spec(&self) -> &ExperimentSpec {
        &self.spec
    }

    /// The images it takes (`channels x height x width` u8, CHW) and its classes' names.
    pub fn data(&self) -> &DataInfo {
        &self.data
    }

    /// Bytes of one input image.
    pub fn image_len(&self) -> usize {
        self.data.channels * self.data.height * self.data.width
    }

    /// What the forward takes once an image is preprocessed: `[channels, height, width]`
    /// f32, the height and width being the spec's `resize` where it has one.
    pub fn input_shape(&self) -> [usize; 3] {
        let (h, w) = self.pre.output_size();
        [self.data.channels, h, w]
    }

    /// Floats of one preprocessed image.
    pub fn input_len(&self) -> usize {
        self.input_shape().iter().product()
    }

    /// Probabilities in each answer (the last layer's outputs).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The epoch whose weights answer.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Class probabilities for each of `n` u8 images (each [`Predictor::image_len`]
    /// bytes, CHW) laid end to end: [`Predictor::prepare`], then
    /// [`Predictor::predict_prepared`].
    pub fn predict(&self, images: &[u8]) -> Result<Vec<Vec<f32>>, EngineError> {
        let mut x = Vec::new();
        self.prepare(images, &mut x)?;
        self.predict_prepared(&x)
    }

    /// Appends the preprocessed floats of `n` u8 images (each [`Predictor::image_len`]
    /// bytes, CHW) to `dst`: the spec's resize and normalisation, as its training data had.
    pub fn prepare(&self, images: &[u8], dst: &mut Vec<f32>) -> Result<(), EngineError> {
        let px = self.image_len();
        if images.is_empty() || !images.len().is_multiple_of(px) {
            return Err(EngineError::Input(format!(
                "expected whole {}x{}x{} images, got {} bytes",
                self.data.channels,
                self.data.height,
                self.data.width,
                images.len()
            )));
        }
        self.pre.extend(images, dst);
        Ok(())
    }

    /// Class probabilities for each of `n` already preprocessed images (each
    /// [`Predictor::input_len`] floats, CHW, as [`Predictor::prepare`] makes them) laid
    /// end to end.
    pub fn predict_prepared(&self, x: &[f32]) -> Result<Vec<Vec<f32>>, EngineError> {
        let len = self.input_len();
        if x.is_empty() || !x.len().is_multiple_of(len) {
            let [c, h, w] = self.input_shape();
            return Err(EngineError::Input(format!(
                "expected whole {c}x{h}x{w} inputs, got {} floats",
                x.len()
            )));
        }
        let n = x.len() / len;
        if let Some(fast) = &self.fast {
            let out = fast.outputs(x, n);
            return Ok(out
                .chunks(fast.classes())
                .map(|row| self.row_probabilities(row))
                .collect());
        }
        let [c, h, w] = self.input_shape();
        let x = Tensor::from_slice(x, (n, c, h, w), &self.device)?;
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
                Op::MaxPool(size, stride) => x.max_pool2d_with_stride(*size, *stride)?,
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
