//! The Candle training engine: models built from a spec, the pieces Candle lacks or gets
//! wrong (pooling gradient, ReLU gradient at zero, seeded RNG, framework inits,
//! optimizers), the training loop, checkpoints and inference.
//!
//! No database and no HTTP here: the `train` command and the service's workers both drive
//! this engine, each through its own [`trainer::Observer`].

pub mod checkpoint;
pub mod cpu;
pub mod device;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod schedule;
pub mod trainer;

pub use checkpoint::Checkpoint;
pub use metrics::EpochMetrics;
pub use trainer::{BatchProgress, Observer, Outcome, Trainer, TrainingPath};

use crate::spec::SpecErrors;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecErrors),
    #[error("dataset: no training samples left (check train_limit and the validation split)")]
    NoTrainingSamples,
    #[error("data has shape {data:?}, the model expects {model:?}")]
    InputShape { data: [usize; 3], model: [usize; 3] },
    #[error("data has label {label}, the model has {classes} classes")]
    Label { label: u8, classes: usize },
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("checkpoint: the checkpoint was trained with a different model")]
    OtherModel,
    #[error("checkpoint: no tensor {0}")]
    MissingTensor(String),
    #[error("the CPU kernels do not support {0}")]
    Unsupported(cpu::Unsupported),
    #[error("device: {0}")]
    Device(String),
    #[error("training diverged: loss became {loss} by epoch {epoch}, batch {batch}")]
    NonFinite { loss: f64, epoch: u32, batch: usize },
    #[error("input: {0}")]
    Input(String),
    /// The observer stopped the run ([`trainer::Observer::on_epoch`]); its own error,
    /// which the caller can downcast.
    #[error("{0}")]
    Observer(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
