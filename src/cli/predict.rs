//! `trainyard predict --checkpoint FILE IMAGE...`

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::data::image::decode_to_28x28;
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
    #[arg(long, env = "TRAINYARD_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

pub fn run(a: PredictArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::load(&a.checkpoint)
        .with_context(|| format!("reading {}", a.checkpoint.display()))?;
    let predictor = Predictor::new(&ckpt, &device::select(a.device)?)?;
    let mut pixels = Vec::new();
    for path in &a.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        pixels.extend(decode_to_28x28(&bytes).with_context(|| path.display().to_string())?);
    }
    let probs = predictor.predict(&pixels)?;
    for (path, p) in a.images.iter().zip(&probs) {
        let class = argmax(p);
        if a.json {
            let line = serde_json::json!({
                "image": path.display().to_string(),
                "class": class,
                "probabilities": p,
            });
            println!("{line}");
        } else {
            let ps: Vec<String> = p.iter().map(|v| format!("{v:.3}")).collect();
            println!(
                "{}: {class} (p={:.4})  [{}]",
                path.display(),
                p[class],
                ps.join(" ")
            );
        }
    }
    Ok(())
}
