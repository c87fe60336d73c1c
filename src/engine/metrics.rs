//! Per-epoch metrics, as written to `metrics.jsonl` and stored by the service.

use serde::{Deserialize, Serialize};

/// One epoch's figures. A metric that does not apply (no validation split) is `None`
/// (`null` in JSON). Losses are means over samples; accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EpochMetrics {
    pub epoch: u32,
    /// Mean training loss over the epoch's batches, weighted by batch size (as Keras and
    /// the PyTorch reference report it: measured while the weights change).
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// Wall time of the epoch's training steps (evaluation excluded).
    pub train_seconds: f64,
    pub images_per_second: f64,
    /// The learning rate the epoch trained with (the spec's `lr_schedule`); `null` in
    /// runs stored before rates were recorded.
    #[serde(default)]
    pub learning_rate: Option<f64>,
}

impl EpochMetrics {
    /// The same metrics without the timing fields, which differ between identical runs.
    pub fn without_timing(&self) -> EpochMetrics {
        EpochMetrics {
            train_seconds: 0.0,
            images_per_second: 0.0,
            ..self.clone()
        }
    }
}
