//! Validation before any training: limits, shape inference through the layer list,
//! parameter count and FLOPs per sample.
//!
//! Every problem is reported with the JSON path of the field at fault, and validation keeps
//! going after the first problem where it can, so a client fixes a spec in one round trip.
//! The limits below keep one request from asking for unbounded memory or time.

use serde::Serialize;

use super::{
    Activation, BatchNorm, Conv2d, Dense, Dropout, ExperimentSpec, FieldError, LayerSpec,
    OptimizerSpec, Padding, SPEC_VERSION, SpecErrors, Validation,
};

/// Documented limits (README, "Limits").
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

/// Number of classes of every dataset trainyard knows.
pub const NUM_CLASSES: usize = 10;

/// What validation learned about a spec's model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Input shape `[channels, height, width]`.
    pub input: [usize; 3],
    pub layers: Vec<LayerSummary>,
    pub parameters: u64,
    /// Forward-pass FLOPs per sample (a multiply-add counts 2) of conv and dense layers.
    pub flops_per_sample: u64,
    /// Values per sample over the input and every layer's output.
    pub activations_per_sample: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSummary {
    pub kind: &'static str,
    /// State-dict prefix of a layer with parameters (`conv1`, `fc`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Output shape per sample: `[c, h, w]` or `[n]`.
    pub output: Vec<usize>,
    pub parameters: u64,
    /// Forward-pass FLOPs per sample of this layer (conv and dense; 0 for the others).
    pub flops: u64,
}

fn err(errors: &mut Vec<FieldError>, field: impl Into<String>, reason: impl Into<String>) {
    errors.push(FieldError {
        field: field.into(),
        reason: reason.into(),
    });
}

fn shape_str(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Validates a parsed spec. Returns the model summary or every problem found.
pub fn validate(spec: &ExperimentSpec) -> Result<Summary, SpecErrors> {
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
    let (mut h, mut w) = (28usize, 28usize);
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
    if let Some(n) = d.normalize {
        if !n.mean.is_finite() {
            err(&mut e, "dataset.normalize.mean", "must be a finite number");
        }
        if !(n.std.is_finite() && n.std > 0.0) {
            err(&mut e, "dataset.normalize.std", "must be a positive number");
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
    let summary = validate_model(spec, [1, h, w], &mut e);
    // Forward values and their gradients, 4 bytes each, for a whole batch.
    let batch_bytes = summary.activations_per_sample * spec.batch_size as u64 * 8;
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
        Ok(summary)
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

/// Default state-dict names: `conv1, conv2, ...`, `fc1, ...`, `bn1, ...` by kind.
fn default_name(kind: &str, n: usize) -> String {
    match kind {
        "conv2d" => format!("conv{n}"),
        "dense" => format!("fc{n}"),
        _ => format!("bn{n}"),
    }
}

fn validate_model(spec: &ExperimentSpec, input: [usize; 3], e: &mut Vec<FieldError>) -> Summary {
    use limits::*;
    let layers = &spec.model.layers;
    let mut out = Summary {
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
    let mut counters = std::collections::HashMap::new();
    let mut names: Vec<(String, usize)> = Vec::new();
    let last = layers.len() - 1;
    for (i, layer) in layers.iter().enumerate() {
        let f = format!("model.layers[{i}]");
        let kind = layer.kind();
        let mut params = 0u64;
        let mut flops = 0u64;
        let mut name = None;
        if let LayerSpec::Conv2d(Conv2d { name: n, .. })
        | LayerSpec::Dense(Dense { name: n, .. })
        | LayerSpec::BatchNorm(BatchNorm { name: n, .. }) = layer
        {
            let c = counters.entry(kind).or_insert(0usize);
            *c += 1;
            let nm = n.clone().unwrap_or_else(|| default_name(kind, *c));
            if nm.is_empty()
                || nm.len() > 64
                || !nm.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                err(
                    e,
                    format!("{f}.name"),
                    "must be 1-64 characters of letters, digits and _",
                );
            } else if let Some((_, j)) = names.iter().find(|(x, _)| *x == nm) {
                err(
                    e,
                    format!("{f}.name"),
                    format!("{nm:?} is already used by model.layers[{j}]"),
                );
            }
            names.push((nm.clone(), i));
            name = Some(nm);
        }
        let act = match layer {
            LayerSpec::Conv2d(Conv2d { activation, .. })
            | LayerSpec::Dense(Dense { activation, .. }) => Some(*activation),
            _ => None,
        };
        if let Some(a @ (Activation::Softmax | Activation::LogSoftmax)) = act
            && (i != last || !matches!(layer, LayerSpec::Dense(_)))
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
        let image = shape.len() == 3;
        match layer {
            LayerSpec::Conv2d(Conv2d {
                filters,
                kernel,
                stride,
                padding,
                ..
            }) => {
                let (kh, kw) = kernel.hw();
                let (sh, sw) = stride.hw();
                let mut ok = true;
                if !(1..=MAX_FILTERS).contains(filters) {
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
                if !image {
                    err(
                        e,
                        &f,
                        format!(
                            "conv2d needs an image input (channels x height x width), got a flat vector of {}",
                            shape_str(&shape)
                        ),
                    );
                    return out;
                }
                if !ok {
                    return out;
                }
                let (c, h, w) = (shape[0], shape[1], shape[2]);
                let (oh, ow) = match padding {
                    Padding::Valid => {
                        if h < kh || w < kw {
                            err(
                                e,
                                &f,
                                format!(
                                    "conv2d {kh}x{kw} needs at least {kh}x{kw} input, got {h}x{w}"
                                ),
                            );
                            return out;
                        }
                        ((h - kh) / sh + 1, (w - kw) / sw + 1)
                    }
                    Padding::Same => (h.div_ceil(sh), w.div_ceil(sw)),
                };
                params = (kh * kw * c * filters + filters) as u64;
                flops = 2 * (kh * kw * c * filters * oh * ow) as u64;
                shape = vec![*filters, oh, ow];
            }
            LayerSpec::MaxPool2d(pool) | LayerSpec::AvgPool2d(pool) => {
                let (kh, kw) = pool.size.hw();
                let (sh, sw) = pool.stride_hw();
                if !(1..=MAX_KERNEL).contains(&kh) || !(1..=MAX_KERNEL).contains(&kw) {
                    err(
                        e,
                        format!("{f}.size"),
                        format!("each side must be between 1 and {MAX_KERNEL}"),
                    );
                    return out;
                }
                if !(1..=MAX_KERNEL).contains(&sh) || !(1..=MAX_KERNEL).contains(&sw) {
                    err(
                        e,
                        format!("{f}.stride"),
                        format!("each side must be between 1 and {MAX_KERNEL}"),
                    );
                    return out;
                }
                if !image {
                    err(
                        e,
                        &f,
                        format!(
                            "{kind} needs an image input (channels x height x width), got a flat vector of {}",
                            shape_str(&shape)
                        ),
                    );
                    return out;
                }
                let (c, h, w) = (shape[0], shape[1], shape[2]);
                if h < kh || w < kw {
                    err(
                        e,
                        &f,
                        format!("{kind} {kh}x{kw} needs at least {kh}x{kw} input, got {h}x{w}"),
                    );
                    return out;
                }
                shape = vec![c, (h - kh) / sh + 1, (w - kw) / sw + 1];
            }
            LayerSpec::Flatten => shape = vec![shape.iter().product()],
            LayerSpec::Dense(Dense { units, .. }) => {
                if !(1..=MAX_UNITS).contains(units) {
                    err(
                        e,
                        format!("{f}.units"),
                        format!("must be between 1 and {MAX_UNITS}"),
                    );
                    return out;
                }
                if image {
                    err(
                        e,
                        &f,
                        format!(
                            "dense needs a flat input: add a flatten layer before it (got {})",
                            shape_str(&shape)
                        ),
                    );
                    return out;
                }
                params = (shape[0] * units + units) as u64;
                flops = 2 * (shape[0] * units) as u64;
                shape = vec![*units];
            }
            LayerSpec::Dropout(Dropout { rate }) => {
                if !(rate.is_finite() && (0.0..1.0).contains(rate)) {
                    err(
                        e,
                        format!("{f}.rate"),
                        format!("must be in [0, 1), got {rate}"),
                    );
                }
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
                params = 2 * shape[0] as u64;
            }
        }
        out.parameters += params;
        out.flops_per_sample += flops;
        out.activations_per_sample += shape.iter().product::<usize>() as u64;
        out.layers.push(LayerSummary {
            kind,
            name,
            output: shape.clone(),
            parameters: params,
            flops,
        });
    }
    if shape != [NUM_CLASSES] {
        err(
            e,
            format!("model.layers[{last}]"),
            format!(
                "the model must end with {NUM_CLASSES} outputs, one per class, got {}",
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
