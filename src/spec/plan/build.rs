//! Building the plan: the one walk over the spec's layers.
//!
//! Each layer is checked against the limits and resolved against the shape the layer
//! before it produces. A problem that leaves the next layer's input unknown ends the walk
//! (its errors are all that can be said); the others are reported and the walk goes on, so a
//! client fixes a spec in one round trip. The plan built so far is returned either way:
//! validation still judges a batch's activation memory from it.

use std::collections::HashMap;

use super::super::validate::limits::*;
use super::super::validate::{err, shape_str};
use super::super::{
    Activation, BatchNorm, Conv2d, Dense, Dropout, ExperimentSpec, FieldError, LayerSpec, Padding,
    Pool2d,
};
use super::{
    ConvPlan, DensePlan, LayerKind, NormPlan, Pad, Plan, PlannedLayer, PoolPlan, Role, TensorSpec,
};

/// A resolved layer: what it does, its output shape and its forward FLOPs per sample.
type Resolved = (LayerKind, Vec<usize>, u64);

/// Plans `spec`'s model for an input of shape `input` and `classes` outputs, pushing every
/// problem onto `e`.
pub(crate) fn plan_model(
    spec: &ExperimentSpec,
    input: [usize; 3],
    classes: usize,
    e: &mut Vec<FieldError>,
) -> Plan {
    let layers = &spec.model.layers;
    let mut out = Plan {
        input,
        layers: Vec::new(),
        parameters: 0,
        flops_per_sample: 0,
        activations_per_sample: input.iter().product::<usize>() as u64,
    };
    if layers.is_empty() {
        err(e, "model.layers", "must list at least one layer");
        return out;
    }
    if layers.len() > MAX_LAYERS {
        err(
            e,
            "model.layers",
            format!("at most {MAX_LAYERS} layers, got {}", layers.len()),
        );
        return out;
    }
    let mut shape: Vec<usize> = input.to_vec();
    let mut names = Names::default();
    let last = layers.len() - 1;
    for (i, layer) in layers.iter().enumerate() {
        let f = format!("model.layers[{i}]");
        let name = names.assign(layer, i, &f, e);
        check_activation(layer, i == last, &f, e);
        let Some((kind, output, flops)) = resolve(layer, &f, &shape, e) else {
            return out;
        };
        let tensors = name
            .as_deref()
            .map_or_else(Vec::new, |n| tensors_of(&kind, n));
        let parameters = tensors
            .iter()
            .filter(|t| t.role.trainable())
            .map(|t| t.len() as u64)
            .sum();
        out.parameters += parameters;
        out.flops_per_sample += flops;
        out.activations_per_sample += output.iter().product::<usize>() as u64;
        out.layers.push(PlannedLayer {
            index: i,
            kind,
            name,
            input: std::mem::replace(&mut shape, output.clone()),
            output,
            tensors,
            parameters,
            flops,
        });
    }
    if shape != [classes] {
        err(
            e,
            format!("model.layers[{last}]"),
            format!(
                "the model must end with {classes} outputs, one per class, got {}",
                shape_str(&shape)
            ),
        );
    }
    if out.parameters > MAX_PARAMETERS {
        err(
            e,
            "model",
            format!(
                "{} parameters exceed the limit of {MAX_PARAMETERS}",
                out.parameters
            ),
        );
    }
    if out.flops_per_sample > MAX_FLOPS_PER_SAMPLE {
        err(
            e,
            "model",
            format!(
                "{} FLOPs per sample exceed the limit of {MAX_FLOPS_PER_SAMPLE}",
                out.flops_per_sample
            ),
        );
    }
    out
}

/// The state-dict names of the layers that have tensors: given, or numbered per kind.
#[derive(Default)]
struct Names {
    counters: HashMap<&'static str, usize>,
    used: Vec<(String, usize)>,
}

impl Names {
    fn assign(
        &mut self,
        layer: &LayerSpec,
        i: usize,
        f: &str,
        e: &mut Vec<FieldError>,
    ) -> Option<String> {
        let (LayerSpec::Conv2d(Conv2d { name, .. })
        | LayerSpec::Dense(Dense { name, .. })
        | LayerSpec::BatchNorm(BatchNorm { name, .. })) = layer
        else {
            return None;
        };
        let kind = layer.kind();
        let c = self.counters.entry(kind).or_insert(0);
        *c += 1;
        let nm = name.clone().unwrap_or_else(|| default_name(kind, *c));
        if nm.is_empty()
            || nm.len() > 64
            || !nm.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            err(
                e,
                format!("{f}.name"),
                "must be 1-64 characters of letters, digits and _",
            );
        } else if let Some((_, j)) = self.used.iter().find(|(x, _)| *x == nm) {
            err(
                e,
                format!("{f}.name"),
                format!("{nm:?} is already used by model.layers[{j}]"),
            );
        }
        self.used.push((nm.clone(), i));
        Some(nm)
    }
}

/// Default state-dict names: `conv1, conv2, ...`, `fc1, ...`, `bn1, ...` by kind.
fn default_name(kind: &str, n: usize) -> String {
    match kind {
        "conv2d" => format!("conv{n}"),
        "dense" => format!("fc{n}"),
        _ => format!("bn{n}"),
    }
}

/// Softmax and log-softmax turn the output into (log-)probabilities: only the last layer,
/// a dense one, may have them.
fn check_activation(layer: &LayerSpec, is_last: bool, f: &str, e: &mut Vec<FieldError>) {
    let act = match layer {
        LayerSpec::Conv2d(Conv2d { activation, .. })
        | LayerSpec::Dense(Dense { activation, .. }) => Some(*activation),
        _ => None,
    };
    if let Some(a @ (Activation::Softmax | Activation::LogSoftmax)) = act
        && (!is_last || !matches!(layer, LayerSpec::Dense(_)))
    {
        err(
            e,
            format!("{f}.activation"),
            format!(
                "{} is only allowed on the last layer, a dense layer",
                if a == Activation::Softmax {
                    "softmax"
                } else {
                    "log_softmax"
                }
            ),
        );
    }
}

/// Resolves one layer against its input `shape`; `None` when its output is unknown.
fn resolve(
    layer: &LayerSpec,
    f: &str,
    shape: &[usize],
    e: &mut Vec<FieldError>,
) -> Option<Resolved> {
    match layer {
        LayerSpec::Conv2d(c) => conv(c, f, shape, e),
        LayerSpec::MaxPool2d(p) => pool(p, "max_pool2d", f, shape, e)
            .map(|p| (LayerKind::MaxPool2d(p.clone()), p.output(), 0)),
        LayerSpec::AvgPool2d(p) => pool(p, "avg_pool2d", f, shape, e)
            .map(|p| (LayerKind::AvgPool2d(p.clone()), p.output(), 0)),
        LayerSpec::Flatten => Some((LayerKind::Flatten, vec![shape.iter().product()], 0)),
        LayerSpec::Dense(d) => dense(d, f, shape, e),
        LayerSpec::Dropout(Dropout { rate }) => {
            if !(rate.is_finite() && (0.0..1.0).contains(rate)) {
                err(
                    e,
                    format!("{f}.rate"),
                    format!("must be in [0, 1), got {rate}"),
                );
            }
            Some((LayerKind::Dropout { rate: *rate }, shape.to_vec(), 0))
        }
        LayerSpec::BatchNorm(BatchNorm { momentum, eps, .. }) => {
            if !(momentum.is_finite() && (0.0..=1.0).contains(momentum)) {
                err(
                    e,
                    format!("{f}.momentum"),
                    format!("must be in [0, 1], got {momentum}"),
                );
            }
            if !(eps.is_finite() && *eps > 0.0) {
                err(
                    e,
                    format!("{f}.eps"),
                    format!("must be a positive number, got {eps}"),
                );
            }
            let norm = NormPlan {
                channels: shape[0],
                momentum: *momentum,
                eps: *eps,
            };
            Some((LayerKind::BatchNorm(norm), shape.to_vec(), 0))
        }
    }
}

fn conv(c: &Conv2d, f: &str, shape: &[usize], e: &mut Vec<FieldError>) -> Option<Resolved> {
    let (kh, kw) = c.kernel.hw();
    let (sh, sw) = c.stride.hw();
    // The three limits are all reported before giving up.
    let mut ok = true;
    if !(1..=MAX_FILTERS).contains(&c.filters) {
        err(
            e,
            format!("{f}.filters"),
            format!("must be between 1 and {MAX_FILTERS}"),
        );
        ok = false;
    }
    if !(1..=MAX_KERNEL).contains(&kh) || !(1..=MAX_KERNEL).contains(&kw) {
        err(
            e,
            format!("{f}.kernel"),
            format!("each side must be between 1 and {MAX_KERNEL}"),
        );
        ok = false;
    }
    if !(1..=MAX_KERNEL).contains(&sh) || !(1..=MAX_KERNEL).contains(&sw) {
        err(
            e,
            format!("{f}.stride"),
            format!("each side must be between 1 and {MAX_KERNEL}"),
        );
        ok = false;
    }
    let &[in_c, h, w] = shape else {
        err(
            e,
            f,
            format!(
                "conv2d needs an image input (channels x height x width), got a flat vector of {}",
                shape_str(shape)
            ),
        );
        return None;
    };
    if !ok {
        return None;
    }
    let (out_h, out_w) = match c.padding {
        Padding::Valid => {
            if h < kh || w < kw {
                err(
                    e,
                    f,
                    format!("conv2d {kh}x{kw} needs at least {kh}x{kw} input, got {h}x{w}"),
                );
                return None;
            }
            ((h - kh) / sh + 1, (w - kw) / sw + 1)
        }
        Padding::Same => (h.div_ceil(sh), w.div_ceil(sw)),
    };
    let filters = c.filters;
    let flops = 2 * (kh * kw * in_c * filters * out_h * out_w) as u64;
    let plan = ConvPlan {
        in_c,
        in_h: h,
        in_w: w,
        filters,
        kernel: (kh, kw),
        stride: (sh, sw),
        pad: Pad::resolve(c.padding, (h, w), (kh, kw), (sh, sw)),
        out_h,
        out_w,
        activation: c.activation,
    };
    Some((LayerKind::Conv2d(plan), vec![filters, out_h, out_w], flops))
}

fn pool(
    p: &Pool2d,
    kind: &str,
    f: &str,
    shape: &[usize],
    e: &mut Vec<FieldError>,
) -> Option<PoolPlan> {
    let (kh, kw) = p.size.hw();
    let (sh, sw) = p.stride_hw();
    if !(1..=MAX_KERNEL).contains(&kh) || !(1..=MAX_KERNEL).contains(&kw) {
        err(
            e,
            format!("{f}.size"),
            format!("each side must be between 1 and {MAX_KERNEL}"),
        );
        return None;
    }
    if !(1..=MAX_KERNEL).contains(&sh) || !(1..=MAX_KERNEL).contains(&sw) {
        err(
            e,
            format!("{f}.stride"),
            format!("each side must be between 1 and {MAX_KERNEL}"),
        );
        return None;
    }
    let &[c, h, w] = shape else {
        err(
            e,
            f,
            format!(
                "{kind} needs an image input (channels x height x width), got a flat vector of {}",
                shape_str(shape)
            ),
        );
        return None;
    };
    if h < kh || w < kw {
        err(
            e,
            f,
            format!("{kind} {kh}x{kw} needs at least {kh}x{kw} input, got {h}x{w}"),
        );
        return None;
    }
    Some(PoolPlan {
        c,
        h,
        w,
        size: (kh, kw),
        stride: (sh, sw),
        out_h: (h - kh) / sh + 1,
        out_w: (w - kw) / sw + 1,
    })
}

impl PoolPlan {
    fn output(&self) -> Vec<usize> {
        vec![self.c, self.out_h, self.out_w]
    }
}

fn dense(d: &Dense, f: &str, shape: &[usize], e: &mut Vec<FieldError>) -> Option<Resolved> {
    if !(1..=MAX_UNITS).contains(&d.units) {
        err(
            e,
            format!("{f}.units"),
            format!("must be between 1 and {MAX_UNITS}"),
        );
        return None;
    }
    let &[inputs] = shape else {
        err(
            e,
            f,
            format!(
                "dense needs a flat input: add a flatten layer before it (got {})",
                shape_str(shape)
            ),
        );
        return None;
    };
    let plan = DensePlan {
        inputs,
        units: d.units,
        activation: d.activation,
    };
    Some((
        LayerKind::Dense(plan),
        vec![d.units],
        2 * (inputs * d.units) as u64,
    ))
}

/// A layer's state-dict tensors in PyTorch's names and layouts: conv `[out, in, kh, kw]`,
/// dense `[out, in]`, batch norm per channel. The only place they are named.
fn tensors_of(kind: &LayerKind, name: &str) -> Vec<TensorSpec> {
    let t = |role: Role, shape: Vec<usize>| TensorSpec {
        name: format!("{name}.{}", role.key()),
        shape,
        role,
    };
    match kind {
        LayerKind::Conv2d(c) => vec![
            t(
                Role::Weight,
                vec![c.filters, c.in_c, c.kernel.0, c.kernel.1],
            ),
            t(Role::Bias, vec![c.filters]),
        ],
        LayerKind::Dense(d) => vec![
            t(Role::Weight, vec![d.units, d.inputs]),
            t(Role::Bias, vec![d.units]),
        ],
        LayerKind::BatchNorm(n) => vec![
            t(Role::Weight, vec![n.channels]),
            t(Role::Bias, vec![n.channels]),
            t(Role::RunningMean, vec![n.channels]),
            t(Role::RunningVar, vec![n.channels]),
            t(Role::BatchesTracked, vec![]),
        ],
        LayerKind::MaxPool2d(_)
        | LayerKind::AvgPool2d(_)
        | LayerKind::Flatten
        | LayerKind::Dropout { .. } => Vec::new(),
    }
}
