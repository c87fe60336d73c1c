//! The engine's record of a finished epoch turned into what the store keeps. The store
//! imports nothing of the engine (docs/ARCHITECTURE.md), so the conversion lives here,
//! on the side that uses both.

use crate::engine::schedule::best_epoch;
use crate::engine::{Checkpoint, EngineError, EpochMetrics};
use crate::store::queue::{EpochRecord, NewEpoch};

/// The epoch a checkpoint ends with, ready for [`Store::record_epoch`]: its metrics (the
/// last of its history) and its weights and optimizer state serialised.
///
/// [`Store::record_epoch`]: crate::store::Store::record_epoch
pub fn new_epoch(ckpt: &Checkpoint) -> Result<NewEpoch, EngineError> {
    let m = ckpt
        .history
        .last()
        .ok_or_else(|| EngineError::Checkpoint("a checkpoint without metrics".into()))?;
    Ok(NewEpoch {
        metrics: m.into(),
        weights: ckpt.weights_bytes()?,
        optimizer: ckpt.optimizer_bytes()?,
        best_epoch: best_epoch(ckpt.spec.early_stopping.as_ref(), &ckpt.history),
    })
}

impl From<&EpochMetrics> for EpochRecord {
    fn from(m: &EpochMetrics) -> Self {
        EpochRecord {
            epoch: m.epoch,
            train_loss: m.train_loss,
            train_accuracy: m.train_accuracy,
            val_loss: m.val_loss,
            val_accuracy: m.val_accuracy,
            test_loss: m.test_loss,
            test_accuracy: m.test_accuracy,
            train_seconds: m.train_seconds,
            images_per_second: m.images_per_second,
            learning_rate: m.learning_rate,
        }
    }
}
