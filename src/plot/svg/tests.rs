//! The SVG read back as XML: series paths, escaping, degenerate charts, layout bounds.

use super::*;
use crate::plot::tests::epochs;
use crate::plot::{Metric, Repeats, Run, Series, chart, mean_chart};

/// The SVG parsed as XML, checked for what every picture must have.
fn parse(text: &str) -> roxmltree::Document<'_> {
    let doc = roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.attribute("font-family"), Some(FONT_FAMILY));
    doc
}

/// `(data-series, number of M and L commands)` of each series path, in order.
fn series_paths(doc: &roxmltree::Document) -> Vec<(String, usize)> {
    doc.descendants()
        .filter(|n| n.attribute("class") == Some("series"))
        .map(|n| {
            assert_eq!(n.tag_name().name(), "path");
            let d = n.attribute("d").unwrap();
            let commands = d.chars().filter(|c| matches!(c, 'M' | 'L')).count();
            (n.attribute("data-series").unwrap().to_string(), commands)
        })
        .collect()
}

fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect()
}

#[test]
fn svg_has_one_series_path_with_one_point_per_epoch() {
    for n in [1, 2, 5, 1000] {
        let e = epochs(n, 0.5, true, true);
        let c = chart(
            "run",
            &[Run {
                name: "a",
                epochs: &e,
            }],
            Metric::Loss,
        );
        let text = svg(&c, 800, 500);
        let doc = parse(&text);
        let paths = series_paths(&doc);
        let want: Vec<(String, usize)> = ["train", "validation", "test"]
            .iter()
            .map(|s| (s.to_string(), n as usize))
            .collect();
        assert_eq!(paths, want, "{n} epochs");
        let t = texts(&doc);
        for label in ["run", "epoch", "loss", "train", "validation", "test"] {
            assert!(t.iter().any(|s| s == label), "{label} missing from {t:?}");
        }
    }
}

#[test]
fn svg_of_8_runs_of_1000_epochs_has_every_series() {
    let runs: Vec<(String, Vec<_>)> = (0..8)
        .map(|i| {
            (
                format!("run-{i}"),
                epochs(1000, 0.1 + i as f64 * 0.2, true, false),
            )
        })
        .collect();
    let runs: Vec<Run> = runs
        .iter()
        .map(|(name, e)| Run { name, epochs: e })
        .collect();
    let c = chart("eight", &runs, Metric::Accuracy);
    let text = svg(&c, 800, 500);
    let paths = series_paths(&parse(&text));
    assert_eq!(paths.len(), 16);
    assert!(paths.iter().all(|(_, n)| *n == 1000), "{paths:?}");
    assert_eq!(paths[15].0, "run-7 · validation");
    // Eight runs, eight colours.
    for colour in PALETTE {
        assert!(text.contains(&format!(r#"stroke="{colour}""#)), "{colour}");
    }
    // Long series go unmarked: the only circles are the legend's swatches.
    assert!(text.matches("<circle").count() <= 16);
    assert!(text.contains("markers skipped"));
}

#[test]
fn markers_are_skipped_where_points_crowd_together() {
    let long = epochs(1000, 0.1, false, false);
    let short = epochs(5, 0.5, false, false);
    let runs = [
        Run {
            name: "long",
            epochs: &long,
        },
        Run {
            name: "short",
            epochs: &short,
        },
    ];
    let text = svg(&chart("t", &runs, Metric::Loss), 800, 500);
    // Only the legend's two swatches have a marker.
    assert_eq!(text.matches("<circle").count(), 2);
    assert_eq!(text.matches("markers skipped").count(), 2);
    let text = svg(&chart("t", &runs[1..], Metric::Loss), 800, 500);
    assert_eq!(text.matches("<circle").count(), 5 + 1);
}

#[test]
fn run_names_with_markup_are_escaped_and_the_svg_still_parses() {
    let e = epochs(3, 0.5, false, false);
    let hostile = r#"<script>alert("x&y")</script>'"#;
    let runs = [
        Run {
            name: hostile,
            epochs: &e,
        },
        Run {
            name: "ctrl\u{1}\u{8}char",
            epochs: &e,
        },
    ];
    let c = chart("<b>title</b> & co", &runs, Metric::Loss);
    let text = svg(&c, 800, 500);
    assert!(!text.contains("<script"), "{text}");
    assert!(!text.contains("<b>"), "{text}");
    let doc = parse(&text);
    let paths = series_paths(&doc);
    assert_eq!(paths[0].0, format!("{hostile} · train"));
    assert_eq!(paths[1].0, "ctrl\u{FFFD}\u{FFFD}char · train");
    let t = texts(&doc);
    assert!(t.contains(&"<b>title</b> & co".to_string()), "{t:?}");
    assert!(!doc.descendants().any(|n| n.has_tag_name("script")));
}

#[test]
fn non_finite_points_break_the_line_and_keep_the_xml_valid() {
    let c = Chart {
        title: "diverged".into(),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        series: vec![Series {
            name: "train".into(),
            group: 0,
            style: LineStyle::Solid,
            points: vec![
                (1.0, 2.0),
                (2.0, 1.0),
                (3.0, f64::NAN),
                (4.0, f64::INFINITY),
                (5.0, 0.5),
                (6.0, 0.4),
                (f64::NAN, 0.3),
            ],
        }],
        bands: vec![],
    };
    let text = svg(&c, 800, 500);
    assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
    let doc = parse(&text);
    let d = doc
        .descendants()
        .find(|n| n.attribute("class") == Some("series"))
        .unwrap()
        .attribute("d")
        .unwrap();
    let commands: String = d.chars().filter(|c| matches!(c, 'M' | 'L')).collect();
    assert_eq!(commands, "MLML");
    assert_eq!(text.matches("<circle").count(), 4 + 1); // points, legend swatch
}

#[test]
fn empty_chart_renders_axes_and_a_no_epochs_note() {
    let c = chart("nothing yet", &[], Metric::Loss);
    assert!(c.series.is_empty());
    let doc_text = svg(&c, 800, 500);
    let doc = parse(&doc_text);
    assert!(series_paths(&doc).is_empty());
    let t = texts(&doc);
    assert!(t.iter().any(|s| s == "no epochs yet"), "{t:?}");
    assert!(t.iter().any(|s| s == "epoch"), "{t:?}");
    // Tick labels on both axes.
    assert!(
        t.iter().filter(|s| s.parse::<f64>().is_ok()).count() >= 4,
        "{t:?}"
    );

    // A series whose only point is NaN: a path with no commands, and a note.
    let c = Chart {
        series: vec![Series {
            name: "train".into(),
            group: 0,
            style: LineStyle::Solid,
            points: vec![(1.0, f64::NAN)],
        }],
        ..c
    };
    let doc_text = svg(&c, 800, 500);
    let doc = parse(&doc_text);
    assert_eq!(series_paths(&doc), [("train".to_string(), 0)]);
    assert!(texts(&doc).iter().any(|s| s == "no finite values"));
}

#[test]
fn one_point_renders_a_single_marker_on_axes_with_a_nonzero_range() {
    let e = epochs(1, 0.5, false, false);
    let c = chart(
        "one",
        &[Run {
            name: "a",
            epochs: &e,
        }],
        Metric::Accuracy,
    );
    let text = svg(&c, 800, 500);
    let doc = parse(&text);
    assert_eq!(series_paths(&doc), [("train".to_string(), 1)]);
    let circles: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .collect();
    assert_eq!(circles.len(), 2); // the point and the legend's swatch
    let cx: f64 = circles[0].attribute("cx").unwrap().parse().unwrap();
    let cy: f64 = circles[0].attribute("cy").unwrap().parse().unwrap();
    assert!(cx.is_finite() && cy.is_finite() && cx > 0.0 && cx < 800.0 && cy > 0.0);
    // The x axis labels epochs around 1, whole numbers only.
    let t = texts(&doc);
    assert!(t.iter().any(|s| s == "1"), "{t:?}");
    assert!(!t.iter().any(|s| s == "0.5"), "{t:?}");
}

#[test]
fn every_allowed_size_keeps_text_and_points_inside_the_picture() {
    let runs: Vec<(String, Vec<_>)> = (0..8)
        .map(|i| {
            (
                format!("a-rather-long-run-name-{i}"),
                epochs(20, 0.3, true, true),
            )
        })
        .collect();
    let runs: Vec<Run> = runs
        .iter()
        .map(|(name, e)| Run { name, epochs: e })
        .collect();
    for (w, h) in [
        (200, 200),
        (200, 4000),
        (4000, 200),
        (399, 300),
        (800, 500),
        (4000, 4000),
    ] {
        for n in [1, 3, 8] {
            let c = chart(
                "a title that is quite long for a small picture",
                &runs[..n],
                Metric::Loss,
            );
            let text = svg(&c, w, h);
            let doc = parse(&text);
            assert_eq!(series_paths(&doc).len(), 3 * n);
            for node in doc.descendants() {
                for (a, limit) in [("x", w), ("cx", w), ("y", h), ("cy", h)] {
                    if let Some(v) = node.attribute(a) {
                        let v: f64 = v.parse().unwrap();
                        assert!(
                            v >= 0.0 && v <= f64::from(limit),
                            "{w}x{h}, {n} runs: {a}={v}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn long_names_are_cut_to_fit_the_legend() {
    let e = epochs(3, 0.5, false, false);
    let name = "x".repeat(300);
    let runs = [
        Run {
            name: &name,
            epochs: &e,
        },
        Run {
            name: "b",
            epochs: &e,
        },
    ];
    let text = svg(&chart("t", &runs, Metric::Loss), 800, 500);
    let doc = parse(&text);
    let label = texts(&doc)
        .into_iter()
        .find(|s| s.starts_with("xxx"))
        .unwrap();
    assert!(label.ends_with('…') && label.len() < 150, "{label}");
    // The path keeps the full name.
    assert_eq!(series_paths(&doc)[0].0, format!("{name} · train"));
}

#[test]
fn legend_says_how_many_entries_did_not_fit() {
    let e = epochs(3, 0.5, true, true);
    let names: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    let runs: Vec<Run> = names
        .iter()
        .map(|n| Run {
            name: n,
            epochs: &e,
        })
        .collect();
    let c = chart("many", &runs, Metric::Loss);
    for (w, h) in [(800, 500), (300, 300)] {
        let doc_text = svg(&c, w, h);
        let doc = parse(&doc_text);
        assert_eq!(series_paths(&doc).len(), 90);
        let t = texts(&doc);
        let more = t.iter().find(|s| s.ends_with(" more")).unwrap();
        let shown = t
            .iter()
            .filter(|s| s.starts_with('r') && s.contains(" · "))
            .count();
        assert_eq!(more, &format!("+{} more", 90 - shown), "{w}x{h}");
    }
}

#[test]
fn repeats_draw_their_mean_over_a_band_of_one_standard_deviation() {
    let (a, b) = (epochs(3, 0.0, false, true), epochs(3, 0.4, false, true));
    let c = mean_chart(
        "sweep",
        &[Repeats {
            name: "lr=0.1",
            runs: vec![&a, &b],
        }],
        Metric::Loss,
        "test",
    );
    assert_eq!(c.series.len(), 1);
    assert_eq!(c.series[0].name, "lr=0.1 (mean of 2)");
    let (x, m) = c.series[0].points[0];
    let want = (a[0].test_loss.unwrap() + b[0].test_loss.unwrap()) / 2.0;
    assert_eq!((x, m), (1.0, want));
    let sd = (a[0].test_loss.unwrap() - b[0].test_loss.unwrap()).abs() / 2f64.sqrt();
    let (_, lo, hi) = c.bands[0].points[0];
    assert!((hi - lo - 2.0 * sd).abs() < 1e-12);
    let text = svg(&c, 800, 500);
    let doc = parse(&text);
    let bands = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("band"))
        .count();
    assert_eq!(bands, 1);
    assert_eq!(series_paths(&doc).len(), 1);
    // One run: its line alone, no band.
    let one = mean_chart(
        "sweep",
        &[Repeats {
            name: "x",
            runs: vec![&a],
        }],
        Metric::Accuracy,
        "test",
    );
    assert!(one.bands.is_empty());
}
