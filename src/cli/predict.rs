//! `trainyard predict --checkpoint FILE IMAGE...`

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::data::image::decode_to;
use crate::engine::infer::{Predictor, argmax};
use crate::engine::{Checkpoint, device};
use crate::spec::DeviceSpec;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A weights file written by `trainyard train` (epoch-N.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// PNG, JPEG or PGM images.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Print one JSON object per image instead of text.
    #[arg(long)]
    pub json: bool,
    /// The device to run on (auto, cpu, cuda, cuda:N).
    #[arg(long, env = "TRAINYARD_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

/// The weights file `--checkpoint` names, or an error that says what was given instead
/// (a run folder, its checkpoints folder, an optimizer-state file) and what to give.
fn weights_file(path: &Path) -> anyhow::Result<&Path> {
    if path.is_dir() {
        let checkpoints = path.join("checkpoints");
        let dir = if checkpoints.is_dir() {
            checkpoints
        } else {
            path.to_path_buf()
        };
        let hint = match Checkpoint::latest_in(&dir).ok().flatten() {
            Some(latest) => format!(", e.g. {}", latest.display()),
            None => String::new(),
        };
        anyhow::bail!(
            "{} is a folder; --checkpoint takes a weights file (epoch-N.safetensors){hint}",
            path.display()
        );
    }
    let name = path.to_str().unwrap_or_default();
    if let Some(stem) = name.strip_suffix(".optim.safetensors") {
        anyhow::bail!(
            "{name} holds optimizer state (momentum, Adam's moments), not weights; \
             the weights of that epoch are {stem}.safetensors"
        );
    }
    Ok(path)
}

pub fn run(a: PredictArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::load(weights_file(&a.checkpoint)?)
        .with_context(|| format!("reading {}", a.checkpoint.display()))?;
    let predictor = Predictor::new(&ckpt, &device::select(a.device)?)?;
    // Each image in the model's own format: its data's channels and size.
    let d = predictor.data().clone();
    let mut pixels = Vec::new();
    for path in &a.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        pixels.extend(
            decode_to(&bytes, d.channels, d.height, d.width)
                .with_context(|| path.display().to_string())?,
        );
    }
    let probs = predictor.predict(&pixels)?;
    for (path, p) in a.images.iter().zip(&probs) {
        let class = argmax(p);
        if a.json {
            let line = serde_json::json!({
                "image": path.display().to_string(),
                "class": class,
                "class_name": d.class_name(class),
                "probabilities": p,
            });
            println!("{line}");
        } else {
            let ps: Vec<String> = p.iter().map(|v| format!("{v:.3}")).collect();
            // The class's name where it is not just its number (MNIST's are).
            let name = d.class_name(class);
            let name = if name == class.to_string() {
                String::new()
            } else {
                format!(" {name}")
            };
            println!(
                "{}: {class}{name} (p={:.4})  [{}]",
                path.display(),
                p[class],
                ps.join(" ")
            );
        }
    }
    Ok(())
}
