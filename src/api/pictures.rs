//! Curve pictures over HTTP: `/experiments/{id}/curve.svg|png` and
//! `/compare.svg|png?ids=...`, drawn by [`crate::plot`] from the stored epochs.
//!
//! They exist for places with no JavaScript (a README, a notebook, a chat message), so
//! each is one GET with everything in the query. Rasterising is CPU work of up to a few
//! hundred milliseconds at the largest size, so PNGs are drawn on a blocking thread,
//! never on the async runtime.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::auth::Caller;
use super::input::{int_param, path_id, query};
use super::{AppState, error::ApiError};
use crate::engine::metrics::EpochMetrics;
use crate::plot::{self, Chart, Metric, Run};
use crate::store::Experiment;
use crate::store::queue::EpochRecord;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/experiments/{id}/curve.svg", get(curve_svg))
        .route("/experiments/{id}/curve.png", get(curve_png))
        .route("/compare.svg", get(compare_svg))
        .route("/compare.png", get(compare_png))
        .route("/sweeps/{id}/curve.svg", get(sweep_svg))
        .route("/sweeps/{id}/curve.png", get(sweep_png))
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PictureParams {
    /// `loss` (default) or `accuracy`.
    #[param(pattern = "^(loss|accuracy)$")]
    pub metric: Option<String>,
    /// Pixels, 200 to 4000 (default 800).
    #[param(value_type = Option<u32>, minimum = 200, maximum = 4000)]
    pub width: Option<String>,
    /// Pixels, 200 to 4000 (default 500).
    #[param(value_type = Option<u32>, minimum = 200, maximum = 4000)]
    pub height: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ComparePictureParams {
    /// `loss` (default) or `accuracy`.
    #[param(pattern = "^(loss|accuracy)$")]
    pub metric: Option<String>,
    /// Pixels, 200 to 4000 (default 800).
    #[param(value_type = Option<u32>, minimum = 200, maximum = 4000)]
    pub width: Option<String>,
    /// Pixels, 200 to 4000 (default 500).
    #[param(value_type = Option<u32>, minimum = 200, maximum = 4000)]
    pub height: Option<String>,
    /// 2 to 8 experiment ids, comma-separated.
    #[param(required = true, value_type = String, pattern = "^[0-9a-fA-F-]{32,36}(,[0-9a-fA-F-]{32,36}){1,7}$")]
    pub ids: Option<String>,
}

/// What a picture request asks for, checked.
struct Asked {
    metric: Metric,
    width: u32,
    height: u32,
}

impl PictureParams {
    fn check(&self) -> Result<Asked, ApiError> {
        let metric = match self.metric.as_deref() {
            None => Metric::Loss,
            Some(m) => m
                .parse()
                .map_err(|e: String| ApiError::field("metric", e))?,
        };
        let size = |field: &str, v: Option<&str>, default: u32| -> Result<u32, ApiError> {
            let n: u32 = int_param(field, v)?.unwrap_or(default);
            if (plot::MIN_SIZE..=plot::MAX_SIZE).contains(&n) {
                Ok(n)
            } else {
                Err(ApiError::field(
                    field,
                    format!(
                        "must be between {} and {} pixels",
                        plot::MIN_SIZE,
                        plot::MAX_SIZE
                    ),
                ))
            }
        };
        Ok(Asked {
            metric,
            width: size("width", self.width.as_deref(), plot::DEFAULT_WIDTH)?,
            height: size("height", self.height.as_deref(), plot::DEFAULT_HEIGHT)?,
        })
    }
}

/// A run's label in a picture: its name, or the start of its id.
fn label(e: &Experiment) -> String {
    e.name
        .clone()
        .unwrap_or_else(|| e.id.simple().to_string()[..8].to_string())
}

/// The chart of `experiments`' stored epochs.
async fn chart_of(
    state: &AppState,
    experiments: &[Experiment],
    metric: Metric,
    title: String,
) -> Result<Chart, ApiError> {
    let mut epochs: Vec<Vec<EpochMetrics>> = Vec::with_capacity(experiments.len());
    for e in experiments {
        let rows = state.store.stored_epochs(e.id).await?;
        epochs.push(rows.into_iter().map(|r| plotted(r.metrics)).collect());
    }
    let labels: Vec<String> = experiments.iter().map(label).collect();
    let runs: Vec<Run> = labels
        .iter()
        .zip(&epochs)
        .map(|(name, epochs)| Run { name, epochs })
        .collect();
    Ok(plot::chart(&title, &runs, metric))
}

/// A stored epoch as the plot reads it (the engine's metric row).
fn plotted(r: EpochRecord) -> EpochMetrics {
    EpochMetrics {
        epoch: r.epoch,
        train_loss: r.train_loss,
        train_accuracy: r.train_accuracy,
        val_loss: r.val_loss,
        val_accuracy: r.val_accuracy,
        test_loss: r.test_loss,
        test_accuracy: r.test_accuracy,
        train_seconds: r.train_seconds,
        images_per_second: r.images_per_second,
        learning_rate: r.learning_rate,
    }
}

enum Format {
    Svg,
    Png,
}

async fn render(chart: Chart, asked: &Asked, format: Format) -> Result<Response, ApiError> {
    let (w, h) = (asked.width, asked.height);
    Ok(match format {
        // An SVG opened on its own is a document: it may run nothing and load nothing.
        Format::Svg => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
            ],
            plot::svg(&chart, w, h),
        )
            .into_response(),
        Format::Png => {
            let bytes = tokio::task::spawn_blocking(move || plot::png(&chart, w, h))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
        }
    })
}

async fn curve(
    state: AppState,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    p: RawQuery,
    format: Format,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let p: PictureParams = query(p)?;
    let asked = p.check()?;
    let exp = state.store.experiment_in(caller.scope(), id).await?;
    let title = format!("{} · {}", label(&exp), asked.metric);
    let chart = chart_of(&state, std::slice::from_ref(&exp), asked.metric, title).await?;
    render(chart, &asked, format).await
}

async fn compare(
    state: AppState,
    caller: Caller,
    p: RawQuery,
    format: Format,
) -> Result<Response, ApiError> {
    let p: ComparePictureParams = query(p)?;
    let asked = PictureParams {
        metric: p.metric,
        width: p.width,
        height: p.height,
    }
    .check()?;
    let found = super::compare::experiments(&state, &caller, p.ids.as_deref()).await?;
    let chart = chart_of(&state, &found, asked.metric, asked.metric.to_string()).await?;
    render(chart, &asked, format).await
}

/// A picture of an experiment's curves (train, validation, test) as SVG.
#[utoipa::path(get, path = "/experiments/{id}/curve.svg", tag = "pictures",
    params(("id" = uuid::Uuid, Path, description = "Experiment id"), PictureParams),
    responses(
        (status = 200, description = "The curves drawn from the stored epochs", content_type = "image/svg+xml", body = String),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn curve_svg(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    p: RawQuery,
) -> Result<Response, ApiError> {
    curve(state, caller, id, p, Format::Svg).await
}

/// The same picture as PNG.
#[utoipa::path(get, path = "/experiments/{id}/curve.png", tag = "pictures",
    params(("id" = uuid::Uuid, Path, description = "Experiment id"), PictureParams),
    responses(
        (status = 200, description = "The curves drawn from the stored epochs", content_type = "image/png", body = Vec<u8>),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn curve_png(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    p: RawQuery,
) -> Result<Response, ApiError> {
    curve(state, caller, id, p, Format::Png).await
}

/// Several experiments' curves in one picture, one colour each, as SVG.
#[utoipa::path(get, path = "/compare.svg", tag = "pictures", params(ComparePictureParams),
    responses(
        (status = 200, description = "The curves, one colour per experiment", content_type = "image/svg+xml", body = String),
        (status = 404, description = "Unknown experiments, each named", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn compare_svg(
    State(state): State<AppState>,
    caller: Caller,
    p: RawQuery,
) -> Result<Response, ApiError> {
    compare(state, caller, p, Format::Svg).await
}

/// The same comparison as PNG.
#[utoipa::path(get, path = "/compare.png", tag = "pictures", params(ComparePictureParams),
    responses(
        (status = 200, description = "The curves, one colour per experiment", content_type = "image/png", body = Vec<u8>),
        (status = 404, description = "Unknown experiments, each named", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn compare_png(
    State(state): State<AppState>,
    caller: Caller,
    p: RawQuery,
) -> Result<Response, ApiError> {
    compare(state, caller, p, Format::Png).await
}

/// Points drawn in one sweep picture, at most (the palette's colours).
const MAX_POINTS: usize = 8;

async fn sweep(
    state: AppState,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    p: RawQuery,
    format: Format,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let p: PictureParams = query(p)?;
    let asked = p.check()?;
    let (sweep, groups) = super::sweeps::point_groups(&state, caller.scope(), id).await?;
    let mut epochs: Vec<(String, Vec<Vec<EpochMetrics>>)> = Vec::new();
    for (label, ids) in groups.into_iter().take(MAX_POINTS) {
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            let rows = state.store.stored_epochs(id).await?;
            runs.push(rows.into_iter().map(|r| plotted(r.metrics)).collect());
        }
        epochs.push((label, runs));
    }
    let repeats: Vec<plot::Repeats> = epochs
        .iter()
        .map(|(name, runs)| plot::Repeats {
            name,
            runs: runs.iter().map(Vec::as_slice).collect(),
        })
        .collect();
    let split = sweep.metric.split('_').next().unwrap_or("test");
    let title = sweep
        .name
        .clone()
        .unwrap_or_else(|| format!("{} sweep", sweep.kind));
    let chart = plot::mean_chart(&title, &repeats, asked.metric, split);
    render(chart, &asked, format).await
}

/// A sweep's points as SVG: per point (the best 8), the mean curve of its repeats on the
/// ranking's split, with a band of one standard deviation.
#[utoipa::path(get, path = "/sweeps/{id}/curve.svg", tag = "pictures",
    params(("id" = uuid::Uuid, Path, description = "Sweep id"), PictureParams),
    responses(
        (status = 200, description = "Each point's mean curve and its band", content_type = "image/svg+xml", body = String),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn sweep_svg(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    p: RawQuery,
) -> Result<Response, ApiError> {
    sweep(state, caller, id, p, Format::Svg).await
}

/// The same picture as PNG.
#[utoipa::path(get, path = "/sweeps/{id}/curve.png", tag = "pictures",
    params(("id" = uuid::Uuid, Path, description = "Sweep id"), PictureParams),
    responses(
        (status = 200, description = "Each point's mean curve and its band", content_type = "image/png", body = Vec<u8>),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn sweep_png(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    p: RawQuery,
) -> Result<Response, ApiError> {
    sweep(state, caller, id, p, Format::Png).await
}
