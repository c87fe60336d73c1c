//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! `openapi/openapi.json` is a checked-in copy for clients and reviewers; a test fails
//! when it differs from what the code generates (`trainyard openapi > openapi/openapi.json`
//! refreshes it).

use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "trainyard", description = "Training as a service for small CNNs: queue experiments, follow their curves, use the result."),
    paths(
        super::experiments::create, super::experiments::list, super::experiments::show,
        super::experiments::cancel, super::experiments::metrics, super::curve::curve,
        super::checkpoints::list, super::checkpoints::download, super::predict::predict,
        super::health::healthz, super::health::readyz, super::stats::stats,
    ),
    components(schemas(super::error::Problem, crate::spec::FieldError)),
    tags(
        (name = "experiments", description = "Submit, follow and manage experiments"),
        (name = "checkpoints", description = "Trained weights"),
        (name = "predict", description = "Classify images"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `openapi/openapi.json` holds).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n"
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
