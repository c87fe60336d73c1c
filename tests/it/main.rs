//! Every integration test, compiled into one binary.
//!
//! One test crate per file linked Candle, sqlx, axum and the whole library into each of
//! some thirty binaries. This file makes them modules of one crate instead, so the
//! library is linked once. Run one file's tests with a filter: `cargo test --test it
//! cpu_path::`.

mod common;

mod api_contract;
mod browser;
mod browser_auth;
mod builtin_data;
mod cli;
mod client;
mod colour;
mod colour_torch;
mod cpu_path;
mod dataset_files;
mod datasets;
mod datasets_hostile;
mod devices;
mod digits;
mod docs;
mod engine;
mod fashion_upload;
mod faults;
mod hostile_images;
mod housekeeping;
mod inits;
mod job_bounds;
mod keys_cli;
mod limits;
mod metrics;
mod optim_matches_pytorch;
mod organize;
mod pg_restart;
mod pictures;
mod predict_batching;
mod pytorch_parity;
mod resize_matches_pil;
mod schedules;
mod service;
mod spec_props;
mod spec_validation;
mod sse_limit;
mod sweeps;
mod tenancy_matrix;
mod tenants;
mod v2;
mod warm_start;
