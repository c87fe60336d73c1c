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
    #[error("data: {0}")]
    Data(String),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("device: {0}")]
    Device(String),
    #[error("training diverged: {0}")]
    NonFinite(String),
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
