//! The `trainyard` command.
//!
//! Every setting of the service and of where data comes from has an environment fallback
//! (shown in `--help`), so the same binary is configured by flags on a laptop and by
//! environment in a container; a command's own options (`train --out`, `bench
//! --batches`, ...) are given on the command line only.

mod bench;
mod client;
mod datasets;
mod health;
mod housekeep;
mod keys;
mod plot;
mod predict;
pub mod reference;
mod remote;
mod service;
mod sweep;
mod train;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::data::mnist::{Dataset, Source};

#[derive(Debug, Parser)]
#[command(
    name = "trainyard",
    version,
    about = "Train small CNNs, follow their curves, use the result."
)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, env = "TRAINYARD_LOG_JSON", global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a spec locally, without a database: metrics.jsonl and checkpoints in --out.
    Train(train::TrainArgs),
    /// Print the presets as complete JSON specs (or the one named).
    Presets {
        /// One preset (keras-cnn, torch-cnn); all when absent.
        name: Option<String>,
    },
    /// Validate a spec and print its layer shapes, parameters and FLOPs.
    Validate {
        /// The spec (JSON file).
        spec: PathBuf,
    },
    /// Classify PNG, JPEG or PGM images with a checkpoint.
    Predict(predict::PredictArgs),
    /// Draw loss or accuracy curves of local `train` output folders as SVG or PNG.
    Plot(plot::PlotArgs),
    /// Measure training throughput (images per second) of the presets on this machine.
    Bench(bench::BenchArgs),
    /// Run the HTTP API and worker tasks in one process.
    Serve(service::ServeArgs),
    /// Run one job for a supervisor (a worker slot), which starts it with the job on
    /// stdin; never by hand.
    #[command(hide = true)]
    Job,
    /// Run worker tasks only (more training capacity against the same database).
    Worker {
        #[command(flatten)]
        db: service::DbArgs,
        #[command(flatten)]
        worker: service::WorkerArgs,
    },
    /// Sweep ended experiments (optimizer state; with --retention-days, old experiments).
    Housekeep(housekeep::HousekeepArgs),
    /// Make, list and revoke API keys; set accounts' quotas.
    Keys(keys::KeysArgs),
    /// Apply the database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: service::DbArgs,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Exit 0 when the local server answers `GET /readyz` with 200 (a container healthcheck).
    Healthcheck(health::HealthcheckArgs),
    /// Upload your own dataset to a service (`POST /datasets`).
    Datasets(datasets::DatasetsArgs),
    /// Submit a spec to a service (`POST /experiments`); --follow to watch it train.
    Submit(client::SubmitArgs),
    /// List a service's experiments, newest first.
    Ls(client::ListArgs),
    /// One experiment of a service: its state and a row per stored epoch.
    Show(client::IdArgs),
    /// Follow an experiment's training: a bar for the running epoch, a row per epoch.
    Follow(client::IdArgs),
    /// Cancel an experiment (a running one stops at its next batch).
    Cancel(client::IdArgs),
    /// Download an experiment's checkpoint (safetensors).
    Download(client::DownloadArgs),
    /// Compare experiments: final figures and the spec difference; --out draws the curves.
    Compare(client::CompareArgs),
    /// Queue a sweep (grid, random search or ablation) or show one; --follow waits for
    /// its children and prints the ranking.
    Sweep(sweep::SweepArgs),
    /// Write the book's generated reference pages (spec, CLI, configuration) into
    /// --out; with --check, fail when they differ instead.
    #[command(hide = true)]
    Reference {
        /// The folder of the pages.
        #[arg(long, default_value = "docs/reference")]
        out: PathBuf,
        /// Write nothing; fail naming each stale page.
        #[arg(long)]
        check: bool,
    },
    /// Download (when missing) and verify datasets into the data folder.
    FetchData {
        /// Datasets to fetch.
        #[arg(value_delimiter = ',', default_value = "mnist")]
        datasets: Vec<String>,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// Where datasets come from.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Folder holding `<dataset>/<idx files>` (raw or .gz).
    #[arg(long, env = "TRAINYARD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Never download missing dataset files; fail with where to put them instead.
    #[arg(long, env = "TRAINYARD_NO_DOWNLOAD")]
    pub no_download: bool,
    /// Base URLs to download missing files from, tried in order (comma-separated);
    /// defaults to the usual mirrors of the dataset.
    #[arg(long, env = "TRAINYARD_MIRRORS", value_delimiter = ',')]
    pub mirrors: Vec<String>,
}

impl DataArgs {
    pub fn source(&self) -> Source {
        let mut s = Source::new(self.data_dir.clone());
        s.download = !self.no_download;
        if !self.mirrors.is_empty() {
            s.mirrors = self.mirrors.clone();
        }
        s
    }
}

/// The spec's data, read on this machine: a built-in dataset from the data folder, or
/// the files at `dataset.path`.
fn load_data(spec: &crate::spec::ExperimentSpec, data: &DataArgs) -> anyhow::Result<Dataset> {
    use crate::spec::DataSource;
    match &spec.dataset.source {
        DataSource::BuiltIn(n) => Ok(crate::data::mnist::load(*n, &data.source())?),
        DataSource::Path(p) => load_local(p),
        DataSource::Uploaded(id) => anyhow::bail!(
            "dataset.id {id} names a dataset uploaded to a service: train it there \
             (POST /experiments), or name its files here with dataset.path"
        ),
    }
}

/// A local dataset (relative paths from the working directory), read as an upload with
/// the default options would be.
fn load_local(path: &str) -> anyhow::Result<Dataset> {
    let opts = crate::data::upload::Options {
        size: None,
        channels: None,
        test_fraction: 0.2,
        seed: 0,
        class_names: None,
        limits: crate::data::upload::Limits::default(),
    };
    let d = crate::data::local::load(std::path::Path::new(path), &opts)?;
    println!(
        "data: {path}: {} classes, {} training and {} test images of {}x{}x{}",
        d.class_names.len(),
        d.train.len,
        d.test.len,
        d.train.channels,
        d.train.rows,
        d.train.cols
    );
    Ok(d)
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Train(a) => train::run(a),
            Command::Presets { name } => {
                let mut all = crate::spec::presets::resolved_all()?;
                let shown = match name {
                    None => serde_json::Value::Object(all),
                    Some(n) => all.remove(&n).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown preset {n:?}: the presets are {}",
                            crate::spec::presets::PRESET_NAMES.join(", ")
                        )
                    })?,
                };
                println!("{}", serde_json::to_string_pretty(&shown)?);
                Ok(())
            }
            Command::Validate { spec } => {
                let text = std::fs::read_to_string(&spec)
                    .with_context(|| format!("cannot read the spec {}", spec.display()))?;
                let spec = crate::spec::parse(&text)?;
                let summary = match &spec.dataset.source {
                    // A local dataset is read to learn its shape and classes.
                    crate::spec::DataSource::Path(p) => {
                        let data = load_local(p)?;
                        crate::spec::validate_for(&spec, data.info().shape())?
                    }
                    _ => crate::spec::validate(&spec)?,
                };
                print_summary(&summary);
                Ok(())
            }
            Command::Predict(a) => predict::run(a),
            Command::Plot(a) => plot::run(a),
            Command::Bench(a) => bench::run(a),
            Command::Serve(a) => service::serve(a, self.log_json),
            Command::Worker { db, worker } => service::worker(db, worker, self.log_json),
            Command::Job => std::process::exit(crate::worker::child::main()),
            Command::Migrate { db } => service::migrate(db),
            Command::Housekeep(a) => housekeep::run(a),
            Command::Keys(a) => keys::run(a),
            Command::Datasets(a) => datasets::run(a),
            Command::Submit(a) => client::submit(a),
            Command::Ls(a) => client::list(a),
            Command::Show(a) => client::show(a),
            Command::Follow(a) => client::follow(a),
            Command::Cancel(a) => client::cancel(a),
            Command::Download(a) => client::download(a),
            Command::Compare(a) => client::compare(a),
            Command::Sweep(a) => sweep::run(a),
            Command::FetchData { datasets, data } => {
                for name in datasets {
                    let name: crate::spec::DatasetName =
                        serde_json::from_value(serde_json::Value::String(name.clone())).map_err(
                            |_| anyhow::anyhow!("unknown dataset {name:?}: mnist or fashion-mnist"),
                        )?;
                    let d = crate::data::mnist::load(name, &data.source())?;
                    println!(
                        "{}: {} training and {} test images, checksums verified, in {}",
                        name.as_str(),
                        d.train.len,
                        d.test.len,
                        crate::data::mnist::dataset_dir(&data.data_dir, name).display()
                    );
                }
                Ok(())
            }
            Command::Healthcheck(a) => health::run(a),
            Command::Reference { out, check } => reference::run(&out, check),
            Command::Openapi => {
                print!("{}", crate::api::openapi::document());
                Ok(())
            }
        }
    }
}

/// The layer table printed before training.
pub fn print_summary(s: &crate::spec::Summary) {
    println!("input {}", s.input.map(|d| d.to_string()).join("x"));
    for (i, l) in s.layers.iter().enumerate() {
        let out: Vec<String> = l.output.iter().map(|d| d.to_string()).collect();
        println!(
            "  [{i}] {:<10} {:<6} -> {:<12} {:>10} params",
            l.kind,
            l.name.as_deref().unwrap_or(""),
            out.join("x"),
            l.parameters
        );
    }
    println!(
        "{} parameters, {:.1} MFLOP per sample (forward)",
        s.parameters,
        s.flops_per_sample as f64 / 1e6
    );
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Colours only on a terminal:
/// piped into `docker logs`, a file or a collector, escape codes are noise.
pub fn init_tracing(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// clap value parsers of the flags that are a number of seconds or days. The range is
/// part of the flag: a value outside it (or `inf`, `NaN`) is refused by clap, naming the
/// flag, before anything runs; `--help` and the error message come from one place.
fn number_in(s: &str, min: f64, min_allowed: bool, max: f64, what: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number: {what}"))?;
    let above_min = if min_allowed { x >= min } else { x > min };
    if x.is_finite() && above_min && x <= max {
        Ok(x)
    } else {
        Err(format!("out of range: {what}"))
    }
}

/// A positive number of seconds, at most a day: leases, intervals, timeouts.
pub(crate) fn seconds(s: &str) -> Result<f64, String> {
    number_in(
        s,
        0.0,
        false,
        86_400.0,
        "a positive number of seconds, at most 86400",
    )
}

/// A number of seconds between rounds, 0 (never) to a year.
pub(crate) fn seconds_or_never(s: &str) -> Result<f64, String> {
    number_in(
        s,
        0.0,
        true,
        31_536_000.0,
        "a number of seconds from 0 (never) to 31536000",
    )
}

/// A number of days, 0 to 36500.
pub(crate) fn days(s: &str) -> Result<f64, String> {
    number_in(s, 0.0, true, 36_500.0, "a number of days from 0 to 36500")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_positive_finite_and_at_most_a_day() {
        assert_eq!(seconds("1.5"), Ok(1.5));
        assert_eq!(seconds("86400"), Ok(86_400.0));
        for bad in ["0", "-1", "NaN", "inf", "86401", "x", ""] {
            assert!(seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_interval_may_be_zero_for_never_and_days_stop_at_a_hundred_years() {
        assert_eq!(seconds_or_never("0"), Ok(0.0));
        assert!(seconds_or_never("-0.5").is_err());
        assert!(seconds_or_never("inf").is_err());
        assert_eq!(days("0"), Ok(0.0));
        assert_eq!(days("36500"), Ok(36_500.0));
        assert!(days("36501").is_err());
        assert!(days("NaN").is_err());
    }
}
