//! The training loop, one for every backend ([`backend`]: the CPU kernels or Candle's
//! graph), chosen once from the spec's plan and the device.
//!
//! Plain synchronous code: the server runs it on a blocking thread of its own, never on
//! the async runtime. It reports through an [`Observer`]: a progress call per batch, a
//! checkpoint per epoch (the caller decides where it goes: files for `trainyard train`,
//! PostgreSQL for the service), and a cancellation check between batches.
//!
//! Reproducibility: on the CPU the same spec and seed give identical metrics. All
//! randomness comes from seed-derived streams (init, each epoch's shuffle and dropout), so
//! a run resumed from epoch k's checkpoint continues exactly as the uninterrupted one.

mod backend;

use candle_core::{Device, Tensor};

use self::backend::{Backend, Batch, DeviceSamples, Graph, Kernels, State};
use super::EngineError;
use super::checkpoint::Checkpoint;
use super::metrics::EpochMetrics;
use super::model::{Forward, Model};
use super::optim::Optimizer;
use super::rng::Rng;
use super::schedule::{LrScheduler, early_stop};
use crate::data::prepare::{Prepared, Samples};
use crate::spec::plan::Plan;
use crate::spec::{Activation, DataInfo, ExperimentSpec};
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
    Completed {
        epochs: u32,
    },
    /// The spec's early stopping ended the run after `epoch`; `best_epoch` had the best
    /// value of its metric.
    EarlyStopped {
        epoch: u32,
        best_epoch: u32,
    },
    Stopped {
        epochs_done: u32,
    },
}

fn upload(s: &Samples, shape: [usize; 3], device: &Device) -> Result<DeviceSamples, EngineError> {
    let x = Tensor::from_slice(&s.x, (s.len, shape[0], shape[1], shape[2]), device)?;
    labels(x, &s.y, s.len, device)
}

/// As [`upload`], taking the samples: on the CPU the tensor is their buffer, not a copy.
fn upload_owned(
    s: Samples,
    shape: [usize; 3],
    device: &Device,
) -> Result<DeviceSamples, EngineError> {
    let x = Tensor::from_vec(s.x, (s.len, shape[0], shape[1], shape[2]), device)?;
    labels(x, &s.y, s.len, device)
}

fn labels(x: Tensor, y: &[u8], len: usize, device: &Device) -> Result<DeviceSamples, EngineError> {
    let y: Vec<u32> = y.iter().map(|&v| v as u32).collect();
    let y = Tensor::from_vec(y, len, device)?;
    Ok(DeviceSamples { x, y, len })
}

/// What the data must be for the plan: some training samples, the plan's input shape,
/// and no label past the model's outputs (it would index outside them).
fn check_data(plan: &Plan, data: &Prepared) -> Result<(), EngineError> {
    if data.train.len == 0 {
        return Err(EngineError::NoTrainingSamples);
    }
    if data.shape != plan.input {
        return Err(EngineError::InputShape {
            data: data.shape,
            model: plan.input,
        });
    }
    let splits = [Some(&data.train), data.val.as_ref(), Some(&data.test)];
    if let Some(&label) = splits
        .into_iter()
        .flatten()
        .flat_map(|s| &s.y)
        .find(|&&l| l as usize >= plan.classes())
    {
        return Err(EngineError::Label {
            label,
            classes: plan.classes(),
        });
    }
    Ok(())
}

/// Which backend trains `plan` on `device`, and when it is Candle's graph, why.
fn choose(plan: &Plan, device: &Device) -> TrainingPath {
    match device {
        Device::Cpu => match plan.cpu_kernels_unsupported() {
            None => TrainingPath::CpuKernels,
            Some(u) => TrainingPath::CandleGraph(format!("the CPU kernels do not support {u}")),
        },
        Device::Cuda(_) => TrainingPath::CandleGraph("the device is CUDA".into()),
        Device::Metal(_) => TrainingPath::CandleGraph("the device is Metal".into()),
    }
}

/// A model, its optimizer and its data, ready to train.
pub struct Trainer {
    spec: ExperimentSpec,
    /// The data's shape and class names, which every checkpoint records.
    data: DataInfo,
    state: State,
    train: DeviceSamples,
    val: Option<DeviceSamples>,
    test: DeviceSamples,
    history: Vec<EpochMetrics>,
    /// The next epoch's learning rate.
    schedule: LrScheduler,
    device: Device,
    backend: Box<dyn Backend>,
}

impl Trainer {
    /// Builds the model of a validated spec's `plan` on `device` and uploads the data
    /// once. The CPU kernels train it where they can, else Candle's graph ([`Trainer::path`]).
    pub fn new(
        spec: &ExperimentSpec,
        plan: &Plan,
        data: &Prepared,
        device: &Device,
    ) -> Result<Self, EngineError> {
        check_data(plan, data)?;
        let val = match &data.val {
            Some(v) if v.len > 0 => Some(upload(v, data.shape, device)?),
            _ => None,
        };
        Self::build(
            spec,
            plan,
            data.info.clone(),
            device,
            [
                Some(upload(&data.train, data.shape, device)?),
                val,
                Some(upload(&data.test, data.shape, device)?),
            ],
        )
    }

    /// As [`Trainer::new`], taking the samples: on the CPU the training tensors are their
    /// buffers, so the data is held once, not twice (a job process's peak).
    pub fn from_prepared(
        spec: &ExperimentSpec,
        plan: &Plan,
        data: Prepared,
        device: &Device,
    ) -> Result<Self, EngineError> {
        check_data(plan, &data)?;
        let Prepared {
            train,
            val,
            test,
            shape,
            info,
        } = data;
        let val = match val {
            Some(v) if v.len > 0 => Some(upload_owned(v, shape, device)?),
            _ => None,
        };
        let train = upload_owned(train, shape, device)?;
        let test = upload_owned(test, shape, device)?;
        Self::build(spec, plan, info, device, [Some(train), val, Some(test)])
    }

    /// The model, its optimizer and backend around samples already on `device`
    /// (`[train, val, test]`; train and test always present).
    fn build(
        spec: &ExperimentSpec,
        plan: &Plan,
        info: crate::spec::DataInfo,
        device: &Device,
        samples: [Option<DeviceSamples>; 3],
    ) -> Result<Self, EngineError> {
        let model = Model::new(spec, plan, device)?;
        // Frozen tensors are not the optimizer's (as PyTorch's `requires_grad = False`
        // parameters left out of it): no update, no state.
        let frozen = crate::spec::warm_start::frozen_tensors(spec, plan);
        let params = model
            .params()
            .iter()
            .filter(|(name, _)| !frozen.contains(name))
            .cloned()
            .collect();
        let optimizer = Optimizer::new(&spec.optimizer, params)?;
        let state = State { model, optimizer };
        let backend: Box<dyn Backend> = match choose(plan, device) {
            TrainingPath::CpuKernels => Box::new(Kernels::new(spec, plan, &state)?),
            TrainingPath::CandleGraph(why) => Box::new(Graph::new(device, why)),
        };
        let [train, val, test] = samples;
        Ok(Trainer {
            spec: spec.clone(),
            data: info,
            state,
            train: train.expect("training samples"),
            val,
            test: test.expect("test samples"),
            history: Vec::new(),
            schedule: LrScheduler::new(spec.lr_schedule.as_ref(), spec.optimizer.learning_rate()),
            device: device.clone(),
            backend,
        })
    }

    /// Trains with Candle's graph even where the fused CPU path could run (to compare the
    /// two, or to measure what the CPU path gains).
    pub fn use_candle_graph(&mut self) {
        if self.uses_cpu_path() {
            self.backend = Box::new(Graph::new(&self.device, "forced (use_candle_graph)".into()));
        }
    }

    /// Where the CPU path's time went, per layer, when `profile` was set before training.
    pub fn cpu_profile(&self) -> Option<(Vec<String>, super::cpu::Profile)> {
        self.backend.profile()
    }

    /// Records per-layer times on the CPU path.
    pub fn enable_cpu_profile(&mut self) {
        self.backend.enable_profile();
    }

    /// Whether the fused CPU path trains this model.
    pub fn uses_cpu_path(&self) -> bool {
        self.path() == TrainingPath::CpuKernels
    }

    /// Which code trains this model, and when it is Candle's graph, why.
    pub fn path(&self) -> TrainingPath {
        self.backend.path()
    }

    /// Starts from given weights instead of the initialisation (warm start, fine-tuning).
    pub fn load_weights(
        &mut self,
        weights: &std::collections::HashMap<String, Tensor>,
    ) -> Result<(), EngineError> {
        self.state.model.load_state_dict(weights)?;
        self.backend.reload(&self.state)
    }

    /// Continues from a checkpoint of this spec: weights, optimizer state and history.
    pub fn resume(&mut self, ckpt: &Checkpoint) -> Result<(), EngineError> {
        if ckpt.spec.model != self.spec.model {
            return Err(EngineError::OtherModel);
        }
        self.state.model.load_state_dict(&ckpt.weight_map())?;
        let state = ckpt
            .optimizer
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_device(&self.device)?)))
            .collect::<Result<_, candle_core::Error>>()?;
        self.state
            .optimizer
            .load_state(ckpt.optimizer_steps, &state)?;
        self.history = ckpt.history.clone();
        self.history.truncate(ckpt.epoch as usize);
        self.schedule = LrScheduler::replay(
            self.spec.lr_schedule.as_ref(),
            self.spec.optimizer.learning_rate(),
            &self.history,
        );
        self.backend.reload(&self.state)
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
            // Decided from the history alone: a run resumed after its stopping epoch
            // stops at once, as the uninterrupted one did.
            if let Some(s) = early_stop(self.spec.early_stopping.as_ref(), &self.history) {
                return Ok(Outcome::EarlyStopped {
                    epoch: s.epoch,
                    best_epoch: s.best_epoch,
                });
            }
            let epoch = self.epochs_done() + 1;
            let lr = self.schedule.lr();
            self.state.optimizer.set_learning_rate(lr);
            self.backend.set_learning_rate(lr);
            let Some((train_loss, train_accuracy, secs)) = self.train_epoch(epoch, observer)?
            else {
                return Ok(Outcome::Stopped {
                    epochs_done: epoch - 1,
                });
            };
            let (val_loss, val_accuracy) = match &self.val {
                Some(v) => {
                    let (l, a) = self.backend.evaluate(&mut self.state, v)?;
                    (Some(l), Some(a))
                }
                None => (None, None),
            };
            let (test_loss, test_accuracy) = self.backend.evaluate(&mut self.state, &self.test)?;
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
                learning_rate: Some(lr),
            });
            self.schedule
                .step(self.history.last().expect("just pushed"));
            observer.on_epoch(&self.checkpoint()?)?;
        }
        Ok(Outcome::Completed {
            epochs: self.spec.epochs,
        })
    }

    /// One epoch of training steps: the only loop, whichever backend steps. `None` when
    /// the observer asked to stop.
    fn train_epoch(
        &mut self,
        epoch: u32,
        observer: &mut dyn Observer,
    ) -> Result<Option<(f64, f64, f64)>, EngineError> {
        let start = std::time::Instant::now();
        let (n, bs) = (self.train.len, self.spec.batch_size as usize);
        let batches = n.div_ceil(bs);
        let order = self
            .spec
            .shuffle
            .then(|| Rng::derive(self.spec.seed, "shuffle", epoch as u64).permutation(n));
        let mut dropout = Rng::derive(self.spec.seed, "dropout", epoch as u64);
        // Reading a loss back waits for a GPU to drain: there, it is read only every batch
        // for the first ten, then every SYNC_EVERY, and the last; progress reports the
        // loss of the latest batch read.
        let on_cpu = matches!(self.device, Device::Cpu);
        let Trainer {
            backend,
            state,
            train,
            spec,
            ..
        } = self;
        backend.begin_epoch(train, order.as_deref())?;
        let mut last_loss = f64::NAN;
        for b in 0..batches {
            if observer.should_stop() {
                return Ok(None);
            }
            let (lo, len) = (b * bs, bs.min(n - b * bs));
            let batch = Batch {
                lo,
                len,
                index: order.as_deref().map(|o| &o[lo..lo + len]),
            };
            let read = on_cpu || b < 10 || (b + 1) % SYNC_EVERY == 0 || b + 1 == batches;
            if let Some(r) = backend.step(state, train, batch, &mut dropout, read)? {
                last_loss = r.batch / len as f64;
                if !last_loss.is_finite() || !r.total.is_finite() {
                    return Err(EngineError::NonFinite {
                        loss: last_loss,
                        epoch,
                        batch: b + 1,
                    });
                }
            }
            observer.on_batch(&BatchProgress {
                epoch,
                epochs: spec.epochs,
                batch: b + 1,
                batches,
                loss: last_loss,
            });
        }
        let (loss_sum, correct) = backend.end_epoch(state)?;
        let secs = start.elapsed().as_secs_f64();
        Ok(Some((loss_sum / n as f64, correct / n as f64, secs)))
    }

    /// The checkpoint of the current state.
    pub fn checkpoint(&self) -> Result<Checkpoint, EngineError> {
        let optimizer = self
            .state
            .optimizer
            .state_tensors()?
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
            .collect::<Result<_, candle_core::Error>>()?;
        Ok(Checkpoint {
            spec: self.spec.clone(),
            data: self.data.clone(),
            epoch: self.epochs_done(),
            history: self.history.clone(),
            weights: self.state.model.state_dict()?,
            optimizer_steps: self.state.optimizer.steps(),
            optimizer,
        })
    }
}

/// Class probabilities from a model output, whatever its last activation.
pub fn probabilities(f: &Forward) -> candle_core::Result<Tensor> {
    match f.last_activation {
        Activation::Softmax => Ok(f.output.clone()),
        Activation::LogSoftmax => f.output.exp(),
        _ => candle_nn::ops::softmax_last_dim(&f.output),
    }
}
