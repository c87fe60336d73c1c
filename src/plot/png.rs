//! The chart as PNG: the SVG of [`super::svg`], rasterised with resvg.
//!
//! Rasterising our own SVG (instead of drawing the chart a second time with a raster
//! library) keeps one layout for both formats. Text needs a font, and a server should
//! not depend on what fonts its host happens to have (a slim container has none), so
//! DejaVu Sans is compiled into the binary and is the only font resvg sees: the
//! database never scans the system, and the generic `sans-serif` as well as the default
//! family both resolve to it.

use std::sync::{Arc, OnceLock};

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{self, fontdb};

use super::{Chart, MAX_SIZE, MIN_SIZE, PlotError};

/// DejaVu Sans 2.37 (Bitstream Vera licence; see `assets/fonts/README.md`).
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The parsing options, with the font database, built once: loading the font parses its
/// tables, which is worth doing once per process rather than once per picture.
pub(super) fn options() -> &'static usvg::Options<'static> {
    static OPTIONS: OnceLock<usvg::Options<'static>> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let mut db = fontdb::Database::new();
        db.load_font_data(DEJAVU_SANS.to_vec());
        db.set_sans_serif_family("DejaVu Sans");
        db.set_serif_family("DejaVu Sans");
        db.set_monospace_family("DejaVu Sans");
        db.set_cursive_family("DejaVu Sans");
        db.set_fantasy_family("DejaVu Sans");
        usvg::Options {
            font_family: "DejaVu Sans".into(),
            fontdb: Arc::new(db),
            ..usvg::Options::default()
        }
    })
}

/// The chart as a PNG of exactly `width` x `height` pixels, each within
/// [`MIN_SIZE`]..=[`MAX_SIZE`].
pub fn png(chart: &Chart, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    let ok = |v: u32| (MIN_SIZE..=MAX_SIZE).contains(&v);
    if !ok(width) || !ok(height) {
        return Err(PlotError::Size { width, height });
    }
    let text = super::svg(chart, width, height);
    let tree = usvg::Tree::from_str(&text, options()).map_err(|e| PlotError::Svg(e.to_string()))?;
    let mut pixmap = Pixmap::new(width, height).ok_or(PlotError::Size { width, height })?;
    resvg::render(&tree, Transform::identity(), &mut pixmap.as_mut());
    pixmap
        .encode_png()
        .map_err(|e| PlotError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::tests::epochs;
    use crate::plot::{DEFAULT_HEIGHT, DEFAULT_WIDTH, LineStyle, Metric, Run, Series, chart};

    fn decode(bytes: &[u8]) -> image::RgbImage {
        image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8()
    }

    fn dark(p: &image::Rgb<u8>) -> bool {
        p.0.iter().all(|c| *c < 100)
    }

    /// Near the palette's first colour, #0072B2.
    fn blue(p: &image::Rgb<u8>) -> bool {
        let [r, g, b] = p.0;
        r < 60 && (84..=150).contains(&g) && b > 150
    }

    #[test]
    fn png_decodes_at_the_asked_size_and_is_not_blank() {
        for (n, w, h) in [
            (1, 800, 500),
            (1000, 800, 500),
            (5, 200, 200),
            (1000, 1234, 567),
        ] {
            let e = epochs(n, 0.5, true, true);
            let c = chart(
                "run",
                &[Run {
                    name: "a",
                    epochs: &e,
                }],
                Metric::Loss,
            );
            let img = decode(&png(&c, w, h).unwrap());
            assert_eq!(img.dimensions(), (w, h), "{n} epochs");
            let dark = img.pixels().filter(|p| dark(p)).count();
            let blue = img.pixels().filter(|p| blue(p)).count();
            // Text and axes; a line (or, for one epoch, a marker and the legend's swatch).
            assert!(dark > 200, "{n} epochs, {w}x{h}: {dark} dark pixels");
            assert!(blue > 30, "{n} epochs, {w}x{h}: {blue} blue pixels");
            // The background is white.
            assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
        }
    }

    #[test]
    fn png_draws_text_with_the_embedded_font() {
        // Nothing but the title is drawn in the top 30 rows of a default-size picture:
        // dark pixels there are glyphs, which need a font.
        let e = epochs(3, 0.5, false, false);
        let c = chart(
            "Title text",
            &[Run {
                name: "a",
                epochs: &e,
            }],
            Metric::Loss,
        );
        let img = decode(&png(&c, DEFAULT_WIDTH, DEFAULT_HEIGHT).unwrap());
        let glyphs = (0..DEFAULT_WIDTH)
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| dark(img.get_pixel(x, y)))
            .count();
        assert!(glyphs > 50, "{glyphs} dark pixels in the title band");
        let untitled = Chart {
            title: String::new(),
            ..c
        };
        let img = decode(&png(&untitled, DEFAULT_WIDTH, DEFAULT_HEIGHT).unwrap());
        let none = (0..DEFAULT_WIDTH)
            .flat_map(|x| (0..10).map(move |y| (x, y)))
            .filter(|&(x, y)| dark(img.get_pixel(x, y)))
            .count();
        assert_eq!(none, 0);
    }

    #[test]
    fn png_of_an_empty_chart_or_non_finite_points_renders() {
        let empty = chart("none", &[], Metric::Accuracy);
        assert_eq!(
            decode(&png(&empty, 400, 300).unwrap()).dimensions(),
            (400, 300)
        );
        let nan = Chart {
            series: vec![Series {
                name: "train".into(),
                group: 2,
                style: LineStyle::Dashed,
                points: vec![(1.0, f64::NAN), (2.0, f64::INFINITY), (3.0, 1.0)],
            }],
            ..empty
        };
        assert_eq!(
            decode(&png(&nan, 400, 300).unwrap()).dimensions(),
            (400, 300)
        );
    }

    #[test]
    fn png_refuses_sizes_outside_the_limits() {
        let c = chart("t", &[], Metric::Loss);
        for (w, h) in [(MIN_SIZE - 1, 500), (800, MAX_SIZE + 1), (0, 0)] {
            assert!(
                matches!(png(&c, w, h), Err(PlotError::Size { .. })),
                "{w}x{h}"
            );
        }
        assert!(png(&c, MIN_SIZE, MIN_SIZE).is_ok());
    }

    /// Timings of 1 and 8 runs of 1,000 epochs, printed (not asserted): run with
    /// `cargo test --lib plot::png::tests::timings -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timings() {
        let runs: Vec<(String, Vec<_>)> = (0..8)
            .map(|i| {
                (
                    format!("run-{i}"),
                    epochs(1000, 0.1 + i as f64 * 0.2, true, true),
                )
            })
            .collect();
        let runs: Vec<Run> = runs
            .iter()
            .map(|(name, e)| Run { name, epochs: e })
            .collect();
        let _ = png(&chart("warm-up", &runs[..1], Metric::Loss), 800, 500).unwrap();
        for n in [1, 8] {
            let c = chart("timing", &runs[..n], Metric::Loss);
            let reps = 20;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                std::hint::black_box(crate::plot::svg(&c, 800, 500));
            }
            let svg_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(reps);
            let t = std::time::Instant::now();
            for _ in 0..5 {
                std::hint::black_box(png(&c, 800, 500).unwrap());
            }
            let png_ms = t.elapsed().as_secs_f64() * 1000.0 / 5.0;
            let big = std::time::Instant::now();
            std::hint::black_box(png(&c, 4000, 4000).unwrap());
            println!(
                "{n} x 1000 epochs ({} series): svg {svg_ms:.2} ms, png 800x500 {png_ms:.1} ms, png 4000x4000 {:.0} ms",
                c.series.len(),
                big.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}
