//! The HTTP API: one module per resource, each with its own `router()`, merged here.
//!
//! `app(state)` builds the whole service, so tests drive it with `oneshot` or on a real
//! socket exactly as `trainyard serve` does. Around every route, from the outside in:
//! request ids, the request's span ([`request_id`]) and its log line ([`access_log`]),
//! CORS when configured, the security header, compression, and the time limits ([`net`]).

pub mod access_log;
pub mod auth;
pub mod checkpoints;
pub mod compare;
pub mod curve;
pub mod datasets;
pub mod error;
pub mod experiments;
pub mod health;
pub mod input;
pub mod keys;
pub mod labels;
pub mod metrics;
pub mod net;
pub mod openapi;
pub mod pictures;
pub mod predict;
pub mod request_id;
pub mod session;
pub mod specs;
pub mod stats;
pub mod sweeps;
pub mod v2;
pub mod view;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use tokio::sync::{Semaphore, watch};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::store::Store;
use crate::store::listen::Hub;

/// Largest JSON body (a spec).
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// Curve (SSE) streams a server keeps open at once, unless configured otherwise.
pub const DEFAULT_MAX_SSE_STREAMS: usize = 1000;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub hub: Hub,
    pub models: Arc<predict::ModelCache>,
    /// Turns true on shutdown: long-lived streams end so the server can stop.
    pub shutdown: watch::Receiver<bool>,
    /// One permit per open curve stream; a stream past the limit gets a 503.
    pub sse_streams: Arc<Semaphore>,
    pub max_sse_streams: usize,
    /// Keys, sessions and rate limits.
    pub auth: Arc<auth::Auth>,
    /// Time limits and CORS origins.
    pub net: Arc<net::NetConfig>,
    /// Where the workers find the built-in datasets, when submissions should be checked
    /// against it (None: every built-in dataset is taken as present).
    pub builtin_data: Option<Arc<crate::data::mnist::Source>>,
    /// The bounds job processes run within, checked at submission.
    pub job_limits: crate::spec::footprint::JobLimits,
}

impl AppState {
    pub fn new(store: Store, hub: Hub, shutdown: watch::Receiver<bool>) -> Self {
        AppState {
            store,
            hub,
            models: Arc::default(),
            shutdown,
            sse_streams: Arc::new(Semaphore::new(DEFAULT_MAX_SSE_STREAMS)),
            max_sse_streams: DEFAULT_MAX_SSE_STREAMS,
            auth: Arc::new(auth::Auth::new(
                auth::AuthMode::Off,
                auth::RateLimits::default(),
            )),
            net: Arc::default(),
            builtin_data: None,
            job_limits: Default::default(),
        }
    }

    /// The same state admitting only what fits `limits`.
    pub fn with_job_limits(mut self, limits: crate::spec::footprint::JobLimits) -> Self {
        self.job_limits = limits;
        self
    }

    /// The same state refusing specs that name a built-in dataset whose files are not
    /// under `source`'s data folder (unless it may download them).
    pub fn with_builtin_data(mut self, source: crate::data::mnist::Source) -> Self {
        self.builtin_data = Some(Arc::new(source));
        self
    }

    /// The same state with these time limits and CORS origins (the defaults, and no
    /// CORS, otherwise).
    pub fn with_net(mut self, cfg: net::NetConfig) -> Self {
        self.net = Arc::new(cfg);
        self
    }

    /// The same state with keys required (`On`) or not, and these rate limits. (A bare
    /// [`AppState::new`] requires none, for tests of everything else; `trainyard serve`
    /// requires keys unless told otherwise.)
    pub fn with_auth(mut self, mode: auth::AuthMode, limits: auth::RateLimits) -> Self {
        self.auth = Arc::new(auth::Auth::new(mode, limits));
        auth::Auth::follow_revocations(&self.auth, &self.hub);
        self
    }

    /// The same state with at most `n` curve streams open at once.
    pub fn with_max_sse_streams(mut self, n: usize) -> Self {
        self.sse_streams = Arc::new(Semaphore::new(n));
        self.max_sse_streams = n;
        self
    }

    /// The same state with `/predict` batching as configured (the default otherwise).
    pub fn with_predict_batching(mut self, cfg: predict::BatchConfig) -> Self {
        self.models = Arc::new(predict::ModelCache::new(cfg));
        self
    }
}

/// The service's router.
pub fn app(state: AppState) -> Router {
    let json = Router::new()
        .merge(experiments::router())
        .merge(curve::router())
        .merge(checkpoints::router())
        .merge(specs::router())
        .merge(compare::router())
        .merge(pictures::router())
        .merge(keys::router())
        .merge(session::router())
        .merge(stats::router())
        .merge(sweeps::router())
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES));
    let images = predict::router().layer(DefaultBodyLimit::max(predict::MAX_BODY_BYTES));
    let uploads = datasets::router().layer(DefaultBodyLimit::max(
        datasets::MAX_UPLOAD_BYTES as usize + 64 * 1024,
    ));
    // Everything here needs a key or a session; a route that matches none of these is a
    // 404 for anyone.
    let private = Router::new()
        .merge(json)
        .merge(images)
        .merge(uploads)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    // The Open Inference Protocol: /predict's keys, limits and models, the protocol's
    // errors (`{"error": ...}`) whichever layer refuses.
    let inference = v2::router()
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .merge(v2::public_router())
        .route_layer(axum::middleware::from_fn(v2::protocol_errors));
    let probes = Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .layer(axum::middleware::map_response(access_log::mark_probe));
    let public = Router::new()
        .merge(probes)
        .merge(openapi::router())
        .merge(web::router())
        .merge(session::public_router().layer(DefaultBodyLimit::max(MAX_JSON_BYTES)));
    let net = state.net.clone();
    let router = Router::new()
        .merge(private)
        .merge(public)
        .merge(inference)
        .fallback(|| async { error::ApiError::NotFound("route") })
        // After every route: a known path with another method is a 405 problem (axum
        // still adds the Allow header).
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            net.clone(),
            net::time_limits,
        ))
        // gzip or brotli as the client accepts; never the event streams.
        .layer(tower_http::compression::CompressionLayer::new())
        // Every response is what its Content-Type says: a browser never sniffs a JSON
        // body or a picture into HTML.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    let router = match net::cors(&net.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(axum::middleware::from_fn(request_id::scope))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_id::span)
                // One line per request: its status and latency, under its id (a probe's
                // at DEBUG).
                .on_response(access_log::AccessLog),
        )
        .layer(PropagateRequestIdLayer::new(request_id::HEADER))
        .layer(SetRequestIdLayer::new(request_id::HEADER, MakeRequestUuid))
        .layer(axum::middleware::map_request(request_id::drop_unsafe))
}
