//! What runs a training step: Candle's graph or the CPU kernels.
//!
//! [`super::Trainer`] holds the one loop over batches (the epoch's order, the observer's
//! stop check and progress, the divergence check) and asks a [`Backend`] for each step.
//! The Candle model and its optimizer ([`State`]) stay the run's state between epochs
//! whichever backend trains: checkpoints, resume and warm starts read and write them, and
//! the CPU kernels copy their weights back at the end of each epoch.

use candle_core::{D, DType, Device, Tensor};

use super::super::EngineError;
use super::super::cpu::{FastNet, Profile, with_host_slice};
use super::super::model::{Forward, Model};
use super::super::optim::Optimizer;
use super::super::rng::Rng;
use super::TrainingPath;
use crate::spec::ExperimentSpec;
use crate::spec::plan::Plan;

/// Batch size used for evaluation on the graph (it does not change the figures).
use crate::spec::footprint::EVAL_BATCH;

/// Samples uploaded to the training device once.
pub(super) struct DeviceSamples {
    pub x: Tensor,
    pub y: Tensor,
    pub len: usize,
}

/// The Candle model and its optimizer: what checkpoints hold.
pub(super) struct State {
    pub model: Model,
    pub optimizer: Optimizer,
}

/// One batch: rows `lo..lo + len` of the epoch's order; `index` maps them to stored
/// samples (`None`: the stored order).
pub(super) struct Batch<'a> {
    pub lo: usize,
    pub len: usize,
    pub index: Option<&'a [u32]>,
}

/// Losses read back to the host after a step: the batch's summed loss and the epoch's
/// running sum.
pub(super) struct Read {
    pub batch: f64,
    pub total: f64,
}

/// One way of running training steps. The loop is [`super::Trainer`]'s.
pub(super) trait Backend: Send {
    fn path(&self) -> TrainingPath;
    /// Gets ready for an epoch over `train` in `order`.
    fn begin_epoch(
        &mut self,
        train: &DeviceSamples,
        order: Option<&[u32]>,
    ) -> Result<(), EngineError>;
    /// One forward, backward and optimizer step. Returns the losses when `read` asks for
    /// them (a read waits for a GPU to drain).
    fn step(
        &mut self,
        st: &mut State,
        train: &DeviceSamples,
        batch: Batch<'_>,
        dropout: &mut Rng,
        read: bool,
    ) -> Result<Option<Read>, EngineError>;
    /// The epoch's summed loss and number correct; leaves `st` holding the trained
    /// weights and optimizer state.
    fn end_epoch(&mut self, st: &mut State) -> Result<(f64, f64), EngineError>;
    /// Mean loss and accuracy over `s`, in inference mode.
    fn evaluate(&self, st: &mut State, s: &DeviceSamples) -> Result<(f64, f64), EngineError>;
    /// `st` was loaded from outside (a warm start, a resume): take its state.
    fn reload(&mut self, st: &State) -> Result<(), EngineError>;
    /// The steps from now on use `lr` (`st.optimizer` has it already); for a backend that
    /// keeps an optimizer of its own.
    fn set_learning_rate(&mut self, _lr: f64) {}
    fn enable_profile(&mut self) {}
    fn profile(&self) -> Option<(Vec<String>, Profile)> {
        None
    }
}

/// Candle's graph: any device, any layer.
pub(super) struct Graph {
    device: Device,
    why: String,
    epoch: Option<GraphEpoch>,
}

/// The epoch's samples in training order, and running sums kept on the device.
struct GraphEpoch {
    xs: Tensor,
    ys: Tensor,
    loss: Tensor,
    correct: Tensor,
}

impl Graph {
    pub fn new(device: &Device, why: String) -> Self {
        Graph {
            device: device.clone(),
            why,
            epoch: None,
        }
    }
}

impl Backend for Graph {
    fn path(&self) -> TrainingPath {
        TrainingPath::CandleGraph(self.why.clone())
    }

    fn begin_epoch(
        &mut self,
        train: &DeviceSamples,
        order: Option<&[u32]>,
    ) -> Result<(), EngineError> {
        // Gathered once (one copy, not two gathers per batch); batches are then views.
        let (xs, ys) = match order {
            Some(o) => {
                let idx = Tensor::from_slice(o, o.len(), &self.device)?;
                (
                    train.x.index_select(&idx, 0)?,
                    train.y.index_select(&idx, 0)?,
                )
            }
            None => (train.x.clone(), train.y.clone()),
        };
        let zero = Tensor::zeros((), DType::F32, &self.device)?;
        self.epoch = Some(GraphEpoch {
            xs,
            ys,
            loss: zero.clone(),
            correct: zero,
        });
        Ok(())
    }

    fn step(
        &mut self,
        st: &mut State,
        _train: &DeviceSamples,
        b: Batch<'_>,
        dropout: &mut Rng,
        read: bool,
    ) -> Result<Option<Read>, EngineError> {
        let e = self.epoch.as_mut().expect("begin_epoch comes first");
        let (x, y) = (e.xs.narrow(0, b.lo, b.len)?, e.ys.narrow(0, b.lo, b.len)?);
        let f = st.model.forward(&x, true, Some(dropout))?;
        let (batch_loss_sum, batch_correct) = loss_and_correct(&f, &y)?;
        let loss = (&batch_loss_sum / b.len as f64)?;
        let grads = loss.backward()?;
        st.optimizer.step(&grads)?;
        // Running sums stay on the device: reading a scalar back waits for it to drain.
        e.loss = (&e.loss + batch_loss_sum.detach())?;
        e.correct = (&e.correct + batch_correct)?;
        if !read {
            return Ok(None);
        }
        Ok(Some(Read {
            batch: batch_loss_sum.to_scalar::<f32>()? as f64,
            total: e.loss.to_scalar::<f32>()? as f64,
        }))
    }

    fn end_epoch(&mut self, _st: &mut State) -> Result<(f64, f64), EngineError> {
        let e = self.epoch.take().expect("begin_epoch comes first");
        Ok((
            e.loss.to_scalar::<f32>()? as f64,
            e.correct.to_scalar::<f32>()? as f64,
        ))
    }

    fn evaluate(&self, st: &mut State, s: &DeviceSamples) -> Result<(f64, f64), EngineError> {
        let (mut loss, mut correct) = (0f64, 0f64);
        let mut lo = 0;
        while lo < s.len {
            let len = EVAL_BATCH.min(s.len - lo);
            let x = s.x.narrow(0, lo, len)?;
            let y = s.y.narrow(0, lo, len)?;
            let f = st.model.forward(&x, false, None)?;
            let (l, c) = loss_and_correct(&f, &y)?;
            loss += l.to_scalar::<f32>()? as f64;
            correct += c.to_scalar::<f32>()? as f64;
            lo += len;
        }
        Ok((loss / s.len as f64, correct / s.len as f64))
    }

    fn reload(&mut self, _st: &State) -> Result<(), EngineError> {
        // The graph trains the state itself.
        Ok(())
    }
}

/// Per-sample cross-entropy summed over the batch, and the number of correct predictions.
fn loss_and_correct(f: &Forward, y: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let logp = candle_nn::ops::log_softmax(&f.loss_input, D::Minus1)?;
    let picked = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    let loss_sum = picked.sum_all()?.neg()?;
    let correct = f
        .output
        .argmax(D::Minus1)?
        .eq(y)?
        .to_dtype(DType::F32)?
        .sum_all()?;
    Ok((loss_sum, correct))
}

/// [`crate::engine::cpu`]'s fused kernels, on the host.
pub(super) struct Kernels {
    net: FastNet,
    spec: ExperimentSpec,
    plan: Plan,
    /// One batch of rows and labels, gathered from the stored samples.
    xb: Vec<f32>,
    yb: Vec<u32>,
    loss: f64,
    correct: f64,
}

impl Kernels {
    pub fn new(spec: &ExperimentSpec, plan: &Plan, st: &State) -> Result<Self, EngineError> {
        let bs = spec.batch_size as usize;
        Ok(Kernels {
            net: FastNet::new(spec, plan, &st.model, &st.optimizer, bs)?,
            spec: spec.clone(),
            plan: plan.clone(),
            xb: vec![0.0; bs * plan.input_len()],
            yb: vec![0; bs],
            loss: 0.0,
            correct: 0.0,
        })
    }
}

impl Backend for Kernels {
    fn path(&self) -> TrainingPath {
        TrainingPath::CpuKernels
    }

    fn begin_epoch(
        &mut self,
        _train: &DeviceSamples,
        _order: Option<&[u32]>,
    ) -> Result<(), EngineError> {
        (self.loss, self.correct) = (0.0, 0.0);
        Ok(())
    }

    fn step(
        &mut self,
        _st: &mut State,
        train: &DeviceSamples,
        b: Batch<'_>,
        dropout: &mut Rng,
        _read: bool,
    ) -> Result<Option<Read>, EngineError> {
        let row = self.plan.input_len();
        let (xb, yb) = (&mut self.xb, &mut self.yb);
        with_host_slice(&train.x, |xs: &[f32]| {
            with_host_slice(&train.y, |ys: &[u32]| {
                for k in 0..b.len {
                    let i = b.index.map_or(b.lo + k, |ix| ix[k] as usize);
                    xb[k * row..(k + 1) * row].copy_from_slice(&xs[i * row..(i + 1) * row]);
                    yb[k] = ys[i];
                }
            })
        })??;
        let (l, c) = self
            .net
            .train_step(&xb[..b.len * row], &yb[..b.len], dropout);
        self.loss += l;
        self.correct += c as f64;
        // On the host the losses are there for free.
        Ok(Some(Read {
            batch: l,
            total: self.loss,
        }))
    }

    fn end_epoch(&mut self, st: &mut State) -> Result<(f64, f64), EngineError> {
        self.net.write_back(&mut st.model, &mut st.optimizer)?;
        Ok((self.loss, self.correct))
    }

    fn evaluate(&self, _st: &mut State, s: &DeviceSamples) -> Result<(f64, f64), EngineError> {
        let (loss, correct) = with_host_slice(&s.x, |xs: &[f32]| {
            with_host_slice(&s.y, |ys: &[u32]| self.net.evaluate(xs, ys))
        })??;
        Ok((loss / s.len as f64, correct as f64 / s.len as f64))
    }

    fn reload(&mut self, st: &State) -> Result<(), EngineError> {
        let bs = self.spec.batch_size as usize;
        self.net = FastNet::new(&self.spec, &self.plan, &st.model, &st.optimizer, bs)?;
        Ok(())
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.net.set_learning_rate(lr);
    }

    fn enable_profile(&mut self) {
        self.net.enable_profile();
    }

    fn profile(&self) -> Option<(Vec<String>, Profile)> {
        self.net.profile()
    }
}
