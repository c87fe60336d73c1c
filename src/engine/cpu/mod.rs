//! The CPU training path: the spec's layers run as fused kernels on preallocated buffers.
//!
//! Why not Candle's graph on the CPU: a keras-cnn step there took ~360 ms where PyTorch
//! takes ~40 and Keras ~26. Profiling (see `../shared/candle-notes.md`) put the conv
//! kernels at a fifth of it; the rest was elementwise and reduction passes (bias, ReLU
//! masks, pooling windows), gradient accumulation, fresh allocations for every tensor of
//! every step, a non-in-place optimizer, and the input gradient of the first conv. Here a
//! step is the minimum: one im2col + gemm per sample and layer with bias and activation
//! fused, pooling that records its argmax, dense layers as single gemms, the loss and its
//! gradient in one pass, and an in-place optimizer; all buffers are allocated once.
//!
//! The Candle model stays the source of truth between epochs: [`FastNet::new`] copies its
//! weights and optimizer state in, [`FastNet::write_back`] copies them out for evaluation
//! elsewhere, checkpoints and resumes. The arithmetic follows the Candle path's (and so
//! PyTorch's) operation by operation; the products sum in a different order, so results
//! agree to float rounding, and the tests hold both paths to each other. The network is
//! built from the spec's [`Plan`]. Batch norm is not implemented here: such specs train on
//! Candle's path ([`Plan::cpu_kernels_unsupported`] says why).
//!
//! Deterministic: no reduction depends on the number of threads.

mod conv;
mod gather;
pub mod gemm;
mod layers;
mod maxpool;
mod mem;
mod optim;
mod scratch;
mod skinny;

use std::collections::HashMap;

use candle_core::{Device, Storage, Tensor, WithDType};

use super::EngineError;
use super::model::Model;
use super::optim::Optimizer;
use super::rng::Rng;
use crate::spec::plan::{LayerKind, Plan, PoolPlan, Role};
use crate::spec::{Activation, ExperimentSpec};

/// Rows per evaluation pass.
const EVAL_ROWS: usize = 256;

enum Op {
    Conv {
        g: conv::Geom,
        act: Activation,
        param: usize,
    },
    MaxPool(layers::Pool),
    AvgPool(layers::Pool),
    Dense {
        i: usize,
        o: usize,
        act: Activation,
        param: usize,
    },
    Dropout {
        rate: f64,
    },
}

struct Node {
    op: Op,
    out_len: usize,
}

/// Per-batch working memory, sized for `cap` rows.
#[derive(Default)]
struct Buffers {
    cap: usize,
    input: Vec<f32>,
    outs: Vec<Vec<f32>>,
    args: Vec<Vec<u32>>,
    masks: Vec<Vec<f32>>,
    /// The last layer's pre-softmax logits (the loss is computed on them).
    logits: Vec<f32>,
    /// Gradients of each layer's output (training only).
    grads: Vec<Vec<f32>>,
}

/// Seconds spent per layer (forward, backward) and in the optimizer, when profiling.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    pub forward: Vec<f64>,
    pub backward: Vec<f64>,
    pub loss: f64,
    pub optimizer: f64,
    pub steps: u64,
}

/// A spec's network on the CPU, with its optimizer.
pub struct FastNet {
    profile: Option<Profile>,
    nodes: Vec<Node>,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    /// Parameter values; dense weights transposed to `[in, out]` (see `layers::dense`).
    params: Vec<Vec<f32>>,
    /// For each parameter kept transposed, its stored `[rows, cols]`.
    transposed: Vec<Option<(usize, usize)>>,
    grads: Vec<Vec<f32>>,
    optim: optim::Optim,
    input_len: usize,
    classes: usize,
    /// Index of the first layer with parameters: no gradient is needed below it.
    first_param_layer: usize,
    /// Plain SGD (no momentum): `(lr, weight_decay)`. Dense layers then apply the update
    /// inside their backward pass (see [`layers::dense_backward_sgd`]).
    fused_sgd: Option<(f64, f64)>,
    /// Parameters already updated by their layer's backward pass this step.
    updated: Vec<bool>,
    bufs: Buffers,
    /// Forward-only buffers kept for [`FastNet::outputs`] between calls.
    pool: std::sync::Mutex<Vec<Buffers>>,
}

/// A layer the CPU kernels lack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Its position in the spec's layers.
    pub layer: usize,
    pub what: &'static str,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layer {}: {}", self.layer, self.what)
    }
}

impl Plan {
    /// Why engine::cpu's kernels cannot run this plan (the first layer they lack), if they
    /// cannot. Such a plan trains on Candle's graph.
    pub fn cpu_kernels_unsupported(&self) -> Option<Unsupported> {
        self.layers.iter().find_map(|l| {
            let what = match &l.kind {
                LayerKind::BatchNorm(_) => "batch_norm",
                // Validation allows softmax only on the last, dense layer: kept as a guard.
                LayerKind::Conv2d(c)
                    if matches!(c.activation, Activation::Softmax | Activation::LogSoftmax) =>
                {
                    "softmax activation on conv2d"
                }
                // Exhaustive on purpose: a new layer kind must decide here.
                LayerKind::Conv2d(_)
                | LayerKind::MaxPool2d(_)
                | LayerKind::AvgPool2d(_)
                | LayerKind::Flatten
                | LayerKind::Dense(_)
                | LayerKind::Dropout { .. } => return None,
            };
            Some(Unsupported {
                layer: l.index,
                what,
            })
        })
    }
}

impl FastNet {
    /// The network of a validated spec's `plan` with the weights of `model` and the state
    /// of `optimizer`, ready for batches of up to `batch` rows.
    pub fn new(
        spec: &ExperimentSpec,
        plan: &Plan,
        model: &Model,
        optimizer: &Optimizer,
        batch: usize,
    ) -> Result<Self, EngineError> {
        let weights: HashMap<String, Tensor> = model.state_dict()?.into_iter().collect();
        let mut net = Self::for_inference(plan, &weights)?;
        let lens: Vec<usize> = net.params.iter().map(Vec::len).collect();
        net.grads = lens.iter().map(|&n| mem::zeroed(n)).collect();
        net.optim = optim::Optim::new(&spec.optimizer, &lens);
        let frozen = crate::spec::warm_start::frozen_tensors(spec, plan);
        for (i, name) in net.names.iter().enumerate() {
            if frozen.contains(name) {
                net.optim.freeze(i);
            }
        }
        net.updated = vec![false; lens.len()];
        net.fused_sgd = match spec.optimizer {
            // A fused dense layer updates its own weights: not when some are frozen.
            _ if !frozen.is_empty() => None,
            crate::spec::OptimizerSpec::Sgd {
                learning_rate,
                momentum,
                weight_decay,
                ..
            } => (momentum == 0.0).then_some((learning_rate, weight_decay)),
            _ => None,
        };
        if net.fused_sgd.is_some() {
            // Fused layers never write their weight gradient: keep no buffer for it.
            for node in &net.nodes {
                if let Op::Dense { param, .. } = node.op {
                    net.grads[param] = Vec::new();
                }
            }
        }
        net.bufs = net.buffers(batch.max(1), true);
        net.load_optimizer(optimizer)?;
        Ok(net)
    }

    /// The network of `plan` with `weights` (a state dict, f32), for
    /// [`FastNet::outputs`] and [`FastNet::evaluate`] only: no optimizer state, no
    /// gradient buffers.
    pub fn for_inference(
        plan: &Plan,
        weights: &HashMap<String, Tensor>,
    ) -> Result<Self, EngineError> {
        if let Some(u) = plan.cpu_kernels_unsupported() {
            return Err(EngineError::Unsupported(u));
        }
        let mut nodes = Vec::new();
        let (mut names, mut shapes, mut params) = (Vec::new(), Vec::new(), Vec::new());
        let mut transposed = Vec::new();
        let mut first_param_layer = None;
        for layer in &plan.layers {
            let is_dense = matches!(layer.kind, LayerKind::Dense(_));
            let mut add_params = |nodes_len: usize| -> Result<usize, EngineError> {
                first_param_layer.get_or_insert(nodes_len);
                let at = params.len();
                for t in layer.tensors.iter().filter(|t| t.role.trainable()) {
                    let w = weights
                        .get(&t.name)
                        .ok_or_else(|| EngineError::MissingTensor(t.name.clone()))?;
                    let v = w.flatten_all()?.to_vec1::<f32>()?;
                    match (is_dense && t.role == Role::Weight, t.shape.as_slice()) {
                        (true, &[o, i]) => {
                            params.push(mem::copied(&layers::transpose(&v, o, i)));
                            transposed.push(Some((i, o)));
                        }
                        _ => {
                            params.push(mem::copied(&v));
                            transposed.push(None);
                        }
                    }
                    shapes.push(t.shape.clone());
                    names.push(t.name.clone());
                }
                Ok(at)
            };
            let pool = |p: &PoolPlan| layers::Pool {
                c: p.c,
                h: p.h,
                w: p.w,
                kh: p.size.0,
                kw: p.size.1,
                sh: p.stride.0,
                sw: p.stride.1,
                oh: p.out_h,
                ow: p.out_w,
            };
            let op = match &layer.kind {
                LayerKind::Conv2d(c) => Some(Op::Conv {
                    g: conv::Geom {
                        c: c.in_c,
                        h: c.in_h,
                        w: c.in_w,
                        f: c.filters,
                        kh: c.kernel.0,
                        kw: c.kernel.1,
                        sh: c.stride.0,
                        sw: c.stride.1,
                        pt: c.pad.top,
                        pl: c.pad.left,
                        oh: c.out_h,
                        ow: c.out_w,
                    },
                    act: c.activation,
                    param: add_params(nodes.len())?,
                }),
                // A 1x1 window with stride 1 is the identity (torch-cnn's pool).
                LayerKind::MaxPool2d(p) | LayerKind::AvgPool2d(p) if p.is_identity() => None,
                LayerKind::MaxPool2d(p) => Some(Op::MaxPool(pool(p))),
                LayerKind::AvgPool2d(p) => Some(Op::AvgPool(pool(p))),
                // NCHW rows are already flat in channel-major order.
                LayerKind::Flatten => None,
                LayerKind::Dense(d) => Some(Op::Dense {
                    i: d.inputs,
                    o: d.units,
                    act: d.activation,
                    param: add_params(nodes.len())?,
                }),
                LayerKind::Dropout { rate } => Some(Op::Dropout { rate: *rate }),
                LayerKind::BatchNorm(_) => unreachable!("refused by cpu_kernels_unsupported"),
            };
            if let Some(op) = op {
                nodes.push(Node {
                    op,
                    out_len: layer.output_len(),
                });
            }
        }
        Ok(FastNet {
            grads: Vec::new(),
            optim: optim::Optim::none(),
            input_len: plan.input_len(),
            classes: plan.classes(),
            first_param_layer: first_param_layer.unwrap_or(usize::MAX),
            fused_sgd: None,
            updated: Vec::new(),
            bufs: Buffers::default(),
            pool: std::sync::Mutex::new(Vec::new()),
            profile: None,
            nodes,
            names,
            shapes,
            params,
            transposed,
        })
    }

    fn buffers(&self, cap: usize, train: bool) -> Buffers {
        let per = |f: &dyn Fn(&Node) -> usize| -> Vec<usize> { self.nodes.iter().map(f).collect() };
        Buffers {
            cap,
            input: mem::zeroed(cap * self.input_len),
            outs: per(&|n| n.out_len)
                .into_iter()
                .map(|l| mem::zeroed(cap * l))
                .collect(),
            args: per(&|n| match n.op {
                Op::MaxPool(_) => n.out_len,
                _ => 0,
            })
            .into_iter()
            .map(|l| vec![0; cap * l])
            .collect(),
            masks: per(&|n| match n.op {
                Op::Dropout { .. } if train => n.out_len,
                _ => 0,
            })
            .into_iter()
            .map(|l| vec![0.0; cap * l])
            .collect(),
            logits: vec![0.0; cap * self.classes],
            grads: if train {
                per(&|n| n.out_len)
                    .into_iter()
                    .map(|l| mem::zeroed(cap * l))
                    .collect()
            } else {
                vec![]
            },
        }
    }

    fn load_optimizer(&mut self, optimizer: &Optimizer) -> Result<(), EngineError> {
        let state: HashMap<String, Tensor> = optimizer.state_tensors()?.into_iter().collect();
        for ((name, slot), tr) in self
            .names
            .iter()
            .zip(&mut self.optim.slots)
            .zip(&self.transposed)
        {
            let get = |k: String| -> Result<Vec<f32>, EngineError> {
                let t = state
                    .get(&k)
                    .ok_or_else(|| EngineError::Checkpoint(format!("no optimizer tensor {k}")))?;
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                // Stored like the parameter: transposed for dense weights.
                Ok(match tr {
                    Some((i, o)) => layers::transpose(&v, *o, *i),
                    None => v,
                })
            };
            match slot {
                optim::Slot::None | optim::Slot::Frozen => {}
                optim::Slot::Momentum(b) => *b = get(format!("{name}.momentum_buffer"))?,
                optim::Slot::Adam { step, m, v } => {
                    let s = state
                        .get(&format!("{name}.step"))
                        .ok_or_else(|| EngineError::Checkpoint(format!("no {name}.step")))?;
                    *step = s.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? as u64;
                    *m = get(format!("{name}.exp_avg"))?;
                    *v = get(format!("{name}.exp_avg_sq"))?;
                }
            }
        }
        self.optim.steps = optimizer.steps();
        Ok(())
    }

    /// Copies the weights and optimizer state into the Candle model and optimizer.
    pub fn write_back(
        &self,
        model: &mut Model,
        optimizer: &mut Optimizer,
    ) -> Result<(), EngineError> {
        let dev = model.device().clone();
        let mut weights = HashMap::new();
        let mut state = HashMap::new();
        for (((name, shape), (p, slot)), tr) in self
            .names
            .iter()
            .zip(&self.shapes)
            .zip(self.params.iter().zip(&self.optim.slots))
            .zip(&self.transposed)
        {
            // Back to PyTorch's layout.
            let tensor = |v: &[f32], dims: &[usize]| match tr {
                Some((i, o)) => Tensor::from_vec(layers::transpose(v, *i, *o), dims, &dev),
                None => Tensor::from_slice(v, dims, &dev),
            };
            weights.insert(name.clone(), tensor(p, shape)?);
            match slot {
                optim::Slot::None | optim::Slot::Frozen => {}
                optim::Slot::Momentum(b) => {
                    state.insert(format!("{name}.momentum_buffer"), tensor(b, shape)?);
                }
                optim::Slot::Adam { step, m, v } => {
                    state.insert(format!("{name}.step"), Tensor::new(*step as f32, &dev)?);
                    state.insert(format!("{name}.exp_avg"), tensor(m, shape)?);
                    state.insert(format!("{name}.exp_avg_sq"), tensor(v, shape)?);
                }
            }
        }
        model.load_state_dict(&weights)?;
        optimizer.load_state(self.optim.steps, &state)?;
        Ok(())
    }

    /// Starts recording where a step's time goes (see [`FastNet::profile`]).
    /// The rate of the steps from now on (a schedule's): the optimizer's, and the fused
    /// SGD update's where dense layers apply it themselves.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.optim.set_learning_rate(lr);
        if let Some((rate, _)) = &mut self.fused_sgd {
            *rate = lr;
        }
    }

    pub fn enable_profile(&mut self) {
        self.profile = Some(Profile {
            forward: vec![0.0; self.nodes.len()],
            backward: vec![0.0; self.nodes.len()],
            ..Profile::default()
        });
    }

    /// Layer names and the recorded profile.
    pub fn profile(&self) -> Option<(Vec<String>, Profile)> {
        let names = self
            .nodes
            .iter()
            .map(|n| match &n.op {
                Op::Conv { g, .. } => format!("conv {}x{}x{} -> {}", g.c, g.h, g.w, g.f),
                Op::Dense { i, o, .. } => format!("dense {i} -> {o}"),
                Op::MaxPool(_) => "max_pool".into(),
                Op::AvgPool(_) => "avg_pool".into(),
                Op::Dropout { .. } => "dropout".into(),
            })
            .collect();
        self.profile.clone().map(|p| (names, p))
    }

    /// Runs the layers on the first `n` rows of `b.input`.
    fn forward(&self, b: &mut Buffers, n: usize, rng: Option<&mut Rng>) -> Vec<f64> {
        let mut times = Vec::new();
        self.forward_timed(b, n, rng, &mut times);
        times
    }

    fn forward_timed(
        &self,
        b: &mut Buffers,
        n: usize,
        mut rng: Option<&mut Rng>,
        times: &mut Vec<f64>,
    ) {
        let last = self.nodes.len() - 1;
        // A max pooling that the convolution before it has already done.
        let mut pooled = false;
        for (l, node) in self.nodes.iter().enumerate() {
            let t0 = std::time::Instant::now();
            let (before, after) = b.outs.split_at_mut(l);
            let x: &[f32] = if l == 0 { &b.input } else { &before[l - 1] };
            let (cur, next) = after.split_at_mut(1);
            let y = &mut cur[0][..n * node.out_len];
            match &node.op {
                Op::Conv { g, act, param } => {
                    let (w, bias) = (&self.params[*param], &self.params[param + 1]);
                    // A 2x2 max pooling next is done from each sample's output while it is
                    // in cache, instead of in a pass of its own over the batch.
                    let pool = match self.nodes.get(l + 1) {
                        Some(Node {
                            op: Op::MaxPool(p),
                            out_len,
                            ..
                        }) if conv::can_pool(g, p) => Some(conv::Pooled {
                            pool: p,
                            y: &mut next[0][..n * out_len],
                            arg: &mut b.args[l + 1],
                        }),
                        _ => None,
                    };
                    pooled = pool.is_some();
                    conv::forward_pooled(g, &x[..n * g.in_len()], w, bias, y, *act, pool);
                    times.push(t0.elapsed().as_secs_f64());
                    continue;
                }
                Op::MaxPool(_) if std::mem::take(&mut pooled) => {}
                Op::Dense { i, o, act, param } => {
                    let (w, bias) = (&self.params[*param], &self.params[param + 1]);
                    layers::dense(x, w, bias, y, n, *i, *o);
                    if l == last && *act == Activation::Softmax {
                        b.logits[..n * o].copy_from_slice(y);
                    }
                    layers::activate(*act, y, *o);
                }
                Op::MaxPool(p) => layers::max_pool(p, &x[..n * p.in_len()], y, &mut b.args[l]),
                Op::AvgPool(p) => layers::avg_pool(p, &x[..n * p.in_len()], y),
                Op::Dropout { rate } => match rng.as_deref_mut() {
                    Some(rng) if *rate > 0.0 && !b.masks[l].is_empty() => {
                        let keep = 1.0 - rate;
                        let scale = (1.0 / keep) as f32;
                        let mask = &mut b.masks[l][..y.len()];
                        for m in mask.iter_mut() {
                            *m = if rng.next_f64() < keep { scale } else { 0.0 };
                        }
                        for ((y, x), m) in y.iter_mut().zip(x).zip(mask.iter()) {
                            *y = x * m;
                        }
                    }
                    _ => y.copy_from_slice(&x[..y.len()]),
                },
            }
            times.push(t0.elapsed().as_secs_f64());
        }
    }

    /// Whether the loss reads the last layer's logits (softmax output) or its output.
    fn loss_on_logits(&self) -> bool {
        matches!(
            self.nodes.last().map(|n| &n.op),
            Some(Op::Dense {
                act: Activation::Softmax,
                ..
            })
        )
    }

    /// One training step on rows `x` (`[n, input]`) with labels `y`: forward, backward and
    /// the optimizer update. Returns the summed loss and the number of correct predictions.
    pub fn train_step(&mut self, x: &[f32], y: &[u32], rng: &mut Rng) -> (f64, usize) {
        let n = y.len();
        let mut b = std::mem::take(&mut self.bufs);
        if b.cap < n {
            b = self.buffers(n, true);
        }
        b.input[..x.len()].copy_from_slice(x);
        let fwd = self.forward(&mut b, n, Some(rng));
        let mut bwd = vec![0.0; self.nodes.len()];
        let t0 = std::time::Instant::now();
        let result = self.backward(&mut b, y, &mut bwd);
        let t1 = std::time::Instant::now();
        self.optim
            .step(&mut self.params, &self.grads, &self.updated);
        if let Some(p) = &mut self.profile {
            for (a, v) in p.forward.iter_mut().zip(&fwd) {
                *a += v;
            }
            for (a, v) in p.backward.iter_mut().zip(&bwd) {
                *a += v;
            }
            p.loss += (t1 - t0).as_secs_f64() - bwd.iter().sum::<f64>();
            p.optimizer += t1.elapsed().as_secs_f64();
            p.steps += 1;
        }
        self.bufs = b;
        result
    }

    fn backward(&mut self, b: &mut Buffers, labels: &[u32], times: &mut [f64]) -> (f64, usize) {
        let n = labels.len();
        let last = self.nodes.len() - 1;
        let c = self.classes;
        let on_logits = self.loss_on_logits();
        let out = &b.outs[last][..n * c];
        let correct = layers::correct(out, labels, c);
        let z = if on_logits { &b.logits[..n * c] } else { out };
        let loss = layers::cross_entropy(z, labels, c, n as f32, Some(&mut b.grads[last][..n * c]));
        for l in (0..=last).rev() {
            if l < self.first_param_layer {
                break;
            }
            let t0 = std::time::Instant::now();
            let (below, rest) = b.grads.split_at_mut(l);
            let node = &self.nodes[l];
            let gy = &mut rest[0][..n * node.out_len];
            let x: &[f32] = if l == 0 { &b.input } else { &b.outs[l - 1] };
            let y = &b.outs[l][..n * node.out_len];
            let dx = if l > self.first_param_layer {
                below.last_mut().map(|v| &mut v[..])
            } else {
                None
            };
            match &node.op {
                Op::Conv { g, act, param } => {
                    // ReLU's gradient is taken inside the convolution's backward pass.
                    let mut relu_out = None;
                    if !(l == last && on_logits) {
                        if *act == Activation::Relu {
                            relu_out = Some(y);
                        } else {
                            layers::activate_backward(*act, y, gy, node.out_len);
                        }
                    }
                    let (dw, db) = two(&mut self.grads, *param);
                    conv::backward(
                        g,
                        &x[..n * g.in_len()],
                        &self.params[*param],
                        gy,
                        relu_out,
                        dw,
                        db,
                        dx,
                    );
                }
                Op::Dense { i, o, act, param } => {
                    if !(l == last && on_logits) {
                        layers::activate_backward(*act, y, gy, *o);
                    }
                    let (dw, db) = two(&mut self.grads, *param);
                    if let Some((lr, wd)) = self.fused_sgd {
                        let (w, bias) = two(&mut self.params, *param);
                        layers::dense_backward_sgd(x, w, bias, gy, db, dx, n, *i, *o, lr, wd);
                        self.updated[*param] = true;
                        self.updated[param + 1] = true;
                    } else {
                        layers::dense_backward(x, &self.params[*param], gy, dw, db, dx, n, *i, *o);
                    }
                }
                Op::MaxPool(p) => {
                    if let Some(dx) = dx {
                        layers::max_pool_backward(p, gy, &b.args[l], &mut dx[..n * p.in_len()]);
                    }
                }
                Op::AvgPool(p) => {
                    if let Some(dx) = dx {
                        layers::avg_pool_backward(p, gy, &mut dx[..n * p.in_len()]);
                    }
                }
                Op::Dropout { rate } => {
                    if let Some(dx) = dx {
                        let dx = &mut dx[..gy.len()];
                        if *rate > 0.0 {
                            for ((d, g), m) in dx.iter_mut().zip(gy.iter()).zip(&b.masks[l]) {
                                *d = g * m;
                            }
                        } else {
                            dx.copy_from_slice(gy);
                        }
                    }
                }
            }
            times[l] = t0.elapsed().as_secs_f64();
        }
        (loss, correct)
    }

    /// The last layer's output (after its activation), `[n, classes]`, for `n` rows of
    /// `x`, in inference mode. Safe to call from many threads at once.
    pub fn outputs(&self, x: &[f32], n: usize) -> Vec<f32> {
        let c = self.classes;
        let mut out = Vec::with_capacity(n * c);
        self.inference_chunks(&x[..n * self.input_len], |b, _, m| {
            out.extend_from_slice(&b.outs[self.nodes.len() - 1][..m * c]);
        });
        out
    }

    /// Runs the forward pass over `x` in chunks of up to `EVAL_ROWS` rows, calling `f` with
    /// the buffers, the chunk's first row and its row count. Buffers come from (and go
    /// back to) the pool, so repeated calls allocate nothing.
    fn inference_chunks(&self, x: &[f32], mut f: impl FnMut(&Buffers, usize, usize)) {
        let rows = EVAL_ROWS.min(x.len() / self.input_len).max(1);
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        let mut b = match pooled {
            Some(b) if b.cap >= rows => b,
            _ => self.buffers(rows, false),
        };
        for (k, xs) in x.chunks(b.cap * self.input_len).enumerate() {
            let m = xs.len() / self.input_len;
            b.input[..xs.len()].copy_from_slice(xs);
            self.forward(&mut b, m, None);
            f(&b, k * b.cap, m);
        }
        if let Ok(mut p) = self.pool.lock() {
            p.push(b);
        }
    }

    /// Classes the network outputs.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Summed loss and correct predictions over `y.len()` rows of `x`, in inference mode.
    pub fn evaluate(&self, x: &[f32], y: &[u32]) -> (f64, usize) {
        let (mut loss, mut correct) = (0f64, 0usize);
        let c = self.classes;
        let on_logits = self.loss_on_logits();
        self.inference_chunks(&x[..y.len() * self.input_len], |b, lo, n| {
            let ys = &y[lo..lo + n];
            let out = &b.outs[self.nodes.len() - 1][..n * c];
            correct += layers::correct(out, ys, c);
            let z = if on_logits { &b.logits[..n * c] } else { out };
            loss += layers::cross_entropy(z, ys, c, n as f32, None);
        });
        (loss, correct)
    }
}

/// The weight and bias gradients of the parameter pair starting at `at`.
fn two(v: &mut [Vec<f32>], at: usize) -> (&mut [f32], &mut [f32]) {
    let (a, b) = v[at..].split_at_mut(1);
    (&mut a[0], &mut b[0])
}

/// Runs `f` on the contiguous host data of a CPU tensor, without copying it.
pub fn with_host_slice<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> R,
) -> Result<R, EngineError> {
    if !matches!(t.device(), Device::Cpu) {
        return Err(EngineError::Device("tensor is not on the CPU".into()));
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(EngineError::Device("tensor is not on the CPU".into()));
    };
    let data = cpu.as_slice::<T>()?;
    let (lo, hi) = layout
        .contiguous_offsets()
        .ok_or_else(|| EngineError::Device("tensor is not contiguous".into()))?;
    Ok(f(&data[lo..hi]))
}
