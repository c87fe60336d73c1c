//! `trainyard plot RUN_DIR... --out FILE.svg|FILE.png`: curves of local runs, drawn by
//! the same code as the service's pictures.
//!
//! A run folder is what `trainyard train --out` writes; only its `metrics.jsonl` is read.
//! Lines are read leniently where the engine's own type would be strict: JSON has no NaN,
//! so a diverged loss is written as `null`, and such a line must still plot (as a gap)
//! rather than make the whole run unreadable.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

use crate::engine::EpochMetrics;
use crate::plot::{self, DEFAULT_HEIGHT, DEFAULT_WIDTH, MAX_SIZE, MIN_SIZE, Metric, Run};

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run folders written by `trainyard train --out` (each holds metrics.jsonl).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// The picture to write: FILE.svg or FILE.png.
    #[arg(long)]
    pub out: PathBuf,
    /// What to draw: loss or accuracy.
    #[arg(long, default_value = "loss")]
    pub metric: Metric,
    /// Width in pixels.
    #[arg(long, default_value_t = DEFAULT_WIDTH,
        value_parser = clap::value_parser!(u32).range(i64::from(MIN_SIZE)..=i64::from(MAX_SIZE)))]
    pub width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = DEFAULT_HEIGHT,
        value_parser = clap::value_parser!(u32).range(i64::from(MIN_SIZE)..=i64::from(MAX_SIZE)))]
    pub height: u32,
    /// The title (default: the metric and the run's name or the number of runs).
    #[arg(long)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Svg,
    Png,
}

/// The picture's format, from the extension of `out`.
fn format_of(out: &Path) -> anyhow::Result<Format> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => bail!(
            "--out {}: the file name must end in .svg or .png",
            out.display()
        ),
    }
}

/// One line of metrics.jsonl, with every figure optional (see the module's comment).
#[derive(Deserialize)]
struct Line {
    epoch: u32,
    train_loss: Option<f64>,
    train_accuracy: Option<f64>,
    val_loss: Option<f64>,
    val_accuracy: Option<f64>,
    test_loss: Option<f64>,
    test_accuracy: Option<f64>,
}

/// The epochs of `metrics.jsonl` in a run folder; errors name the file and line.
fn read_metrics(dir: &Path) -> anyhow::Result<Vec<EpochMetrics>> {
    let path = dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut epochs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line)
            .with_context(|| format!("{} line {}", path.display(), i + 1))?;
        epochs.push(EpochMetrics {
            epoch: l.epoch,
            train_loss: l.train_loss.unwrap_or(f64::NAN),
            train_accuracy: l.train_accuracy.unwrap_or(f64::NAN),
            val_loss: l.val_loss,
            val_accuracy: l.val_accuracy,
            test_loss: l.test_loss,
            test_accuracy: l.test_accuracy,
            train_seconds: 0.0,
            images_per_second: 0.0,
            learning_rate: None,
        });
    }
    Ok(epochs)
}

/// A run's name: its folder's name (also for `.` or a path ending in `/`).
fn run_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(dir)
        .file_name()
        .map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
}

pub fn run(a: PlotArgs) -> anyhow::Result<()> {
    let format = format_of(&a.out)?;
    let runs: Vec<(String, Vec<EpochMetrics>)> = a
        .runs
        .iter()
        .map(|dir| Ok((run_name(dir), read_metrics(dir)?)))
        .collect::<anyhow::Result<_>>()?;
    let title = a.title.unwrap_or_else(|| match runs.as_slice() {
        [(name, _)] => format!("{} · {name}", a.metric),
        _ => format!("{} · {} runs", a.metric, runs.len()),
    });
    let views: Vec<Run> = runs
        .iter()
        .map(|(name, epochs)| Run { name, epochs })
        .collect();
    let chart = plot::chart(&title, &views, a.metric);
    let bytes = match format {
        Format::Svg => plot::svg(&chart, a.width, a.height).into_bytes(),
        Format::Png => plot::png(&chart, a.width, a.height)?,
    };
    std::fs::write(&a.out, bytes).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_format_comes_from_the_extension() {
        assert_eq!(format_of(Path::new("a/b.svg")).unwrap(), Format::Svg);
        assert_eq!(format_of(Path::new("B.PNG")).unwrap(), Format::Png);
        for bad in ["a.jpg", "a", "svg"] {
            let e = format_of(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(".svg or .png"), "{e}");
        }
    }

    #[test]
    fn plot_reads_null_figures_as_gaps_and_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"epoch":1,"train_loss":null,"train_accuracy":0.5,"val_loss":null,"val_accuracy":null,"test_loss":0.7,"test_accuracy":0.8,"train_seconds":1.0,"images_per_second":9.0}"#;
        std::fs::write(dir.path().join("metrics.jsonl"), format!("{good}\n\n")).unwrap();
        let m = read_metrics(dir.path()).unwrap();
        assert_eq!(m.len(), 1);
        assert!(m[0].train_loss.is_nan());
        assert_eq!(m[0].test_loss, Some(0.7));

        std::fs::write(
            dir.path().join("metrics.jsonl"),
            format!("{good}\n{{\"epoch\"\n"),
        )
        .unwrap();
        let e = format!("{:#}", read_metrics(dir.path()).unwrap_err());
        assert!(e.contains("metrics.jsonl line 2"), "{e}");

        let e = format!("{:#}", read_metrics(&dir.path().join("nope")).unwrap_err());
        assert!(e.contains("nope/metrics.jsonl"), "{e}");
    }
}
