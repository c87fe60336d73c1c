//! trainyard: training-as-a-service for small CNNs.
//!
//! The crate is layered so that each layer can be used and tested without the ones above
//! it: [`spec`] (what to train), [`data`] (datasets and preprocessing), [`engine`] (the
//! Candle training engine: models, optimizers, the training loop, checkpoints, inference)
//! and [`cli`] (the `trainyard` command). [`plot`] draws curves of runs as SVG or PNG.
//! [`telemetry`] is the metrics registry that the API and the workers both record into.

pub mod api;
pub mod cli;
pub mod data;
pub mod engine;
pub mod plot;
pub mod server;
pub mod shutdown;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod worker;
