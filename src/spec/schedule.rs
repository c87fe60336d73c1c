//! What happens between epochs: how the learning rate moves (`lr_schedule`) and when
//! training ends before its last epoch (`early_stopping`).
//!
//! Both follow a framework users already know, field for field, so that a curve trained
//! here can be set beside one trained there: the schedules are `torch.optim.lr_scheduler`'s
//! (stepped once per epoch, with its arithmetic), early stopping is Keras's
//! `EarlyStopping`. Both are decided from the epochs' metrics alone, which is what keeps a
//! resumed run exact: replaying the stored history gives back the same rate and the same
//! patience count (see `engine::schedule`).
//!
//! The arithmetic lives in the engine; this module holds the spec's types and checks them.

use serde::{Deserialize, Serialize};

use super::FieldError;
use super::validate::err;

/// A metric of every epoch that a schedule or early stopping can watch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    #[default]
    ValLoss,
    ValAccuracy,
    TestLoss,
    TestAccuracy,
    TrainLoss,
    TrainAccuracy,
}

impl Monitor {
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
            Monitor::TestLoss => "test_loss",
            Monitor::TestAccuracy => "test_accuracy",
            Monitor::TrainLoss => "train_loss",
            Monitor::TrainAccuracy => "train_accuracy",
        }
    }

    /// Accuracies improve upwards, losses downwards (Keras's `mode="auto"`).
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Monitor::ValAccuracy | Monitor::TestAccuracy | Monitor::TrainAccuracy
        )
    }

    /// Whether the metric exists only with a validation split.
    pub fn needs_validation(self) -> bool {
        matches!(self, Monitor::ValLoss | Monitor::ValAccuracy)
    }
}

/// Keras's `EarlyStopping(monitor, patience, min_delta, restore_best_weights)`: training
/// stops once `patience` epochs in a row have not improved the monitored metric by more
/// than `min_delta` on its best.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    #[serde(default)]
    pub monitor: Monitor,
    /// Epochs without improvement before stopping (Keras's default: 0).
    #[serde(default)]
    pub patience: u32,
    /// The smallest change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
    /// Serve the best epoch's weights (the `best` checkpoint) instead of the last one's.
    #[serde(default)]
    pub restore_best: bool,
}

/// `torch.optim.lr_scheduler.LinearLR(start_factor, end_factor=1, total_iters=epochs)` in
/// front of the schedule (`SequentialLR` with one milestone at `epochs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinearWarmup {
    pub epochs: u32,
    /// The first epoch's rate as a fraction of the optimizer's (PyTorch's default: 1/3).
    #[serde(default = "third")]
    pub start_factor: f64,
}

fn third() -> f64 {
    1.0 / 3.0
}
fn tenth() -> f64 {
    0.1
}
fn ten() -> u32 {
    10
}
fn plateau_threshold() -> f64 {
    1e-4
}

/// The learning rate per epoch, starting from the optimizer's `learning_rate`. Each kind is
/// the `torch.optim.lr_scheduler` class of that name, stepped after every epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The optimizer's rate throughout (after the warmup, if any).
    Constant {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        linear_warmup: Option<LinearWarmup>,
    },
    /// `StepLR`: multiplied by `gamma` every `step_size` epochs.
    Step {
        step_size: u32,
        #[serde(default = "tenth")]
        gamma: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        linear_warmup: Option<LinearWarmup>,
    },
    /// `ExponentialLR`: multiplied by `gamma` every epoch.
    Exponential {
        gamma: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        linear_warmup: Option<LinearWarmup>,
    },
    /// `CosineAnnealingLR`: half a cosine from the rate down to `eta_min` over `t_max`
    /// epochs (and back up after, as PyTorch's does).
    Cosine {
        t_max: u32,
        #[serde(default)]
        eta_min: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        linear_warmup: Option<LinearWarmup>,
    },
    /// `ReduceLROnPlateau`: multiplied by `factor` once the monitored metric has not
    /// improved (relatively, by `threshold`) for more than `patience` epochs.
    ReduceOnPlateau {
        #[serde(default)]
        monitor: Monitor,
        #[serde(default = "tenth")]
        factor: f64,
        #[serde(default = "ten")]
        patience: u32,
        #[serde(default)]
        min_lr: f64,
        #[serde(default = "plateau_threshold")]
        threshold: f64,
        #[serde(default)]
        cooldown: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        linear_warmup: Option<LinearWarmup>,
    },
}

impl LrSchedule {
    pub fn linear_warmup(&self) -> Option<&LinearWarmup> {
        match self {
            LrSchedule::Constant { linear_warmup }
            | LrSchedule::Step { linear_warmup, .. }
            | LrSchedule::Exponential { linear_warmup, .. }
            | LrSchedule::Cosine { linear_warmup, .. }
            | LrSchedule::ReduceOnPlateau { linear_warmup, .. } => linear_warmup.as_ref(),
        }
    }

    /// The metric the schedule watches, if it watches one.
    pub fn monitor(&self) -> Option<Monitor> {
        match self {
            LrSchedule::ReduceOnPlateau { monitor, .. } => Some(*monitor),
            _ => None,
        }
    }
}

/// The kinds, for an error that names an unknown one.
pub const SCHEDULE_TYPES: [&str; 5] = [
    "constant",
    "step",
    "exponential",
    "cosine",
    "reduce_on_plateau",
];

/// Checks the schedule's numbers; `validation` says whether the spec holds out a
/// validation split (without one, `val_*` metrics do not exist).
pub(crate) fn validate_schedule(s: &LrSchedule, validation: bool, e: &mut Vec<FieldError>) {
    let at = |f: &str| format!("lr_schedule.{f}");
    let positive = |e: &mut Vec<FieldError>, f: &str, v: f64| {
        if !(v.is_finite() && v > 0.0) {
            err(e, at(f), format!("must be a positive number, got {v}"));
        }
    };
    match *s {
        LrSchedule::Constant { .. } => {}
        LrSchedule::Step {
            step_size, gamma, ..
        } => {
            if step_size == 0 {
                err(e, at("step_size"), "must be at least 1");
            }
            positive(e, "gamma", gamma);
        }
        LrSchedule::Exponential { gamma, .. } => positive(e, "gamma", gamma),
        LrSchedule::Cosine { t_max, eta_min, .. } => {
            if t_max == 0 {
                err(e, at("t_max"), "must be at least 1");
            }
            if !(eta_min.is_finite() && eta_min >= 0.0) {
                err(
                    e,
                    at("eta_min"),
                    format!("must be 0 or more, got {eta_min}"),
                );
            }
        }
        LrSchedule::ReduceOnPlateau {
            monitor,
            factor,
            min_lr,
            threshold,
            ..
        } => {
            // PyTorch refuses a factor of 1 or more: the rate would never fall.
            if !(factor > 0.0 && factor < 1.0) {
                err(
                    e,
                    at("factor"),
                    format!("must be strictly between 0 and 1, got {factor}"),
                );
            }
            if !(min_lr.is_finite() && min_lr >= 0.0) {
                err(e, at("min_lr"), format!("must be 0 or more, got {min_lr}"));
            }
            if !(threshold.is_finite() && threshold >= 0.0) {
                err(
                    e,
                    at("threshold"),
                    format!("must be 0 or more, got {threshold}"),
                );
            }
            check_monitor(monitor, validation, &at("monitor"), e);
        }
    }
    if let Some(w) = s.linear_warmup() {
        if w.epochs == 0 {
            err(e, at("linear_warmup.epochs"), "must be at least 1");
        }
        if !(w.start_factor > 0.0 && w.start_factor <= 1.0) {
            err(
                e,
                at("linear_warmup.start_factor"),
                format!("must be above 0 and at most 1, got {}", w.start_factor),
            );
        }
    }
}

pub(crate) fn validate_early_stopping(
    s: &EarlyStopping,
    validation: bool,
    e: &mut Vec<FieldError>,
) {
    if !(s.min_delta.is_finite() && s.min_delta >= 0.0) {
        err(
            e,
            "early_stopping.min_delta",
            format!("must be 0 or more, got {}", s.min_delta),
        );
    }
    check_monitor(s.monitor, validation, "early_stopping.monitor", e);
}

fn check_monitor(m: Monitor, validation: bool, field: &str, e: &mut Vec<FieldError>) {
    if m.needs_validation() && !validation {
        err(
            e,
            field,
            format!(
                "{} needs a validation split (dataset.validation), which this spec does not hold out; monitor test_loss or train_loss instead",
                m.name()
            ),
        );
    }
}
