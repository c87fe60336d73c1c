//! The resolved model plan: what validation learned about a spec's model, and the one
//! description every engine path builds from.
//!
//! Before the plan, Candle's graph, the predictor and the CPU kernels each walked the spec's
//! layers again and recomputed padding, shapes and parameter names, and validation was a
//! fourth walk; adding a layer meant changing four places that had to agree. Now validation
//! ([`super::validate`]) is the only walk over [`LayerSpec`](super::LayerSpec): it resolves
//! each layer's input and output shapes, padding, strides, activation, state-dict tensors
//! and FLOPs into a [`Plan`], and the backends match on [`LayerKind`] (exhaustively, so a new
//! kind must be handled everywhere the compiler points at).
//!
//! A [`Plan`] that [`super::validate`] returns is valid: convolutions and pools have image
//! inputs, dense layers flat ones, the output is one value per class. Backends rely on that.
//!
//! This module is compiled alone by the fuzz crate, so it knows nothing of Candle or the
//! engine: engine knowledge about a plan (which backend can run it) lives in the engine.

mod build;

use serde::{Serialize, Serializer};

pub(super) use build::plan_model;

use super::{Activation, Padding};

/// TensorFlow's "same" padding along one axis: `(before, after)`, the extra row or column
/// (of an even total) after. Output size is `ceil(n / s)`.
pub fn same_padding(n: usize, k: usize, s: usize) -> (usize, usize) {
    let out = n.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(n);
    (total / 2, total - total / 2)
}

/// Zero rows and columns added around a convolution's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pad {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Pad {
    /// The padding `padding` gives an `h`x`w` input under kernel `k` and stride `s`.
    pub fn resolve(
        padding: Padding,
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
    ) -> Pad {
        match padding {
            Padding::Valid => Pad::default(),
            Padding::Same => {
                let (top, bottom) = same_padding(h, kh, sh);
                let (left, right) = same_padding(w, kw, sw);
                Pad {
                    top,
                    bottom,
                    left,
                    right,
                }
            }
        }
    }

    /// `[top, bottom, left, right]`.
    pub fn as_array(self) -> [usize; 4] {
        [self.top, self.bottom, self.left, self.right]
    }
}

/// A 2-D convolution, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvPlan {
    /// Input channels, height and width.
    pub in_c: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub filters: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Resolved from the spec's padding (all zero for `valid`).
    pub pad: Pad,
    pub out_h: usize,
    pub out_w: usize,
    pub activation: Activation,
}

impl ConvPlan {
    /// Inputs of one output value: channels times the kernel's area.
    pub fn fan_in(&self) -> usize {
        self.in_c * self.kernel.0 * self.kernel.1
    }

    /// Keras's fan-out of a convolution: filters times the kernel's area.
    pub fn fan_out(&self) -> usize {
        self.filters * self.kernel.0 * self.kernel.1
    }
}

/// A max or average pool, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPlan {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub size: (usize, usize),
    /// The spec's stride, or the size when it gives none.
    pub stride: (usize, usize),
    pub out_h: usize,
    pub out_w: usize,
}

impl PoolPlan {
    /// A 1x1 pool at stride 1 passes its input through.
    pub fn is_identity(&self) -> bool {
        self.size == (1, 1) && self.stride == (1, 1)
    }
}

/// A fully connected layer, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DensePlan {
    pub inputs: usize,
    pub units: usize,
    pub activation: Activation,
}

/// Batch normalisation, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct NormPlan {
    /// Channels of an image input, or features of a flat one.
    pub channels: usize,
    pub momentum: f64,
    pub eps: f64,
}

/// What a planned layer does, with everything its backends need.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    Conv2d(ConvPlan),
    MaxPool2d(PoolPlan),
    AvgPool2d(PoolPlan),
    Flatten,
    Dense(DensePlan),
    Dropout { rate: f64 },
    BatchNorm(NormPlan),
}

impl LayerKind {
    /// The spec's `type` of this layer.
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Conv2d(_) => "conv2d",
            LayerKind::MaxPool2d(_) => "max_pool2d",
            LayerKind::AvgPool2d(_) => "avg_pool2d",
            LayerKind::Flatten => "flatten",
            LayerKind::Dense(_) => "dense",
            LayerKind::Dropout { .. } => "dropout",
            LayerKind::BatchNorm(_) => "batch_norm",
        }
    }

    /// The activation of a convolution or dense layer.
    pub fn activation(&self) -> Option<Activation> {
        match self {
            LayerKind::Conv2d(c) => Some(c.activation),
            LayerKind::Dense(d) => Some(d.activation),
            _ => None,
        }
    }
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that width and alignment (`{:<10}`) apply.
        f.pad(self.name())
    }
}

/// What a state-dict entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Weight,
    Bias,
    RunningMean,
    RunningVar,
    /// Batch norm's `num_batches_tracked`, an integer counter.
    BatchesTracked,
}

impl Role {
    /// PyTorch's key after the layer name.
    pub fn key(self) -> &'static str {
        match self {
            Role::Weight => "weight",
            Role::Bias => "bias",
            Role::RunningMean => "running_mean",
            Role::RunningVar => "running_var",
            Role::BatchesTracked => "num_batches_tracked",
        }
    }

    /// Whether the optimizer updates it.
    pub fn trainable(self) -> bool {
        matches!(self, Role::Weight | Role::Bias)
    }
}

/// One state-dict tensor: PyTorch's name and layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One layer of the model, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedLayer {
    /// Position in the spec's `model.layers`.
    pub index: usize,
    pub kind: LayerKind,
    /// State-dict prefix of a layer with tensors: given, or `conv1`, `fc1`, `bn1`, ...
    pub name: Option<String>,
    /// Per-sample shapes: `[c, h, w]` or `[n]`.
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    /// State-dict entries, in order: `weight, bias` (and for batch norm `running_mean,
    /// running_var, num_batches_tracked`).
    pub tensors: Vec<TensorSpec>,
    /// Trainable values.
    pub parameters: u64,
    /// Forward-pass FLOPs per sample (conv and dense; 0 for the others).
    pub flops: u64,
}

impl PlannedLayer {
    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    pub fn output_len(&self) -> usize {
        self.output.iter().product()
    }

    /// The tensor of `role`, which a layer of this kind always has.
    pub fn tensor(&self, role: Role) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.role == role)
    }
}

/// A spec's model, resolved: the one description every engine path builds from.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Input shape `[channels, height, width]`.
    pub input: [usize; 3],
    pub layers: Vec<PlannedLayer>,
    pub parameters: u64,
    /// Forward-pass FLOPs per sample (a multiply-add counts 2) of conv and dense layers.
    pub flops_per_sample: u64,
    /// Values per sample over the input and every layer's output.
    pub activations_per_sample: u64,
}

/// The name the API and the CLI use for a plan: its JSON is the model summary.
pub type Summary = Plan;

impl Plan {
    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    /// Values the model outputs per sample (one per class).
    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, PlannedLayer::output_len)
    }

    /// The activation of the output: the last layer's, when it is a conv or dense layer.
    pub fn output_activation(&self) -> Activation {
        self.layers
            .last()
            .and_then(|l| l.kind.activation())
            .unwrap_or(Activation::None)
    }

    /// Trainable tensors in the optimizer's order: each layer's weight, then bias.
    pub fn trainable(&self) -> impl Iterator<Item = &TensorSpec> {
        self.layers
            .iter()
            .flat_map(|l| &l.tensors)
            .filter(|t| t.role.trainable())
    }

    /// The state dict in the order checkpoints list it: every layer's tensors but
    /// `num_batches_tracked`, then each `num_batches_tracked`. Loading reports the first
    /// tensor that is missing or has the wrong shape in this order.
    pub fn state_dict(&self) -> Vec<&TensorSpec> {
        let all = || self.layers.iter().flat_map(|l| &l.tensors);
        all()
            .filter(|t| t.role != Role::BatchesTracked)
            .chain(all().filter(|t| t.role == Role::BatchesTracked))
            .collect()
    }
}

/// The plan as the API shows it (`summary` of `POST /specs/validate` and of an experiment):
/// written here once, apart from the plan's fields, so that the engine's needs never change
/// the API's JSON.
#[derive(Serialize)]
struct SummaryJson<'a> {
    input: [usize; 3],
    layers: Vec<LayerJson<'a>>,
    parameters: u64,
    flops_per_sample: u64,
    activations_per_sample: u64,
}

#[derive(Serialize)]
struct LayerJson<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    output: &'a [usize],
    parameters: u64,
    flops: u64,
}

impl Serialize for Plan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SummaryJson {
            input: self.input,
            layers: self
                .layers
                .iter()
                .map(|l| LayerJson {
                    kind: l.kind.name(),
                    name: l.name.as_deref(),
                    output: &l.output,
                    parameters: l.parameters,
                    flops: l.flops,
                })
                .collect(),
            parameters: self.parameters,
            flops_per_sample: self.flops_per_sample,
            activations_per_sample: self.activations_per_sample,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests;
