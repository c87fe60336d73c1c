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
        super::experiments::update, super::experiments::delete,
        super::experiments::cancel, super::compare::compare,
        super::specs::validate, super::specs::schema, super::specs::presets,
        super::pictures::curve_svg, super::pictures::curve_png,
        super::pictures::compare_svg, super::pictures::compare_png, super::experiments::metrics, super::curve::curve,
        super::checkpoints::list, super::checkpoints::download, super::predict::predict,
        super::health::healthz, super::health::readyz, super::metrics::metrics, super::stats::stats,
        super::keys::create, super::keys::list, super::keys::revoke, super::keys::accounts,
        super::keys::account, super::keys::set_quotas, super::keys::own,
        super::session::sign_in, super::session::sign_out, super::session::whoami,
        super::datasets::create, super::datasets::list, super::datasets::show,
        super::datasets::delete, super::datasets::samples,
        super::sweeps::create, super::sweeps::list, super::sweeps::show,
        super::sweeps::cancel, super::sweeps::delete,
        super::pictures::sweep_svg, super::pictures::sweep_png,
        super::v2::server_metadata, super::v2::live, super::v2::ready,
        super::v2::model_metadata, super::v2::version_metadata,
        super::v2::model_ready, super::v2::version_ready,
        super::v2::infer_served, super::v2::infer_version,
    ),
    components(schemas(super::error::Problem, crate::spec::FieldError, crate::spec::diff::Difference)),
    tags(
        (name = "experiments", description = "Submit, follow and manage experiments"),
        (name = "specs", description = "Check specs before submitting them"),
        (name = "checkpoints", description = "Trained weights"),
        (name = "pictures", description = "Curves as SVG or PNG, drawn by the server"),
        (name = "predict", description = "Classify images"),
        (name = "datasets", description = "Upload your own data and train on it"),
        (name = "sweeps", description = "Grids, random searches and ablations: many experiments from one request"),
        (name = "health", description = "Probes"),
        (name = "keys", description = "API keys, accounts and their quotas"),
        (name = "session", description = "The web app's sign-in"),
        (name = "v2", description = "The Open Inference Protocol (KServe v2, Triton's HTTP API): the same models as /predict, by experiment id and epoch"),
    )
)]
struct ApiDoc;

/// The operations whose request body is a submission (a spec with its labels).
const SUBMISSION_BODIES: [&str; 2] = ["/experiments", "/specs/validate"];

/// The whole document: utoipa's, with the spec's schemas (derived by schemars from the
/// types serde reads, [`crate::spec::schema`]) as the submissions' request bodies.
pub fn openapi() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has schemas");
    let labels = super::labels::json_schema();
    let mut added = crate::spec::schema::submission(&labels);
    added.insert(
        "Labels".into(),
        serde_json::json!({"type": "object", "properties": labels, "additionalProperties": false}),
    );
    for (name, schema) in added {
        let clash = schemas.insert(name.clone(), schema);
        assert!(clash.is_none(), "two schemas named {name}");
    }
    for path in SUBMISSION_BODIES {
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"] =
            serde_json::json!({"$ref": "#/components/schemas/Submission"});
    }
    doc["paths"]["/sweeps"]["post"]["requestBody"]["content"]["application/json"]["schema"] =
        serde_json::json!({"$ref": "#/components/schemas/SweepRequest"});
    doc["paths"]["/experiments/{id}"]["patch"]["requestBody"]["content"]["application/merge-patch+json"]
        ["schema"] = serde_json::json!({"$ref": "#/components/schemas/Labels"});
    require_keys(&mut doc);
    headers_not_null(&mut doc);
    doc
}

/// Operations anyone may call: `(path, method)`.
const PUBLIC: [(&str, &str); 8] = [
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/v2", "get"),
    ("/v2/health/live", "get"),
    ("/v2/health/ready", "get"),
    ("/metrics", "get"),
    ("/session", "post"),
    ("/session", "delete"),
];

/// Every operation but the public ones needs a bearer key (or the web app's session
/// cookie) and says so, with its 401.
fn require_keys(doc: &mut serde_json::Value) {
    doc["components"]["securitySchemes"] = serde_json::json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`ty_` and 64 hex digits), made with `trainyard keys create` or `POST /keys`"
        }
    });
    doc["security"] = serde_json::json!([{"bearer": []}]);
    let unauthorized = serde_json::json!({
        "description": "No key, or a key that is unknown or revoked (with `WWW-Authenticate`)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    });
    let paths = doc["paths"]
        .as_object_mut()
        .expect("the document has paths");
    for (path, item) in paths.iter_mut() {
        for (method, op) in item.as_object_mut().expect("a path item").iter_mut() {
            if PUBLIC.contains(&(path.as_str(), method.as_str())) {
                op["security"] = serde_json::json!([]);
            } else if let Some(responses) = op["responses"].as_object_mut() {
                responses
                    .entry("401")
                    .or_insert_with(|| unauthorized.clone());
            }
        }
    }
}

/// A header is absent or a string: utoipa writes an optional header's schema as
/// `["string", "null"]`, and generated clients then send the text `null`.
fn headers_not_null(doc: &mut serde_json::Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for op in paths.values_mut().filter_map(|item| item.as_object_mut()) {
        for op in op.values_mut() {
            // `get_mut`, not indexing: indexing would add the keys it does not find.
            let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) else {
                continue;
            };
            for p in params
                .iter_mut()
                .filter(|p| p.get("in").is_some_and(|i| i == "header"))
            {
                let Some(ty) = p.get_mut("schema").and_then(|s| s.get_mut("type")) else {
                    continue;
                };
                if let Some(types) = ty.as_array_mut() {
                    types.retain(|t| t != "null");
                    if types.len() == 1 {
                        *ty = types[0].clone();
                    }
                }
            }
        }
    }
}

/// The document as pretty JSON (what `openapi/openapi.json` holds).
pub fn document() -> String {
    serde_json::to_string_pretty(&openapi()).expect("the OpenAPI document serializes") + "\n"
}

pub fn router() -> Router<AppState> {
    let doc = std::sync::Arc::new(openapi());
    Router::new().route(
        "/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { Json((*doc).clone()) }
        }),
    )
}
