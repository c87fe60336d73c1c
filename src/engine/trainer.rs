//! The training loop.
//!
//! Plain synchronous code: the server runs it on a blocking thread of its own, never on
//! the async runtime. It reports through an [`Observer`]: a progress call per batch, a
//! checkpoint per epoch (the caller decides where it goes: files for `trainyard train`,
//! PostgreSQL for the service), and a cancellation check between batches.
//!
//! Reproducibility: on the CPU the same spec and seed give identical metrics. All
//! randomness comes from seed-derived streams (init, each epoch's shuffle and dropout), so
//! a run resumed from epoch k's checkpoint continues exactly as the uninterrupted one.

use candle_core::{D, DType, Device, Tensor};

use super::EngineError;
use super::checkpoint::Checkpoint;
use super::cpu::{FastNet, with_host_slice};
use super::metrics::EpochMetrics;
use super::model::{Forward, Model};
use super::optim::Optimizer;
use super::rng::Rng;
use crate::data::prepare::{Prepared, Samples};
use crate::spec::{Activation, ExperimentSpec, Summary};

/// Batch size used for evaluation (it does not change the figures).
const EVAL_BATCH: usize = 1000;
/// On a GPU, batches between reads of the running loss (each read waits for the device).
const SYNC_EVERY: usize = 50;

/// Progress within an epoch.
#[derive(Debug, Clone)]
pub struct BatchProgress {
    pub epoch: u32,
    pub epochs: u32,
    /// Batches done in this epoch (1-based after the batch).
    pub batch: usize,
    pub batches: usize,
    /// Mean loss of the latest batch whose loss was read: the batch just trained on the
    /// CPU; on a GPU, reads are spaced out (see `SYNC_EVERY`).
    pub loss: f64,
}

/// What the loop tells its caller, and asks it.
pub trait Observer {
    fn on_batch(&mut self, _progress: &BatchProgress) {}
    /// Called after each epoch with its checkpoint (metrics in `history.last()`). An error
    /// stops training and is returned from [`Trainer::run`].
    fn on_epoch(&mut self, _checkpoint: &Checkpoint) -> Result<(), EngineError> {
        Ok(())
    }
    /// Checked before every batch; `true` stops the run (the partial epoch is dropped).
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// The code that trains a model: the fused CPU kernels ([`super::cpu`]) where they can,
/// else Candle's graph, for the reason given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainingPath {
    CpuKernels,
    CandleGraph(String),
}

impl TrainingPath {
    /// A short name for logs: `cpu-kernels` or `candle-graph`.
    pub fn name(&self) -> &'static str {
        match self {
            TrainingPath::CpuKernels => "cpu-kernels",
            TrainingPath::CandleGraph(_) => "candle-graph",
        }
    }

    /// Why Candle's graph trains it (`None` on the CPU kernels).
    pub fn reason(&self) -> Option<&str> {
        match self {
            TrainingPath::CpuKernels => None,
            TrainingPath::CandleGraph(why) => Some(why),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed { epochs: u32 },
    Stopped { epochs_done: u32 },
}

struct DeviceSamples {
    x: Tensor,
    y: Tensor,
    len: usize,
}

fn upload(s: &Samples, shape: [usize; 3], device: &Device) -> Result<DeviceSamples, EngineError> {
    let x = Tensor::from_slice(&s.x, (s.len, shape[0], shape[1], shape[2]), device)?;
    let y: Vec<u32> = s.y.iter().map(|&v| v as u32).collect();
    let y = Tensor::from_vec(y, s.len, device)?;
    Ok(DeviceSamples { x, y, len: s.len })
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

/// A model, its optimizer and its data, ready to train.
pub struct Trainer {
    spec: ExperimentSpec,
    model: Model,
    optimizer: Optimizer,
    train: DeviceSamples,
    val: Option<DeviceSamples>,
    test: DeviceSamples,
    history: Vec<EpochMetrics>,
    device: Device,
    summary: Summary,
    /// The fused CPU path ([`super::cpu`]), when the device is the CPU and the spec's
    /// layers are all supported there; otherwise Candle's graph trains.
    fast: Option<FastNet>,
}

impl Trainer {
    /// Builds the model of a validated spec on `device` and uploads the data once.
    pub fn new(
        spec: &ExperimentSpec,
        summary: &Summary,
        data: &Prepared,
        device: &Device,
    ) -> Result<Self, EngineError> {
        if data.train.len == 0 {
            return Err(EngineError::Data(
                "dataset: no training samples left (check train_limit and the validation split)"
                    .into(),
            ));
        }
        if data.shape != summary.input {
            return Err(EngineError::Data(format!(
                "data has shape {:?}, the model expects {:?}",
                data.shape, summary.input
            )));
        }
        let model = Model::new(spec, summary, device)?;
        let optimizer = Optimizer::new(&spec.optimizer, model.params().to_vec())?;
        let fast = match device {
            Device::Cpu if FastNet::supports(spec).is_ok() => Some(FastNet::new(
                spec,
                summary,
                &model,
                &optimizer,
                spec.batch_size as usize,
            )?),
            _ => None,
        };
        Ok(Trainer {
            spec: spec.clone(),
            optimizer,
            train: upload(&data.train, data.shape, device)?,
            val: match &data.val {
                Some(v) if v.len > 0 => Some(upload(v, data.shape, device)?),
                _ => None,
            },
            test: upload(&data.test, data.shape, device)?,
            model,
            history: Vec::new(),
            device: device.clone(),
            summary: summary.clone(),
            fast,
        })
    }

    /// Trains with Candle's graph even where the fused CPU path could run (to compare the
    /// two, or to measure what the CPU path gains).
    pub fn use_candle_graph(&mut self) {
        self.fast = None;
    }

    /// Where the CPU path's time went, per layer, when `profile` was set before training.
    pub fn cpu_profile(&self) -> Option<(Vec<String>, super::cpu::Profile)> {
        self.fast.as_ref().and_then(|f| f.profile())
    }

    /// Records per-layer times on the CPU path.
    pub fn enable_cpu_profile(&mut self) {
        if let Some(f) = &mut self.fast {
            f.enable_profile();
        }
    }

    /// Whether the fused CPU path trains this model.
    pub fn uses_cpu_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Which code trains this model, and when it is Candle's graph, why.
    pub fn path(&self) -> TrainingPath {
        if self.fast.is_some() {
            return TrainingPath::CpuKernels;
        }
        let why = match &self.device {
            Device::Cpu => match FastNet::supports(&self.spec) {
                Err(refused) => format!("the CPU kernels do not support {refused}"),
                Ok(()) => "forced (use_candle_graph)".into(),
            },
            Device::Cuda(_) => "the device is CUDA".into(),
            Device::Metal(_) => "the device is Metal".into(),
        };
        TrainingPath::CandleGraph(why)
    }

    /// Rebuilds the CPU path from the Candle model and optimizer after they were loaded.
    fn resync(&mut self) -> Result<(), EngineError> {
        if self.fast.is_some() {
            self.fast = Some(FastNet::new(
                &self.spec,
                &self.summary,
                &self.model,
                &self.optimizer,
                self.spec.batch_size as usize,
            )?);
        }
        Ok(())
    }

    /// Starts from given weights instead of the initialisation (warm start, fine-tuning).
    pub fn load_weights(
        &mut self,
        weights: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), EngineError> {
        self.model.load_state_dict(weights)?;
        self.resync()
    }

    /// Continues from a checkpoint of this spec: weights, optimizer state and history.
    pub fn resume(&mut self, ckpt: &Checkpoint) -> Result<(), EngineError> {
        if ckpt.spec.model != self.spec.model {
            return Err(EngineError::Checkpoint(
                "the checkpoint was trained with a different model".into(),
            ));
        }
        self.model.load_state_dict(&ckpt.weight_map())?;
        let state = ckpt
            .optimizer
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_device(&self.device)?)))
            .collect::<Result<_, candle_core::Error>>()?;
        self.optimizer.load_state(ckpt.optimizer_steps, &state)?;
        self.history = ckpt.history.clone();
        self.history.truncate(ckpt.epoch as usize);
        self.resync()
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> u32 {
        self.history.len() as u32
    }

    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    /// Trains the remaining epochs of the spec.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<Outcome, EngineError> {
        while self.epochs_done() < self.spec.epochs {
            let epoch = self.epochs_done() + 1;
            let Some((train_loss, train_accuracy, secs)) = self.train_epoch(epoch, observer)?
            else {
                return Ok(Outcome::Stopped {
                    epochs_done: epoch - 1,
                });
            };
            if let Some(fast) = &self.fast {
                fast.write_back(&mut self.model, &mut self.optimizer)?;
            }
            let (val_loss, val_accuracy) = match &self.val {
                Some(v) => {
                    let (l, a) = evaluate_on(&mut self.model, self.fast.as_ref(), v)?;
                    (Some(l), Some(a))
                }
                None => (None, None),
            };
            let (test_loss, test_accuracy) =
                evaluate_on(&mut self.model, self.fast.as_ref(), &self.test)?;
            self.history.push(EpochMetrics {
                epoch,
                train_loss,
                train_accuracy,
                val_loss,
                val_accuracy,
                test_loss: Some(test_loss),
                test_accuracy: Some(test_accuracy),
                train_seconds: secs,
                images_per_second: self.train.len as f64 / secs.max(1e-9),
            });
            observer.on_epoch(&self.checkpoint()?)?;
        }
        Ok(Outcome::Completed {
            epochs: self.spec.epochs,
        })
    }

    /// One epoch of training steps. `None` when the observer asked to stop.
    fn train_epoch(
        &mut self,
        epoch: u32,
        observer: &mut dyn Observer,
    ) -> Result<Option<(f64, f64, f64)>, EngineError> {
        let start = std::time::Instant::now();
        let n = self.train.len;
        let bs = self.spec.batch_size as usize;
        let batches = n.div_ceil(bs);
        let order = if self.spec.shuffle {
            let perm = Rng::derive(self.spec.seed, "shuffle", epoch as u64).permutation(n);
            Some(Tensor::from_vec(perm, n, &self.device)?)
        } else {
            None
        };
        let mut dropout = Rng::derive(self.spec.seed, "dropout", epoch as u64);
        let (mut loss_sum, mut correct) = (0f64, 0f64);
        if let Some(fast) = &mut self.fast {
            let perm = self
                .spec
                .shuffle
                .then(|| Rng::derive(self.spec.seed, "shuffle", epoch as u64).permutation(n));
            let row = self.train.x.elem_count() / n.max(1);
            let (mut xb, mut yb) = (vec![0f32; bs * row], vec![0u32; bs]);
            for b in 0..batches {
                if observer.should_stop() {
                    return Ok(None);
                }
                let (lo, len) = (b * bs, bs.min(n - b * bs));
                with_host_slice(&self.train.x, |xs: &[f32]| {
                    with_host_slice(&self.train.y, |ys: &[u32]| {
                        for k in 0..len {
                            let i = perm.as_ref().map_or(lo + k, |p| p[lo + k] as usize);
                            xb[k * row..(k + 1) * row].copy_from_slice(&xs[i * row..(i + 1) * row]);
                            yb[k] = ys[i];
                        }
                    })
                })??;
                let (l, c) = fast.train_step(&xb[..len * row], &yb[..len], &mut dropout);
                if !l.is_finite() {
                    return Err(EngineError::NonFinite(format!(
                        "loss became {l} at epoch {epoch}, batch {}",
                        b + 1
                    )));
                }
                loss_sum += l;
                correct += c as f64;
                observer.on_batch(&BatchProgress {
                    epoch,
                    epochs: self.spec.epochs,
                    batch: b + 1,
                    batches,
                    loss: l / len as f64,
                });
            }
            let secs = start.elapsed().as_secs_f64();
            return Ok(Some((loss_sum / n as f64, correct / n as f64, secs)));
        }
        // The epoch's samples in training order, gathered once (one copy, not two gathers
        // per batch); batches are then views.
        let (xs, ys) = match &order {
            Some(idx) => (
                self.train.x.index_select(idx, 0)?,
                self.train.y.index_select(idx, 0)?,
            ),
            None => (self.train.x.clone(), self.train.y.clone()),
        };
        // Running sums stay on the device: reading a scalar back waits for the device to
        // drain, so on a GPU the loss is read only at sync points (every batch for the
        // first ten, then every SYNC_EVERY, and the last); progress reports the loss of
        // the latest batch read.
        let on_cpu = matches!(self.device, Device::Cpu);
        let zero = Tensor::zeros((), DType::F32, &self.device)?;
        let (mut loss_acc, mut correct_acc) = (zero.clone(), zero);
        let mut last_loss = f64::NAN;
        for b in 0..batches {
            if observer.should_stop() {
                return Ok(None);
            }
            let (lo, len) = (b * bs, bs.min(n - b * bs));
            let (x, y) = (xs.narrow(0, lo, len)?, ys.narrow(0, lo, len)?);
            let f = self.model.forward(&x, true, Some(&mut dropout))?;
            let (batch_loss_sum, batch_correct) = loss_and_correct(&f, &y)?;
            let loss = (&batch_loss_sum / len as f64)?;
            let grads = loss.backward()?;
            self.optimizer.step(&grads)?;
            loss_acc = (loss_acc + batch_loss_sum.detach())?;
            correct_acc = (correct_acc + batch_correct)?;
            if on_cpu || b < 10 || (b + 1) % SYNC_EVERY == 0 || b + 1 == batches {
                last_loss = batch_loss_sum.to_scalar::<f32>()? as f64 / len as f64;
                let total = loss_acc.to_scalar::<f32>()? as f64;
                if !last_loss.is_finite() || !total.is_finite() {
                    return Err(EngineError::NonFinite(format!(
                        "loss became {last_loss} by epoch {epoch}, batch {}",
                        b + 1
                    )));
                }
            }
            observer.on_batch(&BatchProgress {
                epoch,
                epochs: self.spec.epochs,
                batch: b + 1,
                batches,
                loss: last_loss,
            });
        }
        loss_sum = loss_acc.to_scalar::<f32>()? as f64;
        correct = correct_acc.to_scalar::<f32>()? as f64;
        let secs = start.elapsed().as_secs_f64();
        Ok(Some((loss_sum / n as f64, correct / n as f64, secs)))
    }

    /// The checkpoint of the current state.
    pub fn checkpoint(&self) -> Result<Checkpoint, EngineError> {
        let optimizer = self
            .optimizer
            .state_tensors()?
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
            .collect::<Result<_, candle_core::Error>>()?;
        Ok(Checkpoint {
            spec: self.spec.clone(),
            epoch: self.epochs_done(),
            history: self.history.clone(),
            weights: self.model.state_dict()?,
            optimizer_steps: self.optimizer.steps(),
            optimizer,
        })
    }
}

/// Mean loss and accuracy over a sample set, in inference mode, on the CPU path when
/// there is one.
fn evaluate_on(
    model: &mut Model,
    fast: Option<&FastNet>,
    s: &DeviceSamples,
) -> Result<(f64, f64), EngineError> {
    let Some(fast) = fast else {
        return evaluate(model, s);
    };
    let (loss, correct) = with_host_slice(&s.x, |xs: &[f32]| {
        with_host_slice(&s.y, |ys: &[u32]| fast.evaluate(xs, ys))
    })??;
    Ok((loss / s.len as f64, correct as f64 / s.len as f64))
}

/// Mean loss and accuracy over a sample set, in inference mode.
fn evaluate(model: &mut Model, s: &DeviceSamples) -> Result<(f64, f64), EngineError> {
    let (mut loss, mut correct) = (0f64, 0f64);
    let mut lo = 0;
    while lo < s.len {
        let len = EVAL_BATCH.min(s.len - lo);
        let x = s.x.narrow(0, lo, len)?;
        let y = s.y.narrow(0, lo, len)?;
        let f = model.forward(&x, false, None)?;
        let (l, c) = loss_and_correct(&f, &y)?;
        loss += l.to_scalar::<f32>()? as f64;
        correct += c.to_scalar::<f32>()? as f64;
        lo += len;
    }
    Ok((loss / s.len as f64, correct / s.len as f64))
}

/// Class probabilities from a model output, whatever its last activation.
pub fn probabilities(f: &Forward) -> candle_core::Result<Tensor> {
    match f.last_activation {
        Activation::Softmax => Ok(f.output.clone()),
        Activation::LogSoftmax => f.output.exp(),
        _ => candle_nn::ops::softmax_last_dim(&f.output),
    }
}
