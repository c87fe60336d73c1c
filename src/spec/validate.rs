//! Validation before any training: limits, and the model's plan (shape inference through
//! the layer list, parameter count and FLOPs per sample, in [`super::plan`]).
//!
//! Every problem is reported with the JSON path of the field at fault, and validation keeps
//! going after the first problem where it can, so a client fixes a spec in one round trip.
//! The limits below keep one request from asking for unbounded memory or time.

use super::plan::{Plan, plan_model};
use super::{
    DataSource, ExperimentSpec, FieldError, OptimizerSpec, SPEC_VERSION, SpecErrors, Validation,
};

/// Documented limits (the book: docs/reference/limits.md).
pub mod limits {
    pub const MAX_PARAMETERS: u64 = 50_000_000;
    pub const MAX_FLOPS_PER_SAMPLE: u64 = 20_000_000_000;
    pub const MAX_EPOCHS: u32 = 1000;
    pub const MAX_BATCH_SIZE: u32 = 65_536;
    pub const MAX_IMAGE_SIDE: u32 = 512;
    pub const MAX_LAYERS: usize = 64;
    pub const MAX_FILTERS: usize = 4096;
    pub const MAX_UNITS: usize = 65_536;
    pub const MAX_KERNEL: usize = 64;
    /// Activations of one training batch (forward values and their gradients, f32).
    pub const MAX_BATCH_ACTIVATION_BYTES: u64 = 4 << 30;
}

/// Number of classes of the built-in datasets.
pub const NUM_CLASSES: usize = 10;

/// What a dataset gives a model: its images' shape (before the spec's resize) and its
/// number of classes. Validation plans the model against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataShape {
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
}

impl DataShape {
    /// MNIST's and Fashion-MNIST's: 28x28 grayscale, ten classes.
    pub const BUILT_IN: DataShape = DataShape {
        channels: 1,
        height: 28,
        width: 28,
        classes: NUM_CLASSES,
    };
}

pub(crate) fn err(
    errors: &mut Vec<FieldError>,
    field: impl Into<String>,
    reason: impl Into<String>,
) {
    errors.push(FieldError {
        field: field.into(),
        reason: reason.into(),
    });
}

pub(crate) fn shape_str(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Validates a parsed spec against its built-in dataset. Returns the model's plan or every
/// problem found. A spec of other data is validated with [`validate_for`] once that data
/// is known (an uploaded dataset's row, a local file).
pub fn validate(spec: &ExperimentSpec) -> Result<Plan, SpecErrors> {
    match &spec.dataset.source {
        DataSource::BuiltIn(n) => validate_for(spec, n.info().shape()),
        DataSource::Uploaded(_) => Err(SpecErrors::one(
            "dataset.id",
            "an uploaded dataset is checked by the service that holds it",
        )),
        DataSource::Path(_) => Err(SpecErrors::one(
            "dataset.path",
            "a local dataset is only read by `trainyard train`",
        )),
    }
}

/// Validates a parsed spec for a dataset of shape `data`: the model's input is its
/// images (after the spec's resize), and its output must be one value per class.
pub fn validate_for(spec: &ExperimentSpec, data: DataShape) -> Result<Plan, SpecErrors> {
    use limits::*;
    let mut e = Vec::new();
    if spec.version != SPEC_VERSION {
        err(
            &mut e,
            "version",
            format!(
                "unsupported spec version {}; this server understands 1",
                spec.version
            ),
        );
    }
    // Free text, stored with the spec: PostgreSQL's jsonb takes no NUL, and nobody needs
    // control characters or a megabyte here.
    if let Some(p) = &spec.model.preset
        && (p.is_empty() || p.chars().count() > 64 || p.chars().any(char::is_control))
    {
        err(
            &mut e,
            "model.preset",
            "must be 1 to 64 characters, none of them a control character",
        );
    }
    let d = &spec.dataset;
    if d.train_limit == Some(0) {
        err(&mut e, "dataset.train_limit", "must be at least 1");
    }
    if d.test_limit == Some(0) {
        err(&mut e, "dataset.test_limit", "must be at least 1");
    }
    let (mut h, mut w) = (data.height, data.width);
    if let Some([rh, rw]) = d.resize {
        if !(1..=MAX_IMAGE_SIDE).contains(&rh) || !(1..=MAX_IMAGE_SIDE).contains(&rw) {
            err(
                &mut e,
                "dataset.resize",
                format!("each side must be between 1 and {MAX_IMAGE_SIDE}, got {rh}x{rw}"),
            );
        } else {
            (h, w) = (rh as usize, rw as usize);
        }
    }
    if let Some(n) = &d.normalize {
        for (field, v, positive) in [("mean", &n.mean, false), ("std", &n.std, true)] {
            let field = format!("dataset.normalize.{field}");
            if v.channels().is_some_and(|n| n != data.channels) {
                err(
                    &mut e,
                    &field,
                    format!(
                        "the data has {} channel(s): give one number, or a list of {}",
                        data.channels, data.channels
                    ),
                );
            } else if v
                .values()
                .iter()
                .any(|x| !x.is_finite() || (positive && *x <= 0.0))
            {
                let what = if positive { "positive" } else { "finite" };
                err(
                    &mut e,
                    &field,
                    format!("every value must be a {what} number"),
                );
            }
        }
    }
    if let Validation::Split { split } = d.validation
        && !(split > 0.0 && split < 1.0)
    {
        err(
            &mut e,
            "dataset.validation.split",
            format!("must be strictly between 0 and 1, got {split}"),
        );
    }
    if !(1..=MAX_EPOCHS).contains(&spec.epochs) {
        err(
            &mut e,
            "epochs",
            format!("must be between 1 and {MAX_EPOCHS}, got {}", spec.epochs),
        );
    }
    if !(1..=MAX_BATCH_SIZE).contains(&spec.batch_size) {
        err(
            &mut e,
            "batch_size",
            format!(
                "must be between 1 and {MAX_BATCH_SIZE}, got {}",
                spec.batch_size
            ),
        );
    }
    validate_optimizer(&spec.optimizer, &mut e);
    let validation = d.validation.split().is_some();
    if let Some(s) = &spec.lr_schedule {
        super::schedule::validate_schedule(s, validation, &mut e);
    }
    if let Some(s) = &spec.early_stopping {
        super::schedule::validate_early_stopping(s, validation, &mut e);
    }
    let plan = plan_model(spec, [data.channels, h, w], data.classes, &mut e);
    if let Some(ws) = &spec.warm_start {
        super::warm_start::validate_freeze(ws, &plan, &mut e);
    }
    // Forward values and their gradients, 4 bytes each, for a whole batch.
    let batch_bytes = plan.activations_per_sample * spec.batch_size as u64 * 8;
    if batch_bytes > MAX_BATCH_ACTIVATION_BYTES {
        err(
            &mut e,
            "batch_size",
            format!(
                "a batch of {} needs about {:.1} GiB of activations, above the limit of {} GiB; use a smaller batch",
                spec.batch_size,
                batch_bytes as f64 / (1u64 << 30) as f64,
                MAX_BATCH_ACTIVATION_BYTES >> 30
            ),
        );
    }
    if e.is_empty() {
        Ok(plan)
    } else {
        Err(SpecErrors(e))
    }
}

fn validate_optimizer(o: &OptimizerSpec, e: &mut Vec<FieldError>) {
    let (lr, wd) = match o {
        OptimizerSpec::Sgd {
            learning_rate,
            momentum,
            nesterov,
            weight_decay,
        } => {
            if !(momentum.is_finite() && (0.0..1.0).contains(momentum)) {
                err(
                    e,
                    "optimizer.momentum",
                    format!("must be in [0, 1), got {momentum}"),
                );
            }
            if *nesterov && *momentum <= 0.0 {
                err(
                    e,
                    "optimizer.nesterov",
                    "Nesterov momentum needs a momentum above 0",
                );
            }
            (learning_rate, weight_decay)
        }
        OptimizerSpec::Adam {
            learning_rate,
            betas,
            eps,
            weight_decay,
        }
        | OptimizerSpec::Adamw {
            learning_rate,
            betas,
            eps,
            weight_decay,
        } => {
            for (i, b) in betas.iter().enumerate() {
                if !(b.is_finite() && (0.0..1.0).contains(b)) {
                    err(
                        e,
                        format!("optimizer.betas[{i}]"),
                        format!("must be in [0, 1), got {b}"),
                    );
                }
            }
            if !(eps.is_finite() && *eps > 0.0) {
                err(
                    e,
                    "optimizer.eps",
                    format!("must be a positive number, got {eps}"),
                );
            }
            (learning_rate, weight_decay)
        }
    };
    if !(lr.is_finite() && *lr > 0.0 && *lr <= 10.0) {
        err(
            e,
            "optimizer.learning_rate",
            format!("must be in (0, 10], got {lr}"),
        );
    }
    if !(wd.is_finite() && *wd >= 0.0 && *wd <= 1.0) {
        err(
            e,
            "optimizer.weight_decay",
            format!("must be in [0, 1], got {wd}"),
        );
    }
}
