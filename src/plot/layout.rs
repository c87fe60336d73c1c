//! Where everything goes: sizes and positions of one picture, from its size and text.
//!
//! Margins fit the tick labels; the legend sits outside the plot area (on the right, or
//! in rows above it on narrow pictures) so that it never covers a curve, and when it has
//! more entries than fit it says how many it left out. Text and line sizes grow with the
//! picture, so a 4000-pixel PNG is not a thumbnail's worth of text in a sea of white.

use super::scale::{self, Linear, Ticks};
use super::svg::PALETTE;
use super::text::{fit, text_width};
use super::{Chart, LineStyle};

/// A legend entry: a label (already cut to fit), its colour and dash.
pub(super) struct Entry {
    pub(super) label: String,
    pub(super) colour: &'static str,
    pub(super) style: LineStyle,
}

/// Rows of legend a narrow picture puts above the plot area, at most.
const MAX_TOP_ROWS: usize = 3;

/// Every size and position of one picture.
pub(super) struct Layout {
    pub(super) w: f64,
    pub(super) h: f64,
    /// Tick label size; the other sizes derive from it.
    pub(super) font: f64,
    pub(super) title: f64,
    pub(super) label: f64,
    pub(super) legend_font: f64,
    pub(super) tick: f64,
    pub(super) line: f64,
    /// The plot area's edges.
    pub(super) x0: f64,
    pub(super) x1: f64,
    pub(super) y0: f64,
    pub(super) y1: f64,
    pub(super) xt: Ticks,
    pub(super) yt: Ticks,
    pub(super) xs: Linear,
    pub(super) ys: Linear,
    /// The legend entries shown, each with its top left corner.
    pub(super) entries: Vec<(Entry, f64, f64)>,
    /// Where the legend says how many entries it left out, and how many.
    pub(super) more: Option<(f64, f64, usize)>,
    pub(super) row: f64,
    pub(super) swatch: f64,
}

pub(super) fn layout(chart: &Chart, w: f64, h: f64) -> Layout {
    let font = (w.min(h * 1.6) / 64.0).clamp(9.0, 28.0);
    let pad = font * 0.8;
    let title = font * 1.3;
    let label = font * 1.05;
    let legend_font = font * 0.95;
    let tick = font * 0.4;
    let line = (font * 0.16).max(1.5);
    let row = legend_font * 1.5;
    let swatch = legend_font * 2.6;

    // The data's extent, over finite points only.
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let mut integer_x = true;
    for s in &chart.series {
        for &(x, y) in &s.points {
            if x.is_finite() && y.is_finite() {
                xmin = xmin.min(x);
                xmax = xmax.max(x);
                ymin = ymin.min(y);
                ymax = ymax.max(y);
                integer_x &= x.fract() == 0.0;
            }
        }
    }
    for b in &chart.bands {
        for &(_, lo, hi) in &b.points {
            if lo.is_finite() && hi.is_finite() {
                ymin = ymin.min(lo);
                ymax = ymax.max(hi);
            }
        }
    }
    if xmin > xmax {
        (xmin, xmax, ymin, ymax) = (0.0, 10.0, 0.0, 1.0);
    }

    // The legend: on the right where there is room for it, else in rows above.
    let mut entries: Vec<Entry> = chart
        .series
        .iter()
        .map(|s| Entry {
            label: s.name.clone(),
            colour: PALETTE[s.group % PALETTE.len()],
            style: s.style,
        })
        .collect();
    let mut top = pad;
    if !chart.title.is_empty() {
        top += title * 1.3;
    }
    let gap = legend_font * 0.5;
    let entry_width = |e: &Entry| swatch + gap + text_width(&e.label, legend_font);
    let mut right = pad + text_width("0000", font) / 2.0;
    let mut right_legend = None;
    let mut placed = Vec::new();
    let mut more = None;
    if entries.is_empty() {
        // No series, no legend.
    } else if w >= 400.0 {
        for e in &mut entries {
            e.label = fit(&e.label, legend_font, w * 0.3 - swatch - gap);
        }
        let width = entries.iter().map(entry_width).fold(0.0, f64::max);
        right = pad + width + font;
        // Placed below, once the plot area's height is known.
        right_legend = Some((w - pad - width, top + font * 0.5));
    } else {
        for e in &mut entries {
            e.label = fit(&e.label, legend_font, w - 2.0 * pad - swatch - gap);
        }
        let (mut x, mut row_index) = (pad, 0);
        let total = entries.len();
        for e in entries.drain(..) {
            let ew = entry_width(&e);
            if x > pad && x + ew > w - pad {
                row_index += 1;
                x = pad;
            }
            if row_index == MAX_TOP_ROWS {
                // No room: the last entry placed gives way to the count of those left.
                let (_, lx, ly) = placed.pop().expect("a full row has an entry");
                more = Some((lx, ly, total - placed.len()));
                break;
            }
            placed.push((e, x, top + row_index as f64 * row));
            x += ew + legend_font;
        }
        top += (row_index.min(MAX_TOP_ROWS - 1) + 1) as f64 * row;
    }
    top += font * 0.6;

    let bottom = tick + font * 1.4 + label * 1.3 + pad;
    let y0 = top;
    let y1 = (h - bottom).max(y0 + 10.0);
    if let Some((x, y)) = right_legend {
        // As many rows as the plot's height holds; the last says how many are left.
        let fit = (((y1 - y) / row).floor() as usize).max(1);
        let total = entries.len();
        let shown = if total > fit { fit - 1 } else { total };
        placed = entries
            .drain(..)
            .take(shown)
            .enumerate()
            .map(|(i, e)| (e, x, y + i as f64 * row))
            .collect();
        if shown < total {
            more = Some((x, y + shown as f64 * row, total - shown));
        }
    }
    let yt = scale::ticks(
        ymin,
        ymax,
        ((y1 - y0) / (font * 4.0)).clamp(2.0, 10.0) as usize,
        false,
    );
    let ylabels = yt
        .values()
        .map(|v| text_width(&yt.label(v), font))
        .fold(0.0, f64::max);
    let x0 = pad + label * 1.2 + font * 0.5 + ylabels + tick + font * 0.3;
    let x1 = (w - right).max(x0 + 10.0);
    let xt = scale::ticks(
        xmin,
        xmax,
        ((x1 - x0) / (font * 7.0)).clamp(2.0, 10.0) as usize,
        integer_x,
    );
    // Points keep a little distance from the frame, so markers on the edge stay whole.
    let inset = font * 0.5;
    let xs = Linear {
        d0: xt.lo,
        d1: xt.hi,
        r0: x0 + inset,
        r1: x1 - inset,
    };
    let ys = Linear {
        d0: yt.lo,
        d1: yt.hi,
        r0: y1 - inset,
        r1: y0 + inset,
    };
    Layout {
        w,
        h,
        font,
        title,
        label,
        legend_font,
        tick,
        line,
        x0,
        x1,
        y0,
        y1,
        xt,
        yt,
        xs,
        ys,
        entries: placed,
        more,
        row,
        swatch,
    }
}
