//! The experiment spec: what a client asks trainyard to train.
//!
//! A spec is JSON, versioned (`"version": 1`), and deliberately explicit: every default a
//! framework would fill in silently (init scheme, loss formulation, validation split,
//! shuffling) is a field, so two specs that look the same train the same. Presets are full
//! specs; a spec that names one (`"model": {"preset": "keras-cnn"}`) is the preset with the
//! spec's other fields merged over it (JSON merge patch), so any field can be overridden.
//!
//! Parsing ([`parse`]) and validation ([`validate::validate`]) are separate: parsing
//! reports type errors with the JSON path at fault, validation infers shapes through the
//! layer list and reports every problem it finds, each naming its field.

pub mod dataset;
pub mod diff;
pub mod footprint;
pub mod plan;
pub mod presets;
pub mod schedule;
pub mod schema;
pub mod sweep;
pub mod validate;
pub mod warm_start;

use serde::{Deserialize, Serialize};

pub use dataset::{
    DataInfo, DataSource, DatasetName, DatasetSpec, Normalize, PerChannel, Validation,
    ValidationName,
};
pub use plan::{LayerKind, Plan, PlannedLayer, Summary};
pub use schedule::{EarlyStopping, LinearWarmup, LrSchedule, Monitor};
pub use validate::{DataShape, validate, validate_for};
pub use warm_start::{CheckpointRef, WarmStart};

/// The only spec version this build understands.
pub const SPEC_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// The spec format's version: 1.
    pub version: u32,
    /// What to train on, and how its images are prepared.
    pub dataset: DatasetSpec,
    /// The layers, in order, and how their weights start.
    pub model: ModelSpec,
    /// The loss the optimizer minimises.
    #[serde(default)]
    pub loss: Loss,
    /// The optimizer and its settings.
    pub optimizer: OptimizerSpec,
    /// Passes over the training set, 1 to 1,000.
    pub epochs: u32,
    /// Samples per step, 1 to 65,536 (a batch's activations at most 4 GiB).
    pub batch_size: u32,
    /// Shuffle the training set before each epoch (with `seed`).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Seeds the initial weights, the shuffling and dropout: the same spec and seed give
    /// the same curve on the CPU, whatever the thread count.
    #[serde(default)]
    pub seed: u64,
    /// Where to train: `auto` (a GPU where there is one), `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Keep a checkpoint for every epoch (the service keeps only the best and the last
    /// otherwise; the `train` command always writes every epoch).
    #[serde(default)]
    pub keep_all_checkpoints: bool,
    /// The learning rate per epoch; the optimizer's throughout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<LrSchedule>,
    /// Stop before `epochs` once the monitored metric stops improving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Start from another experiment's weights instead of the initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<WarmStart>,
    /// Seconds of training after which the run stops at an epoch boundary and keeps its
    /// checkpoints (`stop_reason: "time_limit"`); the server's maximum when absent, and
    /// at most that. Counted per attempt: a run resumed after a lost worker starts its
    /// clock again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<f64>,
}

fn default_true() -> bool {
    true
}

impl ExperimentSpec {
    /// The training FLOPs the spec asks for: forward and backward passes (three times
    /// the forward FLOPs) over every epoch's training images. What the per-day FLOPs
    /// quota counts. `all` is the number of training images the data has.
    pub fn training_flops(&self, summary: &Summary, all: usize) -> f64 {
        let images = self.dataset.train_limit.map_or(all, |n| n.min(all));
        let held_out = self.dataset.validation.split().unwrap_or(0.0);
        let trained = (images as f64 * (1.0 - held_out)).ceil();
        3.0 * summary.flops_per_sample as f64 * trained * f64::from(self.epochs)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The preset this model came from (informational once resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// How the weights are initialised.
    #[serde(default)]
    pub init: InitScheme,
    /// The layers, input first: at most 64.
    pub layers: Vec<LayerSpec>,
}

/// How weights are initialised.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// glorot_uniform kernels, zero biases.
    Keras,
    /// PyTorch's defaults: kaiming_uniform(a = sqrt(5)) weights, U(+-1/sqrt(fan_in)) biases.
    #[default]
    Torch,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
    Softmax,
    LogSoftmax,
    #[default]
    None,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    #[default]
    Valid,
    Same,
}

/// A size given as `3` or `[3, 3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Size2 {
    Square(usize),
    Rect([usize; 2]),
}

/// Untagged enums report "data did not match any variant"; these say what is expected.
impl<'de> Deserialize<'de> for Size2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Square(usize),
            Rect([usize; 2]),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Square(n)) => Ok(Size2::Square(n)),
            Ok(Raw::Rect(r)) => Ok(Size2::Rect(r)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a size: a positive integer such as 3, or [height, width]",
            )),
        }
    }
}

impl Size2 {
    pub fn hw(self) -> (usize, usize) {
        match self {
            Size2::Square(s) => (s, s),
            Size2::Rect([h, w]) => (h, w),
        }
    }
}

fn one() -> Size2 {
    Size2::Square(1)
}

/// One layer. Internally tagged by `"type"`; each kind's fields are a struct of their own
/// so that a type error inside a layer can be reported with its exact path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerSpec {
    Conv2d(Conv2d),
    MaxPool2d(Pool2d),
    AvgPool2d(Pool2d),
    Flatten,
    Dense(Dense),
    Dropout(Dropout),
    BatchNorm(BatchNorm),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conv2d {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub filters: usize,
    pub kernel: Size2,
    #[serde(default = "one")]
    pub stride: Size2,
    #[serde(default)]
    pub padding: Padding,
    #[serde(default)]
    pub activation: Activation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool2d {
    pub size: Size2,
    /// Defaults to `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Size2>,
}

impl Pool2d {
    pub fn stride_hw(&self) -> (usize, usize) {
        self.stride.unwrap_or(self.size).hw()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dense {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub units: usize,
    #[serde(default)]
    pub activation: Activation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    pub rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchNorm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// PyTorch's convention: running = (1 - momentum) * running + momentum * batch.
    #[serde(default = "bn_momentum")]
    pub momentum: f64,
    #[serde(default = "bn_eps")]
    pub eps: f64,
}

fn bn_momentum() -> f64 {
    0.1
}
fn bn_eps() -> f64 {
    1e-5
}

impl LayerSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d(_) => "conv2d",
            LayerSpec::MaxPool2d(_) => "max_pool2d",
            LayerSpec::AvgPool2d(_) => "avg_pool2d",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Dense(_) => "dense",
            LayerSpec::Dropout(_) => "dropout",
            LayerSpec::BatchNorm(_) => "batch_norm",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Cross-entropy, formulated from the last layer's activation: on logits (none), on
    /// probabilities (softmax: computed from its logits, as Keras does), or on
    /// log-probabilities (log_softmax: PyTorch's CrossEntropyLoss applied to them).
    #[default]
    CrossEntropy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    Sgd {
        learning_rate: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    Adam {
        #[serde(default = "adam_lr")]
        learning_rate: f64,
        #[serde(default = "adam_betas")]
        betas: [f64; 2],
        #[serde(default = "adam_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Adamw {
        #[serde(default = "adam_lr")]
        learning_rate: f64,
        #[serde(default = "adam_betas")]
        betas: [f64; 2],
        #[serde(default = "adam_eps")]
        eps: f64,
        #[serde(default = "adamw_wd")]
        weight_decay: f64,
    },
}

impl OptimizerSpec {
    /// The rate the spec gives (the start of any `lr_schedule`).
    pub fn learning_rate(&self) -> f64 {
        match *self {
            OptimizerSpec::Sgd { learning_rate, .. }
            | OptimizerSpec::Adam { learning_rate, .. }
            | OptimizerSpec::Adamw { learning_rate, .. } => learning_rate,
        }
    }

    /// Sets the rate (a schedule's, for the next epoch).
    pub fn set_learning_rate(&mut self, lr: f64) {
        match self {
            OptimizerSpec::Sgd { learning_rate, .. }
            | OptimizerSpec::Adam { learning_rate, .. }
            | OptimizerSpec::Adamw { learning_rate, .. } => *learning_rate = lr,
        }
    }
}

fn adam_lr() -> f64 {
    1e-3
}
fn adam_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn adam_eps() -> f64 {
    1e-8
}
fn adamw_wd() -> f64 {
    1e-2
}

/// `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(0) => f.write_str("cuda"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl schemars::JsonSchema for DeviceSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DeviceSpec".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(auto|cpu|cuda(:[0-9]+)?)$",
            "description": "`auto` (CUDA when the server has it), `cpu`, `cuda` or `cuda:N`"
        })
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One problem in a spec: the field at fault (a JSON path such as `model.layers[3]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<FieldError>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("; "))
    }
}

impl SpecErrors {
    pub fn one(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecErrors(vec![FieldError {
            field: field.into(),
            reason: reason.into(),
        }])
    }
}

/// Parses a spec from JSON text: resolves a named preset, then deserialises, reporting
/// the JSON path of the first type error. Does not validate shapes or limits.
pub fn parse(text: &str) -> Result<ExperimentSpec, SpecErrors> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| SpecErrors::one("", format!("invalid JSON: {e}")))?;
    from_value(value)
}

/// Like [`parse`], from an already parsed JSON value.
pub fn from_value(value: serde_json::Value) -> Result<ExperimentSpec, SpecErrors> {
    let value = presets::resolve(value)?;
    match deserialize_at::<ExperimentSpec>("", value.clone()) {
        Ok(spec) => Ok(spec),
        Err(e) if e.0[0].field == "optimizer" => Err(locate_optimizer_error(&value).unwrap_or(e)),
        Err(e) if e.0[0].field == "lr_schedule" => Err(locate_schedule_error(&value).unwrap_or(e)),
        Err(e) => Err(locate_layer_error(&value).unwrap_or(e)),
    }
}

pub(crate) fn deserialize_at<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: serde_json::Value,
) -> Result<T, SpecErrors> {
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let at = value_at(&value, e.path());
        let reason = e.into_inner().to_string();
        let mut field = join_path(prefix, &path);
        // serde names a missing field only in its message, at the parent's path, and an
        // unknown one raw at the end of the path: name both by their own path, quoting a
        // key that is not a plain name (`dataset["a.b"]`).
        // (A "missing" field of something that is not an object is that thing's fault.)
        if let Some(name) = named_field(&reason)
            && (reason.starts_with("unknown") || at.is_some_and(|v| v.is_object()))
        {
            let parent = if field == name {
                ""
            } else {
                field
                    .strip_suffix(name)
                    .and_then(|p| p.strip_suffix('.'))
                    .unwrap_or(&field)
            };
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            field = match (parent.is_empty(), plain) {
                (true, true) => name.to_string(),
                (false, true) => format!("{parent}.{name}"),
                (_, false) => format!("{parent}[{}]", serde_json::Value::from(name)),
            };
        }
        SpecErrors::one(field, reason)
    })
}

/// The value a serde_path_to_error path leads to.
fn value_at<'a>(
    value: &'a serde_json::Value,
    path: &serde_path_to_error::Path,
) -> Option<&'a serde_json::Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(value, |v, s| match s {
        Segment::Seq { index } => v.get(index),
        Segment::Map { key } => v.get(key),
        Segment::Enum { .. } => Some(v),
        Segment::Unknown => None,
    })
}

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix, path) {
        (p, ".") => p.to_string(),
        ("", p) => p.to_string(),
        (pre, p) => format!("{pre}.{p}"),
    }
}

/// The field serde's `missing field `x`` and `unknown field `x`, expected ...` errors name.
fn named_field(reason: &str) -> Option<&str> {
    if let Some(rest) = reason.strip_prefix("missing field `") {
        return rest.strip_suffix('`');
    }
    let rest = reason.strip_prefix("unknown field `")?;
    let end = rest
        .rfind("`, expected")
        .or_else(|| rest.rfind("`, there are no fields"))?;
    Some(&rest[..end])
}

const LAYER_TYPES: [&str; 7] = [
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "flatten",
    "dense",
    "dropout",
    "batch_norm",
];

/// serde cannot follow the path into an internally tagged enum, so a layer's type error
/// would only name the layer: deserialise each layer's fields on their own to find it.
fn locate_layer_error(value: &serde_json::Value) -> Option<SpecErrors> {
    let layers = value.get("model")?.get("layers")?.as_array()?;
    for (i, layer) in layers.iter().enumerate() {
        let mut fields = layer.as_object()?.clone();
        let at = format!("model.layers[{i}]");
        let Some(kind) = fields.remove("type") else {
            return Some(SpecErrors::one(
                format!("{at}.type"),
                format!("missing field `type`: one of {}", LAYER_TYPES.join(", ")),
            ));
        };
        let rest = serde_json::Value::Object(fields);
        let r = match kind.as_str() {
            Some("conv2d") => deserialize_at::<Conv2d>(&at, rest).err(),
            Some("max_pool2d" | "avg_pool2d") => deserialize_at::<Pool2d>(&at, rest).err(),
            Some("dense") => deserialize_at::<Dense>(&at, rest).err(),
            Some("dropout") => deserialize_at::<Dropout>(&at, rest).err(),
            Some("batch_norm") => deserialize_at::<BatchNorm>(&at, rest).err(),
            Some("flatten") => None,
            _ => Some(SpecErrors::one(
                format!("{at}.type"),
                format!(
                    "unknown layer type {kind}: expected one of {}",
                    LAYER_TYPES.join(", ")
                ),
            )),
        };
        if r.is_some() {
            return r;
        }
    }
    None
}

/// The optimizer is internally tagged too: find the field at fault the same way.
fn locate_optimizer_error(value: &serde_json::Value) -> Option<SpecErrors> {
    /// Every optimizer field with its type; which ones a `type` takes is serde's check.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Fields {
        learning_rate: Option<f64>,
        momentum: Option<f64>,
        nesterov: Option<bool>,
        weight_decay: Option<f64>,
        betas: Option<[f64; 2]>,
        eps: Option<f64>,
    }
    let mut fields = value.get("optimizer")?.as_object()?.clone();
    let kind = fields.remove("type")?;
    if !matches!(kind.as_str(), Some("sgd" | "adam" | "adamw")) {
        return Some(SpecErrors::one(
            "optimizer.type",
            format!("unknown optimizer type {kind}: expected one of sgd, adam, adamw"),
        ));
    }
    deserialize_at::<Fields>("optimizer", serde_json::Value::Object(fields)).err()
}

/// The schedule is internally tagged too: find the field at fault the same way.
fn locate_schedule_error(value: &serde_json::Value) -> Option<SpecErrors> {
    /// Every schedule field with its type; which ones a `type` takes is serde's check.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Fields {
        step_size: Option<u32>,
        gamma: Option<f64>,
        t_max: Option<u32>,
        eta_min: Option<f64>,
        monitor: Option<Monitor>,
        factor: Option<f64>,
        patience: Option<u32>,
        min_lr: Option<f64>,
        threshold: Option<f64>,
        cooldown: Option<u32>,
        linear_warmup: Option<LinearWarmup>,
    }
    let mut fields = value.get("lr_schedule")?.as_object()?.clone();
    let Some(kind) = fields.remove("type") else {
        return Some(SpecErrors::one(
            "lr_schedule.type",
            format!(
                "missing field `type`: one of {}",
                schedule::SCHEDULE_TYPES.join(", ")
            ),
        ));
    };
    if !kind
        .as_str()
        .is_some_and(|k| schedule::SCHEDULE_TYPES.contains(&k))
    {
        return Some(SpecErrors::one(
            "lr_schedule.type",
            format!(
                "unknown schedule type {kind}: expected one of {}",
                schedule::SCHEDULE_TYPES.join(", ")
            ),
        ));
    }
    deserialize_at::<Fields>("lr_schedule", serde_json::Value::Object(fields)).err()
}

/// Parses and validates: the one call a caller needs before training.
pub fn parse_and_validate(text: &str) -> Result<(ExperimentSpec, Summary), SpecErrors> {
    let spec = parse(text)?;
    let summary = validate(&spec)?;
    Ok((spec, summary))
}
