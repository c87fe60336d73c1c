//! Candle's graph of a validated spec's model, built from its [`Plan`].
//!
//! Tensors are NCHW with PyTorch's layouts (conv `[out, in, kh, kw]`, dense `[out, in]`,
//! flatten in channel-major order), so the state dict we save loads into the equivalent
//! `nn.Module` unchanged. Weights are created on the host from our seeded [`Rng`] with the
//! framework's init (Candle's own inits are neither Keras's nor PyTorch's), in layer order:
//! weight, then bias.

use candle_core::{D, DType, Device, Result, Tensor, Var};

use super::ops;
use super::rng::Rng;
use crate::spec::plan::{LayerKind, Plan};
use crate::spec::{Activation, ExperimentSpec, InitScheme};

enum Layer {
    Conv {
        w: Var,
        b: Var,
        stride: (usize, usize),
        /// top, bottom, left, right
        pad: [usize; 4],
        act: Activation,
    },
    MaxPool {
        size: (usize, usize),
        stride: (usize, usize),
    },
    AvgPool {
        size: (usize, usize),
        stride: (usize, usize),
    },
    Flatten,
    Dense {
        w: Var,
        b: Var,
        act: Activation,
    },
    Dropout {
        rate: f64,
    },
    BatchNorm {
        gamma: Var,
        beta: Var,
        running_mean: Var,
        running_var: Var,
        batches: u64,
        momentum: f64,
        eps: f64,
    },
}

/// The output of a forward pass.
pub struct Forward {
    /// What the last layer produced (after its activation): `[batch, classes]`.
    pub output: Tensor,
    /// Per-sample cross-entropy is `-log_softmax(loss_input)[label]`: the pre-softmax logits
    /// for a softmax output (as Keras computes it), the output itself otherwise (for a
    /// log_softmax output that is PyTorch's CrossEntropyLoss applied to log-probabilities).
    pub loss_input: Tensor,
    pub last_activation: Activation,
}

pub struct Model {
    layers: Vec<Layer>,
    /// Trainable parameters in state-dict order.
    params: Vec<(String, Var)>,
    /// Layer names, parallel to `layers` (empty for layers without state).
    names: Vec<String>,
    /// Every state-dict tensor's name and shape, in order (from the plan).
    expected: Vec<(String, Vec<usize>)>,
    device: Device,
    dtype: DType,
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Relu => ops::relu(x),
        Activation::Sigmoid => candle_nn::ops::sigmoid(x),
        Activation::Tanh => x.tanh(),
        Activation::Softmax => candle_nn::ops::softmax_last_dim(x),
        Activation::LogSoftmax => candle_nn::ops::log_softmax(x, D::Minus1),
        Activation::None => Ok(x.clone()),
    }
}

fn uniform(rng: &mut Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
}

/// (weight, bias) values for a layer with `fan_in`/`fan_out` (receptive field included).
fn init_values(
    scheme: InitScheme,
    rng: &mut Rng,
    n_w: usize,
    n_b: usize,
    fan_in: usize,
    fan_out: usize,
) -> (Vec<f32>, Vec<f32>) {
    match scheme {
        InitScheme::Keras => {
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
            (uniform(rng, n_w, limit), vec![0.0; n_b])
        }
        InitScheme::Torch => {
            // kaiming_uniform(a = sqrt(5)): gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in).
            let gain = (2.0f64 / 6.0).sqrt();
            let w_bound = gain * (3.0 / fan_in as f64).sqrt();
            let w = uniform(rng, n_w, w_bound);
            let b = uniform(rng, n_b, 1.0 / (fan_in as f64).sqrt());
            (w, b)
        }
    }
}

impl Model {
    /// Builds the model of a validated spec with freshly initialised f32 weights.
    pub fn new(spec: &ExperimentSpec, plan: &Plan, device: &Device) -> Result<Self> {
        Self::with_dtype(spec, plan, device, DType::F32)
    }

    /// Like [`Model::new`] in another float type (f64 for numeric gradient checks).
    pub fn with_dtype(
        spec: &ExperimentSpec,
        plan: &Plan,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let mut rng = Rng::derive(spec.seed, "init", 0);
        let mut layers = Vec::new();
        let mut params = Vec::new();
        let mut names = Vec::new();
        let scheme = spec.model.init;
        for layer in &plan.layers {
            let var = |v: Vec<f32>, dims: &[usize]| {
                Var::from_tensor(&Tensor::from_vec(v, dims, device)?.to_dtype(dtype)?)
            };
            // Weight and bias, named and shaped by the plan, in its order.
            let mut weight_and_bias = |w: Vec<f32>, b: Vec<f32>| -> Result<(Var, Var)> {
                let (tw, tb) = (&layer.tensors[0], &layer.tensors[1]);
                let (w, b) = (var(w, &tw.shape)?, var(b, &tb.shape)?);
                params.push((tw.name.clone(), w.clone()));
                params.push((tb.name.clone(), b.clone()));
                Ok((w, b))
            };
            let l = match &layer.kind {
                LayerKind::Conv2d(c) => {
                    let (w, b) = init_values(
                        scheme,
                        &mut rng,
                        c.filters * c.fan_in(),
                        c.filters,
                        c.fan_in(),
                        c.fan_out(),
                    );
                    let (w, b) = weight_and_bias(w, b)?;
                    Layer::Conv {
                        w,
                        b,
                        stride: c.stride,
                        pad: c.pad.as_array(),
                        act: c.activation,
                    }
                }
                LayerKind::MaxPool2d(p) => Layer::MaxPool {
                    size: p.size,
                    stride: p.stride,
                },
                LayerKind::AvgPool2d(p) => Layer::AvgPool {
                    size: p.size,
                    stride: p.stride,
                },
                LayerKind::Flatten => Layer::Flatten,
                LayerKind::Dense(d) => {
                    let (w, b) = init_values(
                        scheme,
                        &mut rng,
                        d.units * d.inputs,
                        d.units,
                        d.inputs,
                        d.units,
                    );
                    let (w, b) = weight_and_bias(w, b)?;
                    Layer::Dense {
                        w,
                        b,
                        act: d.activation,
                    }
                }
                LayerKind::Dropout { rate } => Layer::Dropout { rate: *rate },
                LayerKind::BatchNorm(n) => {
                    let c = n.channels;
                    let (gamma, beta) = weight_and_bias(vec![1.0; c], vec![0.0; c])?;
                    Layer::BatchNorm {
                        gamma,
                        beta,
                        running_mean: var(vec![0.0; c], &[c])?,
                        running_var: var(vec![1.0; c], &[c])?,
                        batches: 0,
                        momentum: n.momentum,
                        eps: n.eps,
                    }
                }
            };
            layers.push(l);
            names.push(layer.name.clone().unwrap_or_default());
        }
        Ok(Model {
            layers,
            params,
            names,
            expected: expected_state_dict(plan),
            device: device.clone(),
            dtype,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Trainable parameters with their state-dict names, in order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Runs the model. `train` selects batch statistics for batch norm (and updates the
    /// running ones) and applies dropout with masks from `rng`.
    pub fn forward(
        &mut self,
        x: &Tensor,
        train: bool,
        mut rng: Option<&mut Rng>,
    ) -> Result<Forward> {
        let mut x = x.clone();
        let mut pre = x.clone();
        let mut last = Activation::None;
        for layer in self.layers.iter_mut() {
            last = Activation::None;
            x = match layer {
                Layer::Conv {
                    w,
                    b,
                    stride,
                    pad,
                    act,
                } => {
                    let (input, p) = if pad.iter().all(|&p| p == pad[0]) {
                        (x, pad[0])
                    } else {
                        let padded = x.pad_with_zeros(2, pad[0], pad[1])?;
                        (padded.pad_with_zeros(3, pad[2], pad[3])?, 0)
                    };
                    let w = w.as_tensor();
                    let y = if stride.0 == stride.1 {
                        input.conv2d(w, p, stride.0, 1, 1)?
                    } else {
                        // Candle's conv2d takes one stride for both axes: convolve densely,
                        // then keep every stride-th row and column.
                        let full = input.conv2d(w, p, 1, 1, 1)?;
                        let (_, _, fh, fw) = full.dims4()?;
                        let rows = ops::strided(&full, 2, 0, stride.0, (fh - 1) / stride.0 + 1)?;
                        ops::strided(&rows, 3, 0, stride.1, (fw - 1) / stride.1 + 1)?
                    };
                    let y = y.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
                    pre = y.clone();
                    last = *act;
                    activate(&y, *act)?
                }
                Layer::MaxPool { size, stride } => ops::max_pool2d(&x, *size, *stride)?,
                Layer::AvgPool { size, stride } => ops::avg_pool2d(&x, *size, *stride)?,
                Layer::Flatten => x.flatten_from(1)?,
                Layer::Dense { w, b, act } => {
                    let y = x.matmul(&w.t()?)?.broadcast_add(b.as_tensor())?;
                    pre = y.clone();
                    last = *act;
                    activate(&y, *act)?
                }
                Layer::Dropout { rate } => match (train, rng.as_deref_mut()) {
                    (true, Some(rng)) if *rate > 0.0 => {
                        let keep = 1.0 - *rate;
                        let scale = (1.0 / keep) as f32;
                        let mask: Vec<f32> = (0..x.elem_count())
                            .map(|_| if rng.next_f64() < keep { scale } else { 0.0 })
                            .collect();
                        let mask =
                            Tensor::from_vec(mask, x.shape(), &self.device)?.to_dtype(x.dtype())?;
                        x.mul(&mask)?
                    }
                    _ => x,
                },
                Layer::BatchNorm {
                    gamma,
                    beta,
                    running_mean,
                    running_var,
                    batches,
                    momentum,
                    eps,
                } => batch_norm(
                    &x,
                    gamma,
                    beta,
                    running_mean,
                    running_var,
                    batches,
                    *momentum,
                    *eps,
                    train,
                )?,
            };
        }
        let loss_input = if last == Activation::Softmax {
            pre
        } else {
            x.clone()
        };
        Ok(Forward {
            output: x,
            loss_input,
            last_activation: last,
        })
    }

    /// Every stored tensor's state-dict name and variable, in order (parameters and
    /// batch-norm running statistics; `num_batches_tracked` is kept apart as a counter).
    fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for (layer, name) in self.layers.iter().zip(&self.names) {
            let vars: Vec<(&str, &Var)> = match layer {
                Layer::Conv { w, b, .. } | Layer::Dense { w, b, .. } => {
                    vec![("weight", w), ("bias", b)]
                }
                Layer::BatchNorm {
                    gamma,
                    beta,
                    running_mean,
                    running_var,
                    ..
                } => vec![
                    ("weight", gamma),
                    ("bias", beta),
                    ("running_mean", running_mean),
                    ("running_var", running_var),
                ],
                _ => continue,
            };
            out.extend(vars.into_iter().map(|(k, v)| (format!("{name}.{k}"), v)));
        }
        out
    }

    /// Batch-norm layers' `num_batches_tracked` counters, by state-dict name.
    fn batch_counters(&mut self) -> Vec<(String, &mut u64)> {
        self.layers
            .iter_mut()
            .zip(&self.names)
            .filter_map(|(l, name)| match l {
                Layer::BatchNorm { batches, .. } => {
                    Some((format!("{name}.num_batches_tracked"), batches))
                }
                _ => None,
            })
            .collect()
    }

    /// The full state dict (parameters and batch-norm buffers), PyTorch names and layouts,
    /// copied to the CPU.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().to_device(&Device::Cpu)?)))
            .collect::<Result<Vec<_>>>()?;
        for (layer, name) in self.layers.iter().zip(&self.names) {
            if let Layer::BatchNorm { batches, .. } = layer {
                let n = Tensor::new(*batches as i64, &Device::Cpu)?;
                out.push((format!("{name}.num_batches_tracked"), n));
            }
        }
        Ok(out)
    }

    /// Loads a state dict saved by [`Model::state_dict`] (or by PyTorch for the equivalent
    /// module). Every tensor must be present with the right shape; extra tensors are an error.
    pub fn load_state_dict(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        check_state_dict(&self.expected, tensors)?;
        for (k, var) in self.named_vars() {
            var.set(&tensors[&k].to_dtype(self.dtype)?.to_device(&self.device)?)?;
        }
        for (k, n) in self.batch_counters() {
            *n = tensors[&k].to_dtype(DType::I64)?.to_scalar::<i64>()?.max(0) as u64;
        }
        Ok(())
    }
}

/// The state dict a model of `plan` holds: every tensor's name and shape, in order.
pub(crate) fn expected_state_dict(plan: &Plan) -> Vec<(String, Vec<usize>)> {
    plan.state_dict()
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect()
}

/// Checks that `tensors` are exactly the `expected` state dict: every tensor present with
/// its shape (the first one that is not, in order, is named), and none other.
pub(crate) fn check_state_dict(
    expected: &[(String, Vec<usize>)],
    tensors: &std::collections::HashMap<String, Tensor>,
) -> Result<()> {
    for (k, dims) in expected {
        let t = tensors
            .get(k)
            .ok_or_else(|| candle_core::Error::Msg(format!("weights are missing {k}")))?;
        if t.dims() != dims.as_slice() {
            candle_core::bail!("{k} has shape {:?}, the model needs {:?}", t.dims(), dims);
        }
    }
    if let Some(extra) = tensors
        .keys()
        .find(|k| !expected.iter().any(|(e, _)| e == *k))
    {
        candle_core::bail!("weights have a tensor {extra} that the model does not use");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn batch_norm(
    x: &Tensor,
    gamma: &Var,
    beta: &Var,
    running_mean: &Var,
    running_var: &Var,
    batches: &mut u64,
    momentum: f64,
    eps: f64,
    train: bool,
) -> Result<Tensor> {
    // Per-channel statistics over every axis but 1.
    let (xs, bshape) = match x.rank() {
        4 => {
            let (b, c, h, w) = x.dims4()?;
            (
                x.transpose(0, 1)?.reshape((c, b * h * w))?,
                vec![1, c, 1, 1],
            )
        }
        _ => {
            let (b, c) = x.dims2()?;
            (x.t()?.reshape((c, b))?, vec![1, c])
        }
    };
    let n = xs.dim(1)?;
    let (mean, var) = if train {
        let mean = xs.mean(1)?;
        let var = xs.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.mean(1)?;
        let m = momentum;
        let unbiased = if n > 1 {
            n as f64 / (n as f64 - 1.0)
        } else {
            1.0
        };
        running_mean.set(&((running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?)?;
        running_var
            .set(&((running_var.as_tensor() * (1.0 - m))? + (var.detach() * (m * unbiased))?)?)?;
        *batches += 1;
        (mean, var)
    } else {
        (
            running_mean.as_tensor().clone(),
            running_var.as_tensor().clone(),
        )
    };
    let inv = (var + eps)?.sqrt()?.recip()?;
    let scale = (inv * gamma.as_tensor())?.reshape(bshape.clone())?;
    let shift = beta.reshape(bshape.clone())?;
    x.broadcast_sub(&mean.reshape(bshape)?)?
        .broadcast_mul(&scale)?
        .broadcast_add(&shift)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::spec;

    /// The plan names every tensor checkpoints hold, in their order: the same list the
    /// model built from it writes.
    #[test]
    fn the_plans_state_dict_is_the_models() {
        let custom = json!({
            "version": 1,
            "dataset": {"name": "mnist"},
            "model": {"layers": [
                {"type": "conv2d", "filters": 3, "kernel": [3, 2], "padding": "same"},
                {"type": "batch_norm"},
                {"type": "max_pool2d", "size": 2},
                {"type": "flatten"},
                {"type": "batch_norm"},
                {"type": "dropout", "rate": 0.5},
                {"type": "dense", "name": "out", "units": 10, "activation": "softmax"}
            ]},
            "optimizer": {"type": "sgd", "learning_rate": 0.1},
            "epochs": 1,
            "batch_size": 8
        });
        for v in [
            json!({"preset": "keras-cnn"}),
            json!({"preset": "torch-cnn"}),
            custom,
        ] {
            let s = spec::from_value(v).unwrap();
            let plan = spec::validate(&s).unwrap();
            let model = Model::new(&s, &plan, &Device::Cpu).unwrap();
            let built: Vec<(String, Vec<usize>)> = model
                .state_dict()
                .unwrap()
                .into_iter()
                .map(|(k, t)| (k, t.dims().to_vec()))
                .collect();
            assert_eq!(built, expected_state_dict(&plan));
            let trainable: Vec<&str> = plan.trainable().map(|t| t.name.as_str()).collect();
            let params: Vec<&str> = model.params().iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(trainable, params);
        }
    }
}
