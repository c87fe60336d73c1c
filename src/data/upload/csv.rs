//! CSV uploads: one sample per row, the label first, then the pixels as integers
//! 0..=255 (the layout of Kaggle's `mnist_train.csv` and of `np.savetxt` on
//! `np.c_[labels, images.reshape(n, -1)]`). With 3 channels the pixels are HWC-interleaved,
//! as numpy's `img.reshape(-1)` writes them, and stored as CHW planes.
//!
//! The file is streamed line by line, each line read through a bound (the longest a
//! legitimate row can be), so a 4 GiB file without newlines costs a bounded buffer, not
//! 4 GiB. An optional header row is recognised by its first field not being a number,
//! as pandas users write it (`label,pixel0,...`). Values written as floats that are whole
//! (`np.savetxt`'s default `%.18e` writes `1.000000000000000000e+00`) are accepted:
//! refusing them would refuse the most common way of writing such a file. The pixel
//! count gives the size when it is a square; otherwise [`super::Options::size`] must
//! say it (nothing is resized: the size is the shape of the values).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::split;
use super::{Decoded, Format, Options, UploadError};
use crate::data::mnist::Split;

/// Rows as read: pixels CHW, labels, and each sample's line number for error messages.
struct Rows {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    lines: Vec<u64>,
}

/// The shape every row must have, set by the first data row of the train file.
#[derive(Clone, Copy)]
struct Shape {
    channels: usize,
    height: usize,
    width: usize,
}

impl Shape {
    fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }
}

fn bad(at: String, detail: impl Into<String>) -> UploadError {
    UploadError::BadCsv {
        at,
        detail: detail.into(),
    }
}

/// A value: an integer, or a float with no fractional part, in 0..=255.
fn value(text: &str) -> Option<u8> {
    let t = text.trim().trim_matches('"').trim();
    t.parse::<u8>().ok().or_else(|| {
        let f: f64 = t.parse().ok()?;
        (f.fract() == 0.0 && (0.0..=255.0).contains(&f)).then_some(f as u8)
    })
}

/// Whether `text` is a number at all (so a first row starting with one is data).
fn numeric(text: &str) -> bool {
    let t = text.trim().trim_matches('"').trim();
    t.parse::<f64>().is_ok()
}

/// The size a row of `pixels` values has without the size option: a square.
fn square(
    pixels: usize,
    channels: usize,
    max_side: usize,
    at: String,
) -> Result<Shape, UploadError> {
    let per_plane = pixels / channels;
    let side = per_plane.isqrt();
    if pixels == 0 {
        return Err(bad(at, "the row has a label but no pixel values"));
    }
    if !pixels.is_multiple_of(channels) || side * side != per_plane {
        return Err(UploadError::SizeRequired {
            at,
            detail: format!(
                "{pixels} pixel values with {channels} channel(s) are not a square image; pass \
                 the size option (height and width) to say how to read them"
            ),
        });
    }
    if side > max_side {
        return Err(UploadError::SizeRequired {
            at,
            detail: format!(
                "{pixels} pixel values make {side}x{side} images, larger than the \
                 {max_side}x{max_side} stored at most"
            ),
        });
    }
    Ok(Shape {
        channels,
        height: side,
        width: side,
    })
}

fn read(
    path: &Path,
    part: &str,
    shape: &mut Option<Shape>,
    n_before: usize,
    opts: &Options,
) -> Result<Rows, UploadError> {
    let limits = &opts.limits;
    let channels = opts.channels.unwrap_or(1);
    let file = File::open(path).map_err(|source| UploadError::Io {
        at: part.to_string(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    // The longest legitimate line: label and pixels at 25 characters each (`%.18e`).
    let max_line = (1 + 3 * limits.max_side * limits.max_side) as u64 * 26 + 1024;
    let mut rows = Rows {
        pixels: Vec::new(),
        labels: Vec::new(),
        lines: Vec::new(),
    };
    let mut line = Vec::new();
    let mut row = Vec::new();
    let mut number: u64 = 0;
    let mut first = true;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(max_line + 1)
            .read_until(b'\n', &mut line)
            .map_err(|source| UploadError::Io {
                at: part.to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
        number += 1;
        let at_line = || format!("{part}, line {number}");
        if line.len() as u64 > max_line {
            return Err(UploadError::TooLarge {
                at: at_line(),
                detail: format!(
                    "the line is longer than {}, more than any image of at most {m}x{m} pixels \
                     needs",
                    super::human_bytes(max_line),
                    m = limits.max_side
                ),
            });
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            return Err(bad(at_line(), "the line is not UTF-8 text"));
        };
        let text = text.trim_end_matches(['\n', '\r']);
        let text = if number == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split(',').collect();
        if std::mem::take(&mut first) && !numeric(fields[0]) {
            continue; // a header row
        }
        let shape = match shape {
            Some(s) => *s,
            None => {
                let pixels = fields.len() - 1;
                let s = match opts.size {
                    Some((height, width)) => Shape {
                        channels,
                        height,
                        width,
                    },
                    None => square(pixels, channels, limits.max_side, at_line())?,
                };
                *shape = Some(s);
                s
            }
        };
        if fields.len() != 1 + shape.pixels() {
            let hint = if fields.len() == 1 && (text.contains(';') || text.contains('\t')) {
                "; values must be separated by commas"
            } else {
                ""
            };
            return Err(bad(
                at_line(),
                format!(
                    "{} fields, but rows must have {} (the label, then {} pixel values for \
                     {}x{} images with {} channel(s)){hint}",
                    fields.len(),
                    1 + shape.pixels(),
                    shape.pixels(),
                    shape.height,
                    shape.width,
                    shape.channels
                ),
            ));
        }
        let count = n_before + rows.labels.len() + 1;
        super::check_decoded(count, shape.pixels(), limits)?;
        let mut parsed = fields.iter().enumerate().map(|(i, f)| {
            value(f).ok_or_else(|| {
                let what = if i == 0 { "label" } else { "pixel value" };
                bad(
                    format!("{part}, line {number}, column {}", i + 1),
                    format!("`{}` is not a {what} (an integer 0 to 255)", f.trim()),
                )
            })
        });
        let label = parsed.next().unwrap_or(Ok(0))?;
        row.clear();
        for v in parsed {
            row.push(v?);
        }
        let start = rows.pixels.len();
        rows.pixels.resize(start + shape.pixels(), 0);
        super::hwc_to_chw(
            &row,
            shape.channels,
            shape.channels,
            None,
            &mut rows.pixels[start..],
        );
        rows.labels.push(label);
        rows.lines.push(number);
    }
    if rows.labels.is_empty() {
        return Err(bad(part.to_string(), "the file has no data rows"));
    }
    rows.pixels.shrink_to_fit();
    Ok(rows)
}

pub(crate) fn decode(
    train: &Path,
    test: Option<&Path>,
    opts: &Options,
) -> Result<Decoded, UploadError> {
    let mut shape = None;
    let train = read(train, "train", &mut shape, 0, opts)?;
    let test = test
        .map(|t| read(t, "test", &mut shape, train.labels.len(), opts))
        .transpose()?;
    let Some(shape) = shape else {
        return Err(bad("train".into(), "the file has no data rows"));
    };
    let no_rows = Rows {
        pixels: Vec::new(),
        labels: Vec::new(),
        lines: Vec::new(),
    };
    let test_rows = test.as_ref().unwrap_or(&no_rows);
    let class_names = super::label_classes(
        &train.labels,
        &test_rows.labels,
        opts,
        "train",
        &|i| format!("train, line {}, column 1", train.lines[i]),
        &|i| format!("test, line {}, column 1", test_rows.lines[i]),
    )?;
    let to_split = |rows: Rows| Split {
        len: rows.labels.len(),
        images: rows.pixels,
        labels: rows.labels,
        channels: shape.channels,
        rows: shape.height,
        cols: shape.width,
    };
    let (train, test, test_split) = split::test_split(to_split(train), test.map(to_split), opts);
    Ok(Decoded {
        train,
        test,
        class_names,
        format: Format::Csv,
        test_split,
        resized: 0,
    })
}
