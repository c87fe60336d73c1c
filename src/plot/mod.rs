//! Curve pictures: loss or accuracy per epoch of one or more runs, as SVG or PNG.
//!
//! The server draws them (rather than leaving it to each client) so that a link, a
//! chat message or a terminal can show a run's curve with no JavaScript, and so that the
//! `trainyard plot` command and the HTTP handlers draw the same picture.
//!
//! One drawing path: [`chart`] turns metrics into a [`Chart`] (named series of points),
//! [`svg`] writes that chart as SVG text, and [`png`] rasterises that very SVG with
//! resvg. The PNG therefore cannot drift from the SVG, and its text uses a font embedded
//! in the binary (DejaVu Sans, see `assets/fonts/`), so pictures look the same on every
//! machine and a container needs no font packages.
//!
//! Colour tells runs apart (one colour per run, [`Series::group`]), the dash pattern
//! tells the split (train solid, validation dashed, test dotted), so a comparison of
//! several runs still reads in grey or to a colour-blind reader.

mod layout;
mod png;
pub mod samples;
mod scale;
mod svg;
mod text;

use std::fmt;
use std::str::FromStr;

use crate::engine::metrics::EpochMetrics;

pub use self::png::png;
pub use self::svg::svg;

/// The smallest width or height, in pixels, the handlers accept.
pub const MIN_SIZE: u32 = 200;
/// The largest width or height, in pixels, the handlers accept (a 4000x4000 PNG is a
/// 64 MB pixmap while it is drawn).
pub const MAX_SIZE: u32 = 4000;
pub const DEFAULT_WIDTH: u32 = 800;
pub const DEFAULT_HEIGHT: u32 = 500;

/// Which figure of the epochs a chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Loss,
    Accuracy,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Accuracy => "accuracy",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "loss" => Ok(Metric::Loss),
            "accuracy" => Ok(Metric::Accuracy),
            other => Err(format!("unknown metric {other:?}: loss or accuracy")),
        }
    }
}

/// How a series' line is drawn: the split it measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStyle {
    /// Train.
    Solid,
    /// Validation.
    Dashed,
    /// Test.
    Dotted,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend's label (and the path's `data-series` attribute).
    pub name: String,
    /// The colour index: one per run, so a run's train, validation and test lines share
    /// a colour. Colours repeat after the palette's 8.
    pub group: usize,
    pub style: LineStyle,
    /// `(x, y)`; a non-finite y (a diverged loss) breaks the line there.
    pub points: Vec<(f64, f64)>,
}

/// The spread around a mean: an area filled in its group's colour, under the lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub group: usize,
    /// `(x, low, high)`.
    pub points: Vec<(f64, f64, f64)>,
}

/// What [`svg`] and [`png`] draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Drawn first, under every series.
    pub bands: Vec<Band>,
}

/// One run's curve: a name and its per-epoch metrics.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub name: &'a str,
    pub epochs: &'a [EpochMetrics],
}

/// Why a picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("picture size {width}x{height} is outside {MIN_SIZE} to {MAX_SIZE} pixels")]
    Size { width: u32, height: u32 },
    /// The SVG did not parse (a bug here: the SVG is ours).
    #[error("reading the chart's SVG: {0}")]
    Svg(String),
    #[error("encoding the PNG: {0}")]
    Encode(String),
}

/// The chart of `metric` for `runs`: per run, its train, validation and test series
/// (those with at least one value), coloured by the run's index, x being the epoch.
/// With one run the series are named `train`, `validation` and `test`; with several,
/// `RUN · train` and so on.
pub fn chart(title: &str, runs: &[Run], metric: Metric) -> Chart {
    type Pick = fn(&EpochMetrics) -> Option<f64>;
    let splits: [(&str, LineStyle, Pick); 3] = match metric {
        Metric::Loss => [
            ("train", LineStyle::Solid, |m| Some(m.train_loss)),
            ("validation", LineStyle::Dashed, |m| m.val_loss),
            ("test", LineStyle::Dotted, |m| m.test_loss),
        ],
        Metric::Accuracy => [
            ("train", LineStyle::Solid, |m| Some(m.train_accuracy)),
            ("validation", LineStyle::Dashed, |m| m.val_accuracy),
            ("test", LineStyle::Dotted, |m| m.test_accuracy),
        ],
    };
    let mut series = Vec::new();
    for (group, run) in runs.iter().enumerate() {
        for (split, style, pick) in splits {
            let points: Vec<(f64, f64)> = run
                .epochs
                .iter()
                .filter_map(|m| pick(m).map(|v| (f64::from(m.epoch), v)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let name = if runs.len() == 1 {
                split.to_string()
            } else {
                format!("{} · {split}", run.name)
            };
            series.push(Series {
                name,
                group,
                style,
                points,
            });
        }
    }
    Chart {
        title: title.to_string(),
        x_label: "epoch".into(),
        y_label: metric.as_str().into(),
        series,
        bands: Vec::new(),
    }
}

/// Runs that repeat one point (the same spec on other seeds), drawn as one.
#[derive(Debug, Clone)]
pub struct Repeats<'a> {
    pub name: &'a str,
    pub runs: Vec<&'a [EpochMetrics]>,
}

/// The chart of `metric` on one split (`val`, `test` or `train`) for groups of repeats:
/// per group, the mean of each epoch over the runs that reached it, and a band of one
/// sample standard deviation either side (none below two runs).
pub fn mean_chart(title: &str, groups: &[Repeats], metric: Metric, split: &str) -> Chart {
    let pick = |m: &EpochMetrics| -> Option<f64> {
        match (metric, split) {
            (Metric::Loss, "train") => Some(m.train_loss),
            (Metric::Loss, "val") => m.val_loss,
            (Metric::Loss, _) => m.test_loss,
            (Metric::Accuracy, "train") => Some(m.train_accuracy),
            (Metric::Accuracy, "val") => m.val_accuracy,
            (Metric::Accuracy, _) => m.test_accuracy,
        }
    };
    let style = match split {
        "train" => LineStyle::Solid,
        "val" => LineStyle::Dashed,
        _ => LineStyle::Dotted,
    };
    let mut series = Vec::new();
    let mut bands = Vec::new();
    for (group, g) in groups.iter().enumerate() {
        let mut at: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
        for run in &g.runs {
            for m in run.iter() {
                if let Some(v) = pick(m).filter(|v| v.is_finite()) {
                    at.entry(m.epoch).or_default().push(v);
                }
            }
        }
        let mut mean = Vec::new();
        let mut band = Vec::new();
        for (epoch, v) in at {
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            mean.push((f64::from(epoch), m));
            if v.len() > 1 {
                let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
                band.push((f64::from(epoch), m - sd, m + sd));
            }
        }
        if mean.is_empty() {
            continue;
        }
        series.push(Series {
            name: format!("{} (mean of {})", g.name, g.runs.len()),
            group,
            style,
            points: mean,
        });
        if !band.is_empty() {
            bands.push(Band {
                group,
                points: band,
            });
        }
    }
    let split_name = match split {
        "train" => "training",
        "val" => "validation",
        _ => "test",
    };
    Chart {
        title: title.to_string(),
        x_label: "epoch".into(),
        y_label: format!("{split_name} {metric} (mean ± sd)"),
        series,
        bands,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` epochs of a plausible run: loss falling, accuracy rising, with `val` and
    /// `test` figures when asked.
    pub fn epochs(n: u32, seed: f64, val: bool, test: bool) -> Vec<EpochMetrics> {
        (1..=n)
            .map(|e| {
                let t = f64::from(e);
                let loss = 2.3 / (1.0 + seed * t) + 0.05 * (t * 0.7 + seed).sin().abs();
                EpochMetrics {
                    epoch: e,
                    train_loss: loss,
                    train_accuracy: 1.0 - loss / 2.5,
                    val_loss: val.then_some(loss * 1.1),
                    val_accuracy: val.then_some(1.0 - loss / 2.3),
                    test_loss: test.then_some(loss * 1.15),
                    test_accuracy: test.then_some(1.0 - loss / 2.2),
                    train_seconds: 1.0,
                    images_per_second: 1000.0,
                    learning_rate: None,
                }
            })
            .collect()
    }

    #[test]
    fn metric_parses_from_its_name_and_refuses_others() {
        assert_eq!("loss".parse::<Metric>(), Ok(Metric::Loss));
        assert_eq!("accuracy".parse::<Metric>(), Ok(Metric::Accuracy));
        assert!(
            "acc"
                .parse::<Metric>()
                .unwrap_err()
                .contains("loss or accuracy")
        );
        assert_eq!(Metric::Accuracy.to_string(), "accuracy");
    }

    #[test]
    fn chart_has_one_series_per_run_and_split_with_values() {
        let a = epochs(3, 0.5, true, true);
        let b = epochs(4, 0.9, false, true);
        let c = chart(
            "t",
            &[
                Run {
                    name: "a",
                    epochs: &a,
                },
                Run {
                    name: "b",
                    epochs: &b,
                },
                Run {
                    name: "empty",
                    epochs: &[],
                },
            ],
            Metric::Accuracy,
        );
        let names: Vec<(&str, usize, LineStyle)> = c
            .series
            .iter()
            .map(|s| (s.name.as_str(), s.group, s.style))
            .collect();
        assert_eq!(
            names,
            [
                ("a · train", 0, LineStyle::Solid),
                ("a · validation", 0, LineStyle::Dashed),
                ("a · test", 0, LineStyle::Dotted),
                ("b · train", 1, LineStyle::Solid),
                ("b · test", 1, LineStyle::Dotted),
            ]
        );
        assert_eq!(c.series[3].points.len(), 4);
        assert_eq!(c.series[3].points[0], (1.0, b[0].train_accuracy));
        assert_eq!(
            (c.x_label.as_str(), c.y_label.as_str()),
            ("epoch", "accuracy")
        );
    }

    #[test]
    fn chart_of_one_run_names_series_by_split_only() {
        let a = epochs(2, 0.5, true, false);
        let c = chart(
            "t",
            &[Run {
                name: "a",
                epochs: &a,
            }],
            Metric::Loss,
        );
        let names: Vec<&str> = c.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["train", "validation"]);
        assert_eq!(c.series[1].points[1], (2.0, a[1].val_loss.unwrap()));
    }
}
