//! How much memory a job will need at its peak, estimated from its spec, its plan and its
//! data before anything is queued.
//!
//! A job process runs within a memory budget the kernel enforces, so a spec that cannot
//! fit would fail minutes later, after it waited its turn; the service refuses it at
//! submission instead, naming the field that makes it large. The estimate follows what a
//! job process holds at each step (`worker::child`):
//! - **preparing the data**: the loaded dataset (u8 images) and the prepared samples
//!   (f32, after resize) at once;
//! - **training**: the prepared samples (the engine's tensors take their buffers), the
//!   model's state (weights, gradients, the optimizer's moments), a training batch's
//!   activations with their gradients or an evaluation batch's activations, and a
//!   checkpoint being serialised (weights and optimizer state, twice: the bytes and the
//!   frame that carries them);
//!
//! plus the process itself. The peak is the larger of the two steps. It is checked
//! against the measured peak of real jobs in `docs/benchmarks.md`.

use serde::Serialize;

use super::plan::Plan;
use super::{DataInfo, ExperimentSpec, OptimizerSpec};

/// Samples per evaluation batch (the engine evaluates in chunks of this many at most).
pub const EVAL_BATCH: usize = 1000;

/// What a job process holds besides its data and model: the program, its threads'
/// stacks and the allocator's arenas (measured: `docs/benchmarks.md`).
const PROCESS_BYTES: u64 = 48 << 20;

/// A job's longest training time when the operator sets none: a day.
pub const DEFAULT_MAX_TIME_LIMIT_SECS: f64 = 86_400.0;

/// The default cap on one job's training FLOPs: 10^17, an hour or two of an H100 and
/// days of a CPU.
pub const DEFAULT_MAX_JOB_FLOPS: f64 = 1e17;

/// What a service admits: the bounds its job processes run within.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobLimits {
    /// A job process's memory budget (None: not checked at submission).
    pub memory_bytes: Option<u64>,
    /// The most training FLOPs one job may ask for (None: no cap).
    pub max_flops: Option<f64>,
    /// The longest `time_limit` a spec may ask for, seconds.
    pub max_time_limit_secs: f64,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            memory_bytes: None,
            max_flops: None,
            max_time_limit_secs: DEFAULT_MAX_TIME_LIMIT_SECS,
        }
    }
}

/// A job's memory at its peak, by what holds it (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Footprint {
    /// The dataset as loaded (u8 images and labels), while it is prepared.
    pub dataset_bytes: u64,
    /// The prepared samples (f32 after resize): training, validation and test.
    pub prepared_bytes: u64,
    /// Weights, gradients and the optimizer's state.
    pub model_bytes: u64,
    /// A training batch's activations and their gradients, or an evaluation batch's,
    /// whichever is larger.
    pub batch_bytes: u64,
    /// A checkpoint being serialised and sent.
    pub checkpoint_bytes: u64,
    /// The process itself.
    pub process_bytes: u64,
    /// The estimated peak: the larger of preparing the data and training.
    pub peak_bytes: u64,
    /// Which step the peak is in: `preparing_data` or `training`.
    pub peak_step: &'static str,
}

/// The samples a spec trains on: training (less its validation split), validation, test.
fn sample_counts(spec: &ExperimentSpec, data: &DataInfo) -> (u64, u64, u64) {
    let n = spec
        .dataset
        .train_limit
        .map_or(data.train_len, |l| l.min(data.train_len));
    let (train, val) = match spec.dataset.validation.split() {
        Some(f) => {
            let at = (n as f64 * (1.0 - f)) as usize;
            (at, n - at)
        }
        None => (n, 0),
    };
    let test = spec
        .dataset
        .test_limit
        .map_or(data.test_len, |l| l.min(data.test_len));
    (train as u64, val as u64, test as u64)
}

/// The estimate of `spec`, planned as `plan`, on `data`.
pub fn estimate(spec: &ExperimentSpec, plan: &Plan, data: &DataInfo) -> Footprint {
    let per_image = (data.channels * data.height * data.width) as u64;
    let dataset_bytes = (data.train_len + data.test_len) as u64 * (per_image + 1);
    let (train, val, test) = sample_counts(spec, data);
    let input = plan.input_len() as u64;
    let prepared_bytes = (train + val + test) * (input * 4 + 1);
    let params = plan.parameters;
    let moments = match spec.optimizer {
        OptimizerSpec::Sgd { momentum: 0.0, .. } => 0,
        OptimizerSpec::Sgd { .. } => 1,
        OptimizerSpec::Adam { .. } | OptimizerSpec::Adamw { .. } => 2,
    };
    let model_bytes = params * 4 * (2 + moments);
    let acts = plan.activations_per_sample;
    let train_batch = acts * spec.batch_size as u64 * 4 * 2;
    let eval_batch = acts * (EVAL_BATCH as u64).min(test.max(val).max(1)) * 4;
    let batch_bytes = train_batch.max(eval_batch);
    let checkpoint_bytes = params * 4 * (1 + moments) * 2;
    let process_bytes = PROCESS_BYTES;
    let preparing = dataset_bytes + prepared_bytes;
    let training = prepared_bytes + model_bytes + batch_bytes + checkpoint_bytes;
    let (peak, peak_step) = if preparing > training {
        (preparing, "preparing_data")
    } else {
        (training, "training")
    };
    Footprint {
        dataset_bytes,
        prepared_bytes,
        model_bytes,
        batch_bytes,
        checkpoint_bytes,
        process_bytes,
        peak_bytes: peak + process_bytes,
        peak_step,
    }
}

impl Footprint {
    /// The field to blame when the peak is over a budget: what makes the largest part
    /// large, and the sentence that says so.
    pub fn over(&self, spec: &ExperimentSpec, budget: u64) -> Option<(&'static str, String)> {
        if self.peak_bytes <= budget {
            return None;
        }
        let limit = format!("a job may use at most {}", gib(budget));
        let parts = [
            (self.prepared_bytes, "prepared"),
            (self.dataset_bytes, "dataset"),
            (self.batch_bytes, "batch"),
            (self.model_bytes + self.checkpoint_bytes, "model"),
        ];
        let (_, largest) = parts.iter().max_by_key(|p| p.0).copied().unwrap();
        Some(match largest {
            "prepared" => {
                let field = if spec.dataset.resize.is_some() {
                    "dataset.resize"
                } else {
                    "dataset.train_limit"
                };
                (
                    field,
                    format!(
                        "the prepared data needs {}, and the job about {} at its peak; {limit}",
                        gib(self.prepared_bytes),
                        gib(self.peak_bytes)
                    ),
                )
            }
            "dataset" => (
                "dataset.id",
                format!(
                    "the dataset needs {} while it is prepared, and the job about {} at its peak; {limit}",
                    gib(self.dataset_bytes),
                    gib(self.peak_bytes)
                ),
            ),
            "batch" => (
                "batch_size",
                format!(
                    "a batch's activations need {}, and the job about {} at its peak; {limit}",
                    gib(self.batch_bytes),
                    gib(self.peak_bytes)
                ),
            ),
            _ => (
                "model.layers",
                format!(
                    "the model's weights, gradients and optimizer state need {}, and the \
                     job about {} at its peak; {limit}",
                    gib(self.model_bytes + self.checkpoint_bytes),
                    gib(self.peak_bytes)
                ),
            ),
        })
    }
}

/// Bytes as people read them: `58.6 GiB`, `6 GiB`, `512 MiB`.
pub fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        let r = (g * 10.0).round() / 10.0;
        if r.fract() == 0.0 {
            format!("{r:.0} GiB")
        } else {
            format!("{r:.1} GiB")
        }
    } else {
        format!("{} MiB", (bytes as f64 / (1u64 << 20) as f64).ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> (ExperimentSpec, Plan, DataInfo) {
        let s = crate::spec::from_value(v).unwrap();
        let data = crate::spec::DatasetName::Mnist.info();
        let plan = crate::spec::validate_for(&s, data.shape()).unwrap();
        (s, plan, data)
    }

    #[test]
    fn the_issues_spec_is_blamed_on_its_resize_with_the_sizes_in_words() {
        let (s, plan, data) = spec(serde_json::json!({
            "preset": "torch-cnn", "epochs": 1, "batch_size": 1,
            "dataset": {"resize": [512, 512], "validation": "none"},
            "model": {"layers": [
                {"type": "conv2d", "filters": 1, "kernel": 64, "stride": 64},
                {"type": "flatten"},
                {"type": "dense", "units": 10, "activation": "log_softmax"}]}
        }));
        let f = estimate(&s, &plan, &data);
        // 70,000 images of 512x512 floats.
        assert_eq!(f.prepared_bytes, 70_000 * (512 * 512 * 4 + 1));
        let (field, why) = f.over(&s, 6 << 30).unwrap();
        assert_eq!(field, "dataset.resize");
        assert!(why.contains("the prepared data needs 68.4 GiB"), "{why}");
        assert!(why.ends_with("a job may use at most 6 GiB"), "{why}");
    }

    #[test]
    fn a_preset_fits_a_small_budget_and_counts_its_optimizer() {
        let (s, plan, data) = spec(serde_json::json!({"preset": "keras-cnn"}));
        let f = estimate(&s, &plan, &data);
        assert!(f.over(&s, 1 << 30).is_none(), "{f:?}");
        assert_eq!(
            f.model_bytes,
            plan.parameters * 4 * 2,
            "plain SGD: no moments"
        );
        let mut adam = s.clone();
        adam.optimizer = crate::spec::from_value(serde_json::json!({
            "preset": "keras-cnn", "optimizer": {"type": "adam", "learning_rate": 0.001}
        }))
        .unwrap()
        .optimizer;
        assert_eq!(
            estimate(&adam, &plan, &data).model_bytes,
            plan.parameters * 4 * 4,
            "Adam: two moments"
        );
        assert!(f.peak_bytes > f.prepared_bytes + f.model_bytes);
    }

    #[test]
    fn limits_and_the_validation_split_shrink_the_prepared_data() {
        let (s, plan, data) = spec(serde_json::json!({
            "preset": "torch-cnn",
            "dataset": {"train_limit": 1000, "test_limit": 100, "validation": {"split": 0.2}}
        }));
        let f = estimate(&s, &plan, &data);
        // torch-cnn resizes to 8x8.
        assert_eq!(f.prepared_bytes, 1100 * (64 * 4 + 1));
        assert_eq!(sample_counts(&s, &data), (800, 200, 100));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(gib(6 << 30), "6 GiB");
        assert_eq!(gib(58_600_000_000), "54.6 GiB");
        assert_eq!(gib(512 << 20), "512 MiB");
    }
}
