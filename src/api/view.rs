//! How an experiment looks in every response: the stored row, plus what a person
//! reading a list needs without fetching more (the number of epochs asked for, a
//! one-line model, the parameter count) and the links to its resources.

use serde::Serialize;

use crate::spec::footprint::Footprint;
use crate::spec::{DataInfo, ExperimentSpec, LayerSpec, Summary};
use crate::store::Experiment;

/// An experiment as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExperimentView {
    #[serde(flatten)]
    pub experiment: Experiment,
    /// Epochs the spec asks for (`epochs_done` of them are stored).
    pub epochs: u32,
    pub model: ModelBrief,
    /// Shapes, parameters and FLOPs of each layer (on submission and on
    /// `GET /experiments/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub summary: Option<Summary>,
    /// The memory its job process needs at the peak, by part: the estimate admission
    /// checked (with the layer table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footprint: Option<Footprint>,
    pub links: Links,
}

/// The model in one line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelBrief {
    /// The preset it started from, if any.
    pub preset: Option<String>,
    /// The layers, e.g. `conv2d 32 3x3 relu · max_pool2d 2x2 · flatten · dense 10 softmax`.
    pub layers: String,
    pub parameters: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub curve: String,
    pub metrics: String,
    pub checkpoints: String,
}

impl ExperimentView {
    /// The view of a stored experiment; `with_summary` adds the layer table.
    pub fn new(experiment: Experiment, with_summary: bool) -> Self {
        let base = format!("/experiments/{}", experiment.id);
        // A stored spec was validated when it was submitted; should one ever fail to
        // read back (a row written by hand), the view still shows the row.
        let spec: Option<ExperimentSpec> = serde_json::from_value(experiment.spec.clone()).ok();
        // Planned against the data it was submitted for (older rows: a built-in dataset).
        let data: Option<DataInfo> = experiment
            .data
            .clone()
            .and_then(|d| serde_json::from_value(d).ok());
        let summary = spec.as_ref().and_then(|s| match &data {
            Some(d) => crate::spec::validate_for(s, d.shape()).ok(),
            None => crate::spec::validate(s).ok(),
        });
        let footprint = match (&spec, &summary) {
            (Some(s), Some(plan)) if with_summary => {
                let data = data.clone().or_else(|| match s.dataset.source {
                    crate::spec::DataSource::BuiltIn(n) => Some(n.info()),
                    _ => None,
                });
                data.map(|d| crate::spec::footprint::estimate(s, plan, &d))
            }
            _ => None,
        };
        ExperimentView {
            links: Links {
                curve: format!("{base}/curve"),
                metrics: format!("{base}/metrics"),
                checkpoints: format!("{base}/checkpoints"),
                this: base,
            },
            epochs: spec.as_ref().map_or(0, |s| s.epochs),
            model: ModelBrief {
                preset: spec.as_ref().and_then(|s| s.model.preset.clone()),
                layers: spec
                    .as_ref()
                    .map(|s| layers_line(&s.model.layers))
                    .unwrap_or_default(),
                parameters: summary.as_ref().map_or(0, |s| s.parameters),
            },
            summary: summary.filter(|_| with_summary),
            footprint,
            experiment,
        }
    }
}

/// `conv2d 32 3x3 relu · max_pool2d 2x2 · flatten · dense 10 softmax`.
fn layers_line(layers: &[LayerSpec]) -> String {
    let size = |s: crate::spec::Size2| {
        let (h, w) = s.hw();
        format!("{h}x{w}")
    };
    let act = |a: crate::spec::Activation| match serde_json::to_value(a) {
        Ok(serde_json::Value::String(s)) if s != "none" => format!(" {s}"),
        _ => String::new(),
    };
    layers
        .iter()
        .map(|l| match l {
            LayerSpec::Conv2d(c) => {
                format!(
                    "conv2d {} {}{}",
                    c.filters,
                    size(c.kernel),
                    act(c.activation)
                )
            }
            LayerSpec::MaxPool2d(p) | LayerSpec::AvgPool2d(p) => {
                format!("{} {}", l.kind(), size(p.size))
            }
            LayerSpec::Dense(d) => format!("dense {}{}", d.units, act(d.activation)),
            LayerSpec::Dropout(d) => format!("dropout {}", d.rate),
            LayerSpec::Flatten | LayerSpec::BatchNorm(_) => l.kind().to_string(),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}
