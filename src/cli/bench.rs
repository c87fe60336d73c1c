//! `trainyard bench`: training throughput of the presets on this machine.
//!
//! Runs real training steps (forward, backward, optimizer) of each preset on MNIST
//! batches, discards the first warm-up batches, and reports images per second of the
//! rest. Side-by-side comparisons with PyTorch and Keras live in `bench/`.

use std::time::Instant;

use clap::Args;

use super::DataArgs;
use crate::data::{mnist, prepare};
use crate::engine::{BatchProgress, Observer, Trainer, device};
use crate::spec::{DeviceSpec, Validation, ValidationName};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Presets to measure.
    #[arg(long, value_delimiter = ',', default_value = "torch-cnn,keras-cnn")]
    pub presets: Vec<String>,
    /// Batches measured per preset (at least 1).
    #[arg(long, default_value_t = 50,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batches: usize,
    /// Batches run first and not measured (at least 1: the clock starts when the last of
    /// them ends).
    #[arg(long, default_value_t = 5,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub warmup: usize,
    /// The device to measure (auto, cpu, cuda, cuda:N).
    #[arg(long, env = "TRAINYARD_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Train with Candle's graph instead of the fused CPU path (to measure what it gains).
    #[arg(long)]
    pub candle_graph: bool,
    /// Print where the CPU path's step time goes, per layer.
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object per preset instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

struct Timer {
    warmup: usize,
    start: Option<Instant>,
    end: Option<Instant>,
}

impl Observer for Timer {
    fn on_batch(&mut self, p: &BatchProgress) {
        if p.batch == self.warmup {
            self.start = Some(Instant::now());
        }
        if p.batch == p.batches {
            self.end = Some(Instant::now());
        }
    }
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let device = device::select(a.device)?;
    let data = mnist::load(crate::spec::DatasetName::Mnist, &a.data.source())?;
    println!(
        "device {}, threads {}",
        crate::engine::device::name(&device),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default()
    );
    println!(
        "{:<10} {:>6} {:>8} {:>10} {:>12}",
        "preset", "batch", "batches", "seconds", "images/s"
    );
    for name in &a.presets {
        let mut spec = crate::spec::from_value(serde_json::json!({ "preset": name }))?;
        let bs = spec.batch_size as usize;
        spec.epochs = 1;
        spec.dataset.validation = Validation::Named(ValidationName::None);
        spec.dataset.train_limit = Some((a.warmup + a.batches) * bs);
        spec.dataset.test_limit = Some(1);
        let summary = crate::spec::validate(&spec)?;
        let prepared = prepare::prepare(&data, &spec.dataset);
        let mut trainer = Trainer::new(&spec, &summary, &prepared, &device)?;
        if a.candle_graph {
            trainer.use_candle_graph();
        }
        if a.profile {
            trainer.enable_cpu_profile();
        }
        let path = if trainer.uses_cpu_path() {
            "cpu-path"
        } else {
            "candle-graph"
        };
        let mut t = Timer {
            warmup: a.warmup,
            start: None,
            end: None,
        };
        trainer.run(&mut t)?;
        let (Some(start), Some(end)) = (t.start, t.end) else {
            anyhow::bail!(
                "{name}: the training set is too small for {} batches",
                a.batches
            );
        };
        let secs = (end - start).as_secs_f64();
        if let Some((names, p)) = trainer.cpu_profile() {
            let ms = |s: f64| 1000.0 * s / p.steps.max(1) as f64;
            eprintln!(
                "{name}: ms per step over {} steps (warm-up included)",
                p.steps
            );
            for (i, n) in names.iter().enumerate() {
                eprintln!(
                    "  {n:<28} forward {:>8.3}  backward {:>8.3}",
                    ms(p.forward[i]),
                    ms(p.backward[i])
                );
            }
            eprintln!("  loss {:.3}  optimizer {:.3}", ms(p.loss), ms(p.optimizer));
        }
        let ips = (a.batches * bs) as f64 / secs;
        if a.json {
            let line = serde_json::json!({
                "framework": "trainyard", "engine": path, "preset": name, "batch": bs, "batches": a.batches,
                "seconds": secs, "images_per_second": ips,
                "ms_per_batch": 1000.0 * secs / a.batches as f64,
            });
            println!("{line}");
        } else {
            println!(
                "{:<10} {:>6} {:>8} {:>10.3} {:>12.0}",
                name, bs, a.batches, secs, ips
            );
        }
    }
    Ok(())
}
