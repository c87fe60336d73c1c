//! `trainyard train SPEC.json --out DIR`: the engine on this machine, no database.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::DataArgs;
use crate::data::prepare;
use crate::engine::{
    BatchProgress, Checkpoint, EngineError, Observer, Outcome, Trainer, TrainingPath, device,
};
use crate::spec::DeviceSpec;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment spec (JSON file).
    pub spec: PathBuf,
    /// Output folder: spec.json, metrics.jsonl, checkpoints/epoch-N.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Start from these weights (a safetensors state dict, e.g. saved from PyTorch).
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// With --resume: continue from this epoch's checkpoint instead of the last.
    #[arg(long, requires = "resume")]
    pub resume_epoch: Option<u32>,
    /// Override the spec's device (auto, cpu, cuda, cuda:N).
    #[arg(long, env = "TRAINYARD_DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Write into --out even when it already holds a run (its files are replaced).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

struct Cli {
    bar: ProgressBar,
    out: PathBuf,
    metrics: std::fs::File,
    /// Set by Ctrl-C: stop at the next batch, keeping the epochs stored so far.
    interrupted: Arc<AtomicBool>,
}

impl Observer for Cli {
    fn on_batch(&mut self, p: &BatchProgress) {
        if p.batch == 1 {
            self.bar.reset();
            self.bar.set_length(p.batches as u64);
            self.bar
                .set_prefix(format!("epoch {}/{}", p.epoch, p.epochs));
        }
        self.bar.set_position(p.batch as u64);
        if p.batch.is_multiple_of(10) || p.batch == p.batches {
            self.bar.set_message(format!("loss {:.4}", p.loss));
        }
    }

    fn should_stop(&mut self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    fn on_epoch(&mut self, ckpt: &Checkpoint) -> Result<(), EngineError> {
        ckpt.save(&self.out.join("checkpoints"))?;
        let m = ckpt
            .history
            .last()
            .expect("an epoch's checkpoint has its metrics");
        let line = serde_json::to_string(m).map_err(|e| EngineError::Observer(e.into()))?;
        writeln!(self.metrics, "{line}")?;
        self.bar.suspend(|| print_row(m));
        Ok(())
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

pub(super) fn print_header() {
    println!(
        "{:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "test_loss",
        "test_acc",
        "seconds",
        "images/s",
        "lr"
    );
}

pub(super) fn print_row(m: &crate::engine::EpochMetrics) {
    println!(
        "{:>5} {:>10.4} {:>9.4} {:>9} {:>9} {:>9} {:>9} {:>8.2} {:>9.0} {:>9}",
        m.epoch,
        m.train_loss,
        m.train_accuracy,
        opt(m.val_loss),
        opt(m.val_accuracy),
        opt(m.test_loss),
        opt(m.test_accuracy),
        m.train_seconds,
        m.images_per_second,
        m.learning_rate
            .map_or_else(|| "-".into(), |v| format!("{v:.3e}"))
    );
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.spec)
        .with_context(|| format!("reading {}", a.spec.display()))?;
    let mut spec = crate::spec::parse(&text)?;
    // A warm start names an experiment of a service, which a local run cannot read: the
    // weights come from a file here (the spec's `freeze` still applies to them).
    anyhow::ensure!(
        spec.warm_start.is_none() || a.init.is_some() || a.resume.is_some(),
        "the spec's warm_start names an experiment of a service; to start from other weights \
         here, pass them with --init FILE (the spec's freeze applies to them)"
    );
    // The data first: its shape and classes are what the model is planned against.
    let data = super::load_data(&spec, &a.data)?;
    let summary = crate::spec::validate_for(&spec, data.info().shape())?;
    if let Some(d) = a.device {
        spec.device = d;
    }
    let continuing = a.resume.as_deref() == Some(a.out.as_path());
    if !a.force && !continuing {
        refuse_a_used_folder(&a.out, &a.spec)?;
    }
    super::print_summary(&summary);
    let device = device::select(spec.device)?;
    println!("device: {}", device::name(&device));

    let resume = match &a.resume {
        Some(dir) => {
            let ck = dir.join("checkpoints");
            let path = match a.resume_epoch {
                Some(e) => Checkpoint::weights_path(&ck, e),
                None => Checkpoint::latest_in(&ck)?
                    .with_context(|| format!("no checkpoint in {}", ck.display()))?,
            };
            Some(Checkpoint::load(&path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };

    let prepared = prepare::prepare(&data, &spec.dataset);
    drop(data);
    let mut trainer = Trainer::new(&spec, &summary, &prepared, &device)?;
    drop(prepared);
    // Which code trains it and, when it is Candle's graph, why: a spec that trains ten
    // times slower than expected says so here.
    match trainer.path() {
        TrainingPath::CpuKernels => println!("engine: {}", TrainingPath::CpuKernels.name()),
        p @ TrainingPath::CandleGraph(_) => {
            println!("engine: {} ({})", p.name(), p.reason().unwrap_or_default())
        }
    }
    if let Some(path) = &a.init {
        let w = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
        trainer
            .load_weights(&w)
            .with_context(|| format!("loading {}", path.display()))?;
    }
    if let Some(ck) = &resume {
        trainer.resume(ck)?;
        println!("resumed after epoch {}", ck.epoch);
    }

    std::fs::create_dir_all(&a.out)?;
    std::fs::write(
        a.out.join("spec.json"),
        serde_json::to_string_pretty(&spec)?,
    )?;
    // metrics.jsonl holds the history so far, then one line per new epoch.
    let mut metrics = std::fs::File::create(a.out.join("metrics.jsonl"))?;
    print_header();
    for m in trainer.history() {
        writeln!(metrics, "{}", serde_json::to_string(m)?)?;
        print_row(m);
    }
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches {msg} ({eta})")?
            .progress_chars("=> "),
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(interrupted.clone())?;
    let mut obs = Cli {
        bar,
        out: a.out.clone(),
        metrics,
        interrupted,
    };
    let outcome = trainer.run(&mut obs)?;
    obs.bar.finish_and_clear();
    match outcome {
        Outcome::Completed { epochs } => {
            let last = trainer.history().last();
            println!(
                "done: {epochs} epochs, final test accuracy {}; checkpoints in {}",
                opt(last.and_then(|m| m.test_accuracy)),
                a.out.join("checkpoints").display()
            );
        }
        Outcome::EarlyStopped { epoch, best_epoch } => {
            let best = trainer.history().get(best_epoch as usize - 1);
            println!(
                "early stopping after epoch {epoch}: the best was epoch {best_epoch} (test accuracy {}); checkpoints in {}",
                opt(best.and_then(|m| m.test_accuracy)),
                a.out.join("checkpoints").display()
            );
        }
        Outcome::Stopped { epochs_done } => {
            let out = a.out.display();
            println!(
                "stopped after {epochs_done} epochs; to continue from there: trainyard train {} --out {out} --resume {out}",
                a.spec.display()
            );
        }
    }
    Ok(())
}

/// A run folder is never overwritten by accident: `--force` replaces it, `--resume` with
/// the same folder continues it.
fn refuse_a_used_folder(out: &Path, spec: &Path) -> anyhow::Result<()> {
    let used = ["metrics.jsonl", "checkpoints"]
        .iter()
        .any(|f| out.join(f).exists());
    anyhow::ensure!(
        !used,
        "{0} already holds a run; continue it with `trainyard train {1} --out {0} --resume {0}`, \
         or pass --force to replace it",
        out.display(),
        spec.display()
    );
    Ok(())
}

/// The first Ctrl-C stops training at the next batch (the epochs stored so far are kept
/// and the run can be resumed); a second one ends the process at once. The handler is in
/// place when this returns, so no early Ctrl-C meets the default action.
fn stop_on_ctrl_c(flag: Arc<AtomicBool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let mut interrupts = {
        let _in_rt = rt.enter();
        signal(SignalKind::interrupt())?
    };
    std::thread::spawn(move || {
        rt.block_on(async {
            interrupts.recv().await;
            eprintln!("\nstopping at the next batch (Ctrl-C again to quit now)");
            flag.store(true, Ordering::SeqCst);
            interrupts.recv().await;
            std::process::exit(130);
        })
    });
    Ok(())
}
