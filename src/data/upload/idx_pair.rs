//! IDX uploads: images `[n, h, w]` (idx3) or `[n, h, w, c]` with c = 1 or 3 (idx4, HWC
//! as numpy writes it), labels `[n]`, each file raw or gzipped (sniffed, as in
//! [`crate::data::idx`]).
//!
//! The header is read on its own first, so the sample count and the size it declares are
//! checked against the limits before the data is read; the data is then read with
//! `idx::decompressed_bytes` bounded by exactly what the header declares (at most
//! `max_decoded_bytes` of pixels: an IDX upload may be resized down, so its raw pixels
//! may be larger than what is stored, but not without bound). File order is kept.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use super::split;
use super::{Decoded, Format, Options, UploadError};
use crate::data::idx;
use crate::data::mnist::Split;
use crate::data::resize::Resizer;

/// The shape an IDX header declares.
#[derive(Debug, Clone, Copy)]
struct Head {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    header_len: usize,
}

fn bad(at: &str, detail: impl Into<String>) -> UploadError {
    UploadError::BadIdx {
        at: at.to_string(),
        detail: detail.into(),
    }
}

fn stream_error(at: &str, e: io::Error) -> UploadError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => UploadError::Truncated {
            at: at.to_string(),
            detail: "the file ends inside its IDX header".into(),
        },
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => UploadError::Io {
            at: at.to_string(),
            source: e,
        },
        _ => bad(at, format!("the gzip stream is damaged: {e}")),
    }
}

fn open(path: &Path, at: &str) -> Result<BufReader<File>, UploadError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 16, f))
        .map_err(|source| UploadError::Io {
            at: at.to_string(),
            source,
        })
}

/// Reads and checks the header of the IDX file at `path` (gunzipped if it is gzip).
/// `images`: `[n, h, w]` or `[n, h, w, c]`; else labels, `[n]`.
fn head(path: &Path, at: &str, images: bool, opts: &Options) -> Result<Head, UploadError> {
    let mut file = open(path, at)?;
    let gz = file
        .fill_buf()
        .map_err(|e| stream_error(at, e))?
        .starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|e| stream_error(at, e))?;
    if magic[0] != 0 || magic[1] != 0 || magic[3] == 0 || magic[3] > 4 {
        return Err(bad(
            at,
            format!(
                "not an IDX file: it starts with {magic:02x?}, not 00 00 08 <dims> (e.g. \
                 00 00 08 03 for u8 images)"
            ),
        ));
    }
    if magic[2] != 0x08 {
        return Err(bad(
            at,
            format!(
                "IDX data type 0x{:02x} is not supported: only unsigned bytes (0x08) are",
                magic[2]
            ),
        ));
    }
    let ndim = magic[3] as usize;
    let mut raw = vec![0u8; 4 * ndim];
    reader
        .read_exact(&mut raw)
        .map_err(|e| stream_error(at, e))?;
    let dims: Vec<usize> = raw
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let header_len = 4 + 4 * ndim;
    let head = match (images, dims.as_slice()) {
        (true, &[n, h, w]) => Head {
            n,
            h,
            w,
            c: 1,
            header_len,
        },
        (true, &[n, h, w, c]) if c == 1 || c == 3 => Head {
            n,
            h,
            w,
            c,
            header_len,
        },
        (true, _) => {
            return Err(bad(
                at,
                format!(
                    "dims {dims:?}: images must be [count, height, width] or [count, height, \
                     width, channels] with 1 or 3 channels"
                ),
            ));
        }
        (false, &[n]) => Head {
            n,
            h: 1,
            w: 1,
            c: 1,
            header_len,
        },
        (false, _) => {
            return Err(bad(at, format!("dims {dims:?}: labels must be [count]")));
        }
    };
    if images && (head.h == 0 || head.w == 0) {
        return Err(bad(at, format!("dims {dims:?}: images with no pixels")));
    }
    if head.n > opts.limits.max_samples {
        return Err(UploadError::TooManySamples {
            count: head.n.to_string(),
            limit: opts.limits.max_samples,
        });
    }
    let data = head.n.checked_mul(head.h * head.w * head.c);
    if data.is_none_or(|d| d > opts.limits.max_decoded_bytes) {
        return Err(UploadError::TooLarge {
            at: at.to_string(),
            detail: format!(
                "dims {dims:?} declare more than {} of pixels; at most that is accepted",
                super::human_bytes(opts.limits.max_decoded_bytes as u64)
            ),
        });
    }
    Ok(head)
}

/// Reads the whole IDX file (bounded by what `head` declares) and returns its data.
fn data(path: &Path, at: &str, head: &Head) -> Result<Vec<u8>, UploadError> {
    let limit = head.header_len + head.n * head.h * head.w * head.c;
    let bytes = match idx::decompressed_bytes(open(path, at)?, limit) {
        Ok(b) => b,
        Err(e) => {
            return Err(match e.downcast::<idx::IdxError>() {
                Ok(idx::IdxError::OverLimit { .. }) => bad(
                    at,
                    "more bytes follow the data its header declares; is this the right file?",
                ),
                Ok(other) => UploadError::idx(at, other),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => UploadError::Truncated {
                    at: at.to_string(),
                    detail: "the gzip stream ends early".into(),
                },
                Err(e) => bad(at, format!("the gzip stream is damaged: {e}")),
            });
        }
    };
    idx::parse_vec(bytes)
        .map(|a| a.data)
        .map_err(|e| UploadError::idx(at, e))
}

/// One images/labels pair, read and checked against each other.
struct Pair {
    head: Head,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

fn read_pair(
    parts: (&Path, &Path),
    names: (&str, &str),
    opts: &Options,
) -> Result<Pair, UploadError> {
    let head_i = head(parts.0, names.0, true, opts)?;
    let head_l = head(parts.1, names.1, false, opts)?;
    if head_i.n != head_l.n {
        return Err(UploadError::CountMismatch {
            at: names.0.to_string(),
            images: head_i.n,
            labels_at: names.1.to_string(),
            labels: head_l.n,
        });
    }
    let labels = data(parts.1, names.1, &head_l)?;
    let pixels = data(parts.0, names.0, &head_i)?;
    Ok(Pair {
        head: head_i,
        pixels,
        labels,
    })
}

/// The pair's images as stored: `channels` planes of `size`, resized when needed.
fn store(pair: Pair, channels: usize, size: (usize, usize)) -> (Split, usize) {
    let Head { n, h, w, c, .. } = pair.head;
    let same_size = (h, w) == size;
    let images = if c == 1 && channels == 1 && same_size {
        pair.pixels
    } else {
        let resizer = (!same_size).then(|| Resizer::new(h, w, size.0, size.1));
        let sample = channels * size.0 * size.1;
        let mut out = vec![0; n * sample];
        for (src, dst) in pair
            .pixels
            .chunks_exact(h * w * c)
            .zip(out.chunks_exact_mut(sample))
        {
            super::hwc_to_chw(src, c, channels, resizer.as_ref(), dst);
        }
        out
    };
    let split = Split {
        images,
        labels: pair.labels,
        len: n,
        channels,
        rows: size.0,
        cols: size.1,
    };
    (split, if same_size { 0 } else { n })
}

pub(crate) fn decode(
    train: (&Path, &Path),
    test: Option<(&Path, &Path)>,
    opts: &Options,
) -> Result<Decoded, UploadError> {
    let train = read_pair(train, ("train_images", "train_labels"), opts)?;
    let test = test
        .map(|parts| read_pair(parts, ("test_images", "test_labels"), opts))
        .transpose()?;
    let (th, tw) = (train.head.h, train.head.w);
    let size = match (opts.size, &test) {
        (Some(size), _) => size,
        (None, Some(t)) if (t.head.h, t.head.w) != (th, tw) => {
            return Err(UploadError::MixedSizes {
                first_at: "train_images".into(),
                first: (th, tw),
                at: "test_images".into(),
                second: (t.head.h, t.head.w),
            });
        }
        (None, _) => (th, tw),
    };
    let max = opts.limits.max_side;
    if size.0 > max || size.1 > max {
        return Err(UploadError::SizeRequired {
            at: "train_images".into(),
            detail: format!(
                "the images are {}x{} (height x width), larger than the {max}x{max} stored at \
                 most; pass the size option to resize them",
                size.0, size.1
            ),
        });
    }
    let channels = opts
        .channels
        .unwrap_or(train.head.c.max(test.as_ref().map_or(1, |t| t.head.c)));
    let n_test = test.as_ref().map_or(0, |t| t.head.n);
    super::check_decoded(
        train.head.n + n_test,
        channels * size.0 * size.1,
        &opts.limits,
    )?;

    let test_labels: &[u8] = test.as_ref().map_or(&[], |t| &t.labels);
    let class_names = super::label_classes(
        &train.labels,
        test_labels,
        opts,
        "train_labels",
        &|_| "train_labels".into(),
        &|_| "test_labels".into(),
    )?;

    let (train, mut resized) = store(train, channels, size);
    let test = test.map(|test| {
        let (test, r) = store(test, channels, size);
        resized += r;
        test
    });
    let (train, test, test_split) = split::test_split(train, test, opts);
    Ok(Decoded {
        train,
        test,
        class_names,
        format: Format::Idx,
        test_split,
        resized,
    })
}
