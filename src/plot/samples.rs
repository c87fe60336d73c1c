//! A dataset's samples as a PNG: a row per class, its name then a few of its images, so
//! that whoever uploaded it sees at once whether the classes are what they meant.
//!
//! The class names are drawn as SVG text by resvg with the embedded font (as the curves
//! are: a host's fonts never matter), the images are copied in pixel by pixel, scaled
//! with nearest neighbours so that an 8x8 digit is still its 64 pixels, only larger.

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg;

use super::PlotError;
use super::text::{fit, push_text};

/// Width of the class-name column.
const LABEL_WIDTH: u32 = 160;
const GAP: u32 = 4;
/// Rows drawn at most (a dataset may have up to 256 classes).
pub const MAX_ROWS: usize = 100;

/// The side an image is drawn at: small images grow by a whole factor to about 48
/// pixels, large ones shrink to 64.
fn tile(h: usize, w: usize) -> (u32, u32) {
    let side = h.max(w).max(1);
    let (num, den) = if side <= 48 {
        (48 / side, 1)
    } else {
        (64, side)
    };
    let scale = |v: usize| ((v * num / den).max(1)) as u32;
    (scale(h), scale(w))
}

/// The picture of `samples` (`(label, CHW pixels)`, in label order) of a dataset of
/// `class_names` and `(channels, height, width)` images, `per_class` columns wide.
pub fn png(
    class_names: &[String],
    samples: &[(u8, Vec<u8>)],
    (channels, h, w): (usize, usize, usize),
    per_class: usize,
) -> Result<Vec<u8>, PlotError> {
    let rows = class_names.len().clamp(1, MAX_ROWS);
    let (th, tw) = tile(h, w);
    let width = LABEL_WIDTH + per_class as u32 * (tw + GAP) + GAP;
    let height = rows as u32 * (th + GAP) + GAP;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"><rect width="100%" height="100%" fill="white"/>"#
    );
    let size = 13.0_f64.min(th as f64);
    for (row, name) in class_names.iter().take(rows).enumerate() {
        let y = GAP as f64 + row as f64 * (th + GAP) as f64 + th as f64 / 2.0 + size / 3.0;
        svg.push_str(&format!(
            r#"<text x="6" y="{y:.1}" font-size="{size}" fill="black">"#
        ));
        push_text(
            &mut svg,
            &fit(&format!("{row}: {name}"), size, LABEL_WIDTH as f64 - 10.0),
        );
        svg.push_str("</text>");
    }
    svg.push_str("</svg>");
    let tree = usvg::Tree::from_str(&svg, super::png::options())
        .map_err(|e| PlotError::Svg(e.to_string()))?;
    let mut pixmap = Pixmap::new(width, height).ok_or(PlotError::Size { width, height })?;
    resvg::render(&tree, Transform::identity(), &mut pixmap.as_mut());

    let plane = h * w;
    let mut column = vec![0usize; rows];
    for (label, px) in samples {
        let row = *label as usize;
        if row >= rows || column[row] >= per_class || px.len() != channels * plane {
            continue;
        }
        let x0 = LABEL_WIDTH + column[row] as u32 * (tw + GAP);
        let y0 = GAP + row as u32 * (th + GAP);
        column[row] += 1;
        let data = pixmap.data_mut();
        for ty in 0..th {
            let sy = ty as usize * h / th as usize;
            for tx in 0..tw {
                let sx = tx as usize * w / tw as usize;
                let at = sy * w + sx;
                let (r, g, b) = if channels == 3 {
                    (px[at], px[plane + at], px[2 * plane + at])
                } else {
                    (px[at], px[at], px[at])
                };
                let o = (((y0 + ty) * width + x0 + tx) * 4) as usize;
                data[o..o + 4].copy_from_slice(&[r, g, b, 255]);
            }
        }
    }
    pixmap
        .encode_png()
        .map_err(|e| PlotError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_gets_a_row_and_its_images_keep_their_pixels() {
        let names = vec!["zero".to_string(), "<one>".to_string()];
        // 2x2 RGB images: class 0 pure red, class 1 pure blue.
        let red = vec![255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0];
        let blue = vec![0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255];
        let samples = vec![(0, red.clone()), (0, red), (1, blue)];
        let png = png(&names, &samples, (3, 2, 2), 4).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let (th, tw) = tile(2, 2);
        assert_eq!((th, tw), (48, 48));
        assert_eq!(img.width(), LABEL_WIDTH + 4 * (tw + GAP) + GAP);
        assert_eq!(img.height(), 2 * (th + GAP) + GAP);
        let at = |col: u32, row: u32| {
            let x = LABEL_WIDTH + col * (tw + GAP) + tw / 2;
            let y = GAP + row * (th + GAP) + th / 2;
            img.get_pixel(x, y).0
        };
        assert_eq!(at(0, 0), [255, 0, 0]);
        assert_eq!(at(1, 0), [255, 0, 0]);
        assert_eq!(at(2, 0), [255, 255, 255], "two samples of class 0 only");
        assert_eq!(at(0, 1), [0, 0, 255]);
        // The names were drawn: the label column is not blank.
        let dark = (0..LABEL_WIDTH)
            .flat_map(|x| (0..img.height()).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 128)
            .count();
        assert!(dark > 20, "{dark}");
    }
}
