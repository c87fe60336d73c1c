//! The chart as SVG text.
//!
//! Written by hand with `std::fmt::Write` rather than through an SVG or XML library: the
//! picture is a few dozen fixed elements plus one path per series, and plain string
//! building with coordinates rounded to 1/100 pixel draws 8 runs of 1,000 epochs in a
//! few milliseconds. The price is that escaping is ours to get right: user text goes
//! through [`push_text`]. Positions come from [`super::layout`].

use std::fmt::Write;

use super::layout::{Layout, layout};
use super::text::{fit, push_text, text_width};
use super::{Chart, LineStyle};

/// The Okabe–Ito palette, safe for the common colour-vision deficiencies; yellow, the
/// faintest on white, comes last. A ninth run repeats the first colour.
pub(super) const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// The font the SVG names: the embedded one first, then whatever sans the viewer has.
pub(super) const FONT_FAMILY: &str = "DejaVu Sans, sans-serif";

/// Markers are skipped for series with more points than this (or closer together than
/// a marker's width): 1,000 circles on 600 pixels are a smudge, and a large share of the
/// SVG's size.
const MAX_MARKERS: usize = 200;

const TEXT: &str = "#222222";
const AXIS: &str = "#555555";
const GRID: &str = "#e5e5e5";
const NOTE: &str = "#888888";

/// A coordinate, printed with at most 2 decimals.
struct P(f64);

impl std::fmt::Display for P {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = (self.0 * 100.0).round() / 100.0;
        if v == v.trunc() {
            write!(f, "{}", v as i64)
        } else {
            write!(f, "{v:.2}")
        }
    }
}

/// The middle of the pixel row or column `v` falls in: 1-pixel lines there are crisp.
fn crisp(v: f64) -> f64 {
    v.floor() + 0.5
}

fn dash(style: LineStyle, line: f64) -> String {
    match style {
        LineStyle::Solid => String::new(),
        LineStyle::Dashed => format!(r#" stroke-dasharray="{} {}""#, P(line * 3.0), P(line * 2.5)),
        // Near-zero dashes with round caps are dots.
        LineStyle::Dotted => format!(r#" stroke-dasharray="0.01 {}""#, P(line * 2.2)),
    }
}

/// The chart as a standalone SVG document of `width` x `height` pixels.
pub fn svg(chart: &Chart, width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let l = layout(chart, w, h);
    let points: usize = chart.series.iter().map(|s| s.points.len()).sum();
    let mut out = String::with_capacity(8192 + points * 20);
    // Writing to a String cannot fail.
    let _ = write_svg(&mut out, chart, &l);
    out
}

fn write_svg(o: &mut String, chart: &Chart, l: &Layout) -> std::fmt::Result {
    let (w, h) = (l.w, l.h);
    write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" font-family="{FONT_FAMILY}" font-size="{}" fill="{TEXT}">"#,
        P(w),
        P(h),
        P(w),
        P(h),
        P(l.font)
    )?;
    write!(
        o,
        r##"<rect width="{}" height="{}" fill="#ffffff"/>"##,
        P(w),
        P(h)
    )?;

    if !chart.title.is_empty() {
        let title = fit(&chart.title, l.title, w - l.font * 1.6);
        let tw = text_width(&title, l.title);
        let mid = (l.x0 + l.x1) / 2.0;
        let cx = if mid - tw / 2.0 >= l.font * 0.8 && mid + tw / 2.0 <= w - l.font * 0.8 {
            mid
        } else {
            w / 2.0
        };
        write!(
            o,
            r#"<text x="{}" y="{}" font-size="{}" text-anchor="middle">"#,
            P(cx),
            P(l.font * 0.8 + l.title),
            P(l.title)
        )?;
        push_text(o, &title);
        o.push_str("</text>");
    }

    // Grid, then the axes with their ticks, each as one path.
    o.push_str(r#"<path d=""#);
    for v in l.xt.values() {
        let x = crisp(l.xs.map(v));
        write!(o, "M{} {}V{}", P(x), P(l.y0), P(l.y1))?;
    }
    for v in l.yt.values() {
        let y = crisp(l.ys.map(v));
        write!(o, "M{} {}H{}", P(l.x0), P(y), P(l.x1))?;
    }
    write!(o, r#"" stroke="{GRID}" stroke-width="1" fill="none"/>"#)?;
    let (ax, ay) = (crisp(l.x0), crisp(l.y1));
    write!(
        o,
        r#"<path d="M{} {}V{}H{}"#,
        P(ax),
        P(l.y0),
        P(ay),
        P(l.x1)
    )?;
    for v in l.xt.values() {
        write!(o, "M{} {}v{}", P(crisp(l.xs.map(v))), P(ay), P(l.tick))?;
    }
    for v in l.yt.values() {
        write!(o, "M{} {}h{}", P(ax), P(crisp(l.ys.map(v))), P(-l.tick))?;
    }
    write!(o, r#"" stroke="{AXIS}" stroke-width="1" fill="none"/>"#)?;

    // Tick labels and axis labels.
    o.push_str(r#"<g text-anchor="middle">"#);
    for v in l.xt.values() {
        write!(
            o,
            r#"<text x="{}" y="{}">{}</text>"#,
            P(l.xs.map(v)),
            P(l.y1 + l.tick + l.font * 1.1),
            l.xt.label(v)
        )?;
    }
    o.push_str("</g>");
    o.push_str(r#"<g text-anchor="end">"#);
    for v in l.yt.values() {
        write!(
            o,
            r#"<text x="{}" y="{}">{}</text>"#,
            P(l.x0 - l.tick - l.font * 0.3),
            P(l.ys.map(v) + l.font * 0.36),
            l.yt.label(v)
        )?;
    }
    o.push_str("</g>");
    write!(
        o,
        r#"<text x="{}" y="{}" font-size="{}" text-anchor="middle">"#,
        P((l.x0 + l.x1) / 2.0),
        P(l.y1 + l.tick + l.font * 1.4 + l.label * 1.1),
        P(l.label)
    )?;
    push_text(o, &chart.x_label);
    write!(
        o,
        r#"</text><text transform="translate({} {}) rotate(-90)" font-size="{}" text-anchor="middle">"#,
        P(l.font * 0.8 + l.label * 0.85),
        P((l.y0 + l.y1) / 2.0),
        P(l.label)
    )?;
    push_text(o, &chart.y_label);
    o.push_str("</text>");

    write_bands(o, chart, l)?;
    write_series(o, chart, l)?;
    write_legend(o, l)?;

    let finite = chart
        .series
        .iter()
        .flat_map(|s| &s.points)
        .any(|(x, y)| x.is_finite() && y.is_finite());
    if !finite {
        let note = if chart.series.iter().all(|s| s.points.is_empty()) {
            "no epochs yet"
        } else {
            "no finite values"
        };
        write!(
            o,
            r#"<text x="{}" y="{}" font-size="{}" fill="{NOTE}" text-anchor="middle">{note}</text>"#,
            P((l.x0 + l.x1) / 2.0),
            P((l.y0 + l.y1) / 2.0 + l.font * 0.4),
            P(l.font * 1.2)
        )?;
    }
    o.push_str("</svg>\n");
    Ok(())
}

/// One filled `<path class="band">` per band: along the highs, back along the lows.
fn write_bands(o: &mut String, chart: &Chart, l: &Layout) -> std::fmt::Result {
    for b in &chart.bands {
        let pts: Vec<_> = b
            .points
            .iter()
            .filter(|(x, lo, hi)| x.is_finite() && lo.is_finite() && hi.is_finite())
            .collect();
        if pts.len() < 2 {
            continue;
        }
        o.push_str(r#"<path class="band" d=""#);
        for (i, (x, _, hi)) in pts.iter().enumerate() {
            let cmd = if i == 0 { 'M' } else { 'L' };
            write!(o, "{cmd}{} {}", P(l.xs.map(*x)), P(l.ys.map(*hi)))?;
        }
        for (x, lo, _) in pts.iter().rev() {
            write!(o, "L{} {}", P(l.xs.map(*x)), P(l.ys.map(*lo)))?;
        }
        write!(
            o,
            r#"Z" fill="{}" fill-opacity="0.18" stroke="none"/>"#,
            PALETTE[b.group % PALETTE.len()]
        )?;
    }
    Ok(())
}

/// One `<path class="series">` per series (a non-finite point lifts the pen), then its
/// markers.
fn write_series(o: &mut String, chart: &Chart, l: &Layout) -> std::fmt::Result {
    let r = l.line * 1.4;
    for s in &chart.series {
        let colour = PALETTE[s.group % PALETTE.len()];
        o.push_str(r#"<path class="series" data-series=""#);
        push_text(o, &s.name);
        o.push_str(r#"" d=""#);
        let mut pen_down = false;
        for &(x, y) in &s.points {
            if x.is_finite() && y.is_finite() {
                let cmd = if pen_down { 'L' } else { 'M' };
                write!(o, "{cmd}{} {}", P(l.xs.map(x)), P(l.ys.map(y)))?;
                pen_down = true;
            } else {
                pen_down = false;
            }
        }
        write!(
            o,
            r#"" fill="none" stroke="{colour}" stroke-width="{}" stroke-linejoin="round" stroke-linecap="round"{}/>"#,
            P(l.line),
            dash(s.style, l.line)
        )?;

        // Markers only where they stand apart: not on long series, nor on a short one
        // squeezed beside a long one (5 epochs on a 1,000-epoch axis).
        let n = s.points.len();
        let xs = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
            (lo.min(*x), hi.max(*x))
        });
        let spacing = (l.xs.map(hi) - l.xs.map(lo)) / (n.max(2) - 1) as f64;
        if n > MAX_MARKERS || (n > 1 && spacing < r * 3.0) {
            write!(o, "<!-- markers skipped: {n} points too close together -->")?;
            continue;
        }
        write_marker_group(o, colour, s.style, l.line)?;
        for &(x, y) in &s.points {
            if x.is_finite() && y.is_finite() {
                write!(
                    o,
                    r#"<circle cx="{}" cy="{}" r="{}"/>"#,
                    P(l.xs.map(x)),
                    P(l.ys.map(y)),
                    P(r)
                )?;
            }
        }
        o.push_str("</g>");
    }
    Ok(())
}

/// Opens the `<g>` that styles markers: filled for train, hollow for the others.
fn write_marker_group(
    o: &mut String,
    colour: &str,
    style: LineStyle,
    line: f64,
) -> std::fmt::Result {
    if style == LineStyle::Solid {
        write!(o, r#"<g fill="{colour}">"#)
    } else {
        write!(
            o,
            r##"<g fill="#ffffff" stroke="{colour}" stroke-width="{}">"##,
            P(line * 0.7)
        )
    }
}

fn write_legend(o: &mut String, l: &Layout) -> std::fmt::Result {
    write!(o, r#"<g font-size="{}">"#, P(l.legend_font))?;
    for (e, x, y) in &l.entries {
        let mid = y + l.row * 0.5;
        write!(
            o,
            r#"<path d="M{} {}h{}" fill="none" stroke="{}" stroke-width="{}" stroke-linecap="round"{}/>"#,
            P(x + l.line),
            P(mid),
            P(l.swatch - 2.0 * l.line),
            e.colour,
            P(l.line),
            dash(e.style, l.line)
        )?;
        write_marker_group(o, e.colour, e.style, l.line)?;
        write!(
            o,
            r#"<circle cx="{}" cy="{}" r="{}"/></g>"#,
            P(x + l.swatch / 2.0),
            P(mid),
            P(l.line * 1.4)
        )?;
        write!(
            o,
            r#"<text x="{}" y="{}">"#,
            P(x + l.swatch + l.legend_font * 0.5),
            P(mid + l.legend_font * 0.36)
        )?;
        push_text(o, &e.label);
        o.push_str("</text>");
    }
    if let Some((x, y, n)) = l.more {
        write!(
            o,
            r#"<text x="{}" y="{}" fill="{NOTE}">+{n} more</text>"#,
            P(x),
            P(y + l.row * 0.5 + l.legend_font * 0.36)
        )?;
    }
    o.push_str("</g>");
    Ok(())
}

#[cfg(test)]
mod tests;
