//! Uploaded datasets: an archive of class folders, a pair (or two) of IDX files, or CSV,
//! already spooled to files on disk, decoded into the same [`Split`]s the built-in
//! datasets use.
//!
//! **Pure and synchronous.** Nothing here touches the database or HTTP: the caller
//! spools the upload to temporary files, calls [`decode`] (on a blocking thread: this is
//! CPU work), and stores the [`Decoded`] under its content address ([`Decoded::sha256`]).
//! Keeping the decoder free of I/O other than reading the given files makes every
//! hostile case testable with archives built in memory.
//!
//! **Every byte is hostile.** Each failure is a [`UploadError`] variant that says what
//! went wrong and where (the member path inside the archive, the multipart part, the CSV
//! line and column), with a stable [`UploadError::kind`] slug the HTTP layer maps to a
//! status. Memory is bounded by [`Limits`], checked *before* the allocation they guard:
//! archive members are read into buffers through `take(limit + 1)` whatever their headers
//! declare, sample counts and decoded sizes are checked from headers (IDX dims, a survey
//! of the archive's image headers) before the output is allocated, and nothing is ever
//! extracted to disk. Nothing panics on bad input; image decoders, which might, run
//! behind [`crate::data::image`]'s panic guard.
//!
//! **What users of torchvision's `ImageFolder` and Keras's `image_dataset_from_directory`
//! expect** decides the layout rules (see [`folders`]): class = first folder, classes
//! sorted as Python sorts strings, hidden files and other extensions ignored, images
//! shuffled with a seed. Where those tools guess (e.g. silently skipping a nested zip),
//! this module refuses with an error instead, because a dataset that trains on less than
//! the user thinks it does is worse than an upload that fails loudly.

mod archive;
mod csv;
mod error;
mod folders;
mod idx_pair;
mod split;
#[cfg(test)]
mod tests;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use error::UploadError;
pub use split::SplitMix64;

use super::mnist::Split;

/// Bounds on what one upload may cost. Every one is checked before the memory it guards
/// is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most samples, train and test together.
    pub max_samples: usize,
    /// Most classes (labels are u8, so never more than 256 whatever this says).
    pub max_classes: usize,
    /// Largest stored height or width; larger images need [`Options::size`].
    pub max_side: usize,
    /// Most stored pixel bytes, train and test together (`samples * c * h * w`).
    pub max_decoded_bytes: usize,
    /// Most bytes of one archive member or one image file, uncompressed.
    pub max_entry_bytes: usize,
    /// Most bytes of all archive members together, uncompressed (the zip-bomb guard).
    pub max_unpacked_bytes: u64,
    /// Most archive members (files and folders).
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_samples: 1_000_000,
            max_classes: 256,
            max_side: 256,
            max_decoded_bytes: 1 << 30,
            max_entry_bytes: 16 << 20,
            max_unpacked_bytes: 4 << 30,
            max_entries: 2_000_000,
        }
    }
}

impl Limits {
    /// Labels are u8: at most 256 classes whatever `max_classes` says.
    fn classes(&self) -> usize {
        self.max_classes.min(256)
    }
}

/// How to decode an upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Size every image is resized to, (height, width). Required when images differ in
    /// size, are larger than `max_side`, or (CSV) when the pixel count is not a square.
    /// For CSV it is the shape of the pixels (nothing is resized).
    pub size: Option<(usize, usize)>,
    /// 1 or 3; None = automatic: 3 if any image is colour (RGB/RGBA/colour palette),
    /// else 1. 1 converts colour with PIL's `convert("L")` arithmetic; 3 converts as
    /// PIL's `convert("RGB")` (gray replicated, alpha dropped). CSV defaults to 1.
    pub channels: Option<usize>,
    /// Held-out fraction when the upload has no test split; default 0.2. In (0, 1).
    pub test_fraction: f64,
    /// Seed of the stratified hold-out and of the class-folder sample order.
    pub seed: u64,
    /// Class names for IDX/CSV uploads (labels index them); None = "0".."K-1",
    /// K = max train label + 1. Class folders name their own classes.
    pub class_names: Option<Vec<String>>,
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size: None,
            channels: None,
            test_fraction: 0.2,
            seed: 0,
            class_names: None,
            limits: Limits::default(),
        }
    }
}

/// The files of an upload, already on disk.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A zip, tar or tar.gz (.tgz) of class folders; the kind is sniffed from the
    /// content (magic bytes), not the name.
    Archive(&'a Path),
    /// IDX files, each raw or gzip (sniffed). Test pair optional (both or neither).
    Idx {
        train_images: &'a Path,
        train_labels: &'a Path,
        test_images: Option<&'a Path>,
        test_labels: Option<&'a Path>,
    },
    /// CSV: first column the label, the rest pixels. Optional separate test file.
    Csv {
        train: &'a Path,
        test: Option<&'a Path>,
    },
}

/// The layout an upload came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Folders,
    Idx,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Folders => "folders",
            Format::Idx => "idx",
            Format::Csv => "csv",
        }
    }
}

/// Where the test split came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TestSplit {
    /// The upload had one (`test/` folder, test IDX pair, test CSV).
    Uploaded,
    /// Held out of the uploaded samples, stratified by class (see [`split::holdout`]).
    HeldOut { fraction: f64, seed: u64 },
}

/// A decoded upload.
#[derive(Debug)]
pub struct Decoded {
    pub train: Split,
    pub test: Split,
    /// Indexed by label.
    pub class_names: Vec<String>,
    pub format: Format,
    pub test_split: TestSplit,
    /// How many images were resized to `size` (0 when all already had it).
    pub resized: usize,
}

/// The tag that starts the hashed content; bump it if the hashed layout ever changes.
const SHA_TAG: &[u8] = b"trainyard-dataset-v1";

impl Decoded {
    /// Content address: lowercase hex SHA-256 over a header ([`SHA_TAG`], then channels,
    /// height, width, train len, test len as u64 LE) then train images, train labels,
    /// test images, test labels.
    ///
    /// Class names are not hashed: they are presentation, and renaming a class should not
    /// make the same pixels and labels a different dataset (the caller stores the names
    /// next to the content). The shape is hashed so that the same bytes read as 1x28x28
    /// and 1x14x56 are different datasets.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        h.update(SHA_TAG);
        for n in [
            self.train.channels,
            self.train.rows,
            self.train.cols,
            self.train.len,
            self.test.len,
        ] {
            h.update((n as u64).to_le_bytes());
        }
        h.update(&self.train.images);
        h.update(&self.train.labels);
        h.update(&self.test.images);
        h.update(&self.test.labels);
        hex::encode(h.finalize())
    }

    /// Samples per class in (train, test), indexed by label.
    pub fn class_counts(&self) -> (Vec<usize>, Vec<usize>) {
        let count = |labels: &[u8]| {
            let mut counts = vec![0; self.class_names.len()];
            for &l in labels {
                if let Some(c) = counts.get_mut(l as usize) {
                    *c += 1;
                }
            }
            counts
        };
        (count(&self.train.labels), count(&self.test.labels))
    }
}

/// Decodes an upload. See the module documentation for the rules.
pub fn decode(input: Input<'_>, opts: &Options) -> Result<Decoded, UploadError> {
    check_options(opts)?;
    match input {
        Input::Archive(path) => {
            if opts.class_names.is_some() {
                return Err(UploadError::BadOption {
                    option: "class_names",
                    detail: "class folders name their own classes; class_names applies to \
                             IDX and CSV uploads"
                        .into(),
                });
            }
            folders::decode(path, opts)
        }
        Input::Idx {
            train_images,
            train_labels,
            test_images,
            test_labels,
        } => {
            let test = match (test_images, test_labels) {
                (Some(i), Some(l)) => Some((i, l)),
                (None, None) => None,
                (Some(_), None) => return Err(missing_part("test_labels", "test_images")),
                (None, Some(_)) => return Err(missing_part("test_images", "test_labels")),
            };
            idx_pair::decode((train_images, train_labels), test, opts)
        }
        Input::Csv { train, test } => csv::decode(train, test, opts),
    }
}

fn missing_part(missing: &str, given: &str) -> UploadError {
    UploadError::MissingPart {
        at: missing.into(),
        detail: format!("{given} was sent without {missing}; send both or neither"),
    }
}

fn check_options(opts: &Options) -> Result<(), UploadError> {
    let bad = |option, detail: String| Err(UploadError::BadOption { option, detail });
    let max_side = opts.limits.max_side;
    if let Some((h, w)) = opts.size
        && (h == 0 || w == 0 || h > max_side || w > max_side)
    {
        return bad(
            "size",
            format!("{h}x{w} is not a stored size: height and width must be 1 to {max_side}"),
        );
    }
    if let Some(c) = opts.channels
        && c != 1
        && c != 3
    {
        return bad(
            "channels",
            format!("{c}: channels must be 1 (grayscale) or 3 (RGB)"),
        );
    }
    let f = opts.test_fraction;
    if !(f > 0.0 && f < 1.0) {
        return bad(
            "test_fraction",
            format!("{f}: the held-out fraction must be above 0 and below 1"),
        );
    }
    if let Some(names) = &opts.class_names {
        let max = opts.limits.classes();
        if names.len() > max {
            return Err(UploadError::TooManyClasses {
                count: names.len(),
                limit: max,
            });
        }
        if names.len() < 2 {
            return bad(
                "class_names",
                format!(
                    "{} name(s) given; a classifier needs at least 2 classes",
                    names.len()
                ),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for n in names {
            if n.trim().is_empty() {
                return bad("class_names", "a class name is empty".into());
            }
            if !seen.insert(n.as_str()) {
                return bad("class_names", format!("`{n}` is named twice"));
            }
        }
    }
    Ok(())
}

/// Checks `n` samples of `sample` bytes each against `max_samples` and
/// `max_decoded_bytes`, before the output is allocated.
pub(crate) fn check_decoded(n: usize, sample: usize, limits: &Limits) -> Result<(), UploadError> {
    if n > limits.max_samples {
        return Err(UploadError::TooManySamples {
            count: n.to_string(),
            limit: limits.max_samples,
        });
    }
    match n.checked_mul(sample) {
        Some(total) if total <= limits.max_decoded_bytes => Ok(()),
        total => Err(UploadError::DatasetTooLarge {
            bytes: total.map(|t| t as u64),
            limit: limits.max_decoded_bytes,
        }),
    }
}

/// One image of `c_in` interleaved channels (HWC, as IDX and numpy store them) to
/// `c_out` planes (CHW) in `out`, converting as PIL does (gray replicated, colour to
/// luma), then resized plane by plane when `resizer` is given.
pub(crate) fn hwc_to_chw(
    src: &[u8],
    c_in: usize,
    c_out: usize,
    resizer: Option<&crate::data::resize::Resizer>,
    out: &mut [u8],
) {
    let n = src.len() / c_in;
    let mut planes = Vec::new();
    let target: &mut [u8] = match resizer {
        Some(_) => {
            planes = vec![0; n * c_out];
            &mut planes
        }
        None => &mut *out,
    };
    match (c_in, c_out) {
        (1, _) => {
            for plane in target.chunks_exact_mut(n) {
                plane.copy_from_slice(src);
            }
        }
        (_, 1) => {
            for (p, px) in target.iter_mut().zip(src.chunks_exact(c_in)) {
                *p = crate::data::image::luma(px[0], px[1], px[2]);
            }
        }
        _ => {
            for (i, px) in src.chunks_exact(c_in).enumerate() {
                for (c, &v) in px.iter().take(c_out).enumerate() {
                    target[c * n + i] = v;
                }
            }
        }
    }
    if let Some(resizer) = resizer {
        let m = resizer.output_len();
        for (src, dst) in planes.chunks_exact(n).zip(out.chunks_exact_mut(m)) {
            resizer.resize(src, dst);
        }
    }
}

/// `n` bytes for a person: "9 GiB", "16 MiB", "300 KiB", "17 bytes" (rounded down
/// except below 10 units, where one decimal shows).
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if n >= size {
            let whole = n / size;
            let tenth = (n % size) * 10 / size;
            return if whole < 10 && tenth > 0 {
                format!("{whole}.{tenth} {unit}")
            } else {
                format!("{whole} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

/// Labels, class names and the class count, shared by IDX and CSV: class names given
/// are checked against the labels, else made "0".."K-1" from the train labels, and
/// every class then needs a train sample.
pub(crate) fn label_classes(
    train: &[u8],
    test: &[u8],
    opts: &Options,
    train_part: &str,
    where_train: &dyn Fn(usize) -> String,
    where_test: &dyn Fn(usize) -> String,
) -> Result<Vec<String>, UploadError> {
    let names = match &opts.class_names {
        Some(names) => names.clone(),
        None => {
            let k = train.iter().max().map_or(0, |&m| m as usize + 1);
            if k > opts.limits.classes() {
                return Err(UploadError::TooManyClasses {
                    count: k,
                    limit: opts.limits.classes(),
                });
            }
            (0..k).map(|i| i.to_string()).collect()
        }
    };
    let k = names.len();
    for (labels, at) in [(train, where_train), (test, where_test)] {
        if let Some(i) = labels.iter().position(|&l| l as usize >= k) {
            return Err(UploadError::LabelOutOfRange {
                at: at(i),
                sample: i,
                label: labels[i],
                classes: k,
            });
        }
    }
    if opts.class_names.is_none() {
        let mut counts = vec![0usize; k];
        for &l in train {
            counts[l as usize] += 1;
        }
        if k < 2 {
            return Err(UploadError::SingleClass {
                classes: names.clone(),
            });
        }
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            return Err(UploadError::EmptyClass {
                at: train_part.to_string(),
                class: c.to_string(),
                detail: format!(
                    "no training sample has label {c}, yet labels go up to {}: labels must \
                     run from 0 without gaps, or pass class_names",
                    k - 1
                ),
            });
        }
    }
    Ok(names)
}
