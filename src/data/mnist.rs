//! MNIST and Fashion-MNIST: locating, verifying and (optionally) downloading the IDX files.
//!
//! Each dataset is four IDX files (train/test images and labels) stored under
//! `DATA_DIR/<dataset>/`, e.g. `data/mnist/train-images-idx3-ubyte.gz`; each file may be
//! kept raw or gzipped (`<file>` or `<file>.gz`, the raw one is used when both exist). The
//! data folder is the caller's: the CLI's `--data-dir` (`$TRAINYARD_DATA_DIR`, default
//! `./data`), carried in a [`Source`].
//!
//! **Checksums are of the uncompressed content.** Every file is checked against a
//! SHA-256 pinned here before it is used, so a run trains on exactly the bytes that
//! every other run (and every published result) used. The hash is taken of the
//! *decompressed* IDX bytes, not of the `.gz`: the gzip wrapper (timestamp, compression
//! level, file name field) differs between mirrors and repackagings, e.g. Debian's
//! Fashion-MNIST `.gz` files are not the bytes Zalando published, while the content is
//! identical everywhere. Pinning the wrapper would reject good copies for no reason.
//!
//! **Downloading is optional.** Training machines, CI and air-gapped hosts often have no
//! internet, and a silent download in the middle of a job is a surprise, so a [`Source`]
//! says whether to download at all and from which mirrors. When a file is missing and
//! downloads are off (or every mirror fails), the error names the file, the full path to
//! put it at, and each mirror tried with its error. A download is verified (decompressed
//! and checksummed) *before* it is kept: it is written to a temporary file in the target
//! folder and renamed into place only once verified, so a bad mirror or an interrupted
//! transfer never leaves a file that looks valid.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::idx::{self, IdxError};
use crate::spec::{DataInfo, DatasetName};

/// Environment variable of the CLI's `--data-dir`, named where a missing file is reported.
const DATA_DIR_ENV: &str = "TRAINYARD_DATA_DIR";

/// Default mirrors for MNIST (base URLs; `<file>.gz` is appended).
pub const MNIST_MIRRORS: &[&str] = &[
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];

/// Default mirrors for Fashion-MNIST (Zalando's own bucket).
pub const FASHION_MNIST_MIRRORS: &[&str] =
    &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"];

/// Timeout to establish a connection to a mirror.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout for one read from a mirror that has stopped sending.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout for a whole request, body included (26 MB at a slow 100 kB/s fits).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Most bytes accepted from a mirror for one file (the largest `.gz` is about 26 MB).
const MAX_DOWNLOAD_BYTES: usize = 64 << 20;

/// Number of classes in both datasets; labels are `0..NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;

/// One of a dataset's four files, with what its uncompressed content must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// File name without `.gz`, e.g. `train-images-idx3-ubyte`.
    pub name: &'static str,
    /// SHA-256 of the uncompressed content, lowercase hex.
    pub sha256: &'static str,
    /// Length of the uncompressed content in bytes (header included).
    pub len: usize,
}

const fn file(name: &'static str, sha256: &'static str, len: usize) -> FileSpec {
    FileSpec { name, sha256, len }
}

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
const TRAIN_LEN: usize = 60_000;
const TEST_LEN: usize = 10_000;
const SIDE: usize = 28;

/// MNIST (LeCun, Cortes, Burges), the original IDX files.
static MNIST_FILES: [FileSpec; 4] = [
    file(
        TRAIN_IMAGES,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        16 + TRAIN_LEN * SIDE * SIDE,
    ),
    file(
        TRAIN_LABELS,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        8 + TRAIN_LEN,
    ),
    file(
        TEST_IMAGES,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        16 + TEST_LEN * SIDE * SIDE,
    ),
    file(
        TEST_LABELS,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        8 + TEST_LEN,
    ),
];

/// Fashion-MNIST (Xiao, Rasul, Vollgraf; Zalando Research). Hashes of the uncompressed
/// files as computed from Debian's `dataset-fashion-mnist` package; they agree with the
/// figures used by independent public loaders of Zalando's own files.
static FASHION_MNIST_FILES: [FileSpec; 4] = [
    file(
        TRAIN_IMAGES,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        16 + TRAIN_LEN * SIDE * SIDE,
    ),
    file(
        TRAIN_LABELS,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        8 + TRAIN_LEN,
    ),
    file(
        TEST_IMAGES,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        16 + TEST_LEN * SIDE * SIDE,
    ),
    file(
        TEST_LABELS,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        8 + TEST_LEN,
    ),
];

/// The four files of a dataset: train images, train labels, test images, test labels.
pub fn files(name: DatasetName) -> &'static [FileSpec; 4] {
    match name {
        DatasetName::Mnist => &MNIST_FILES,
        DatasetName::FashionMnist => &FASHION_MNIST_FILES,
    }
}

/// The default mirrors of a dataset.
pub fn default_mirrors(name: DatasetName) -> Vec<String> {
    let list = match name {
        DatasetName::Mnist => MNIST_MIRRORS,
        DatasetName::FashionMnist => FASHION_MNIST_MIRRORS,
    };
    list.iter().map(|s| s.to_string()).collect()
}

/// The folder of one dataset: `<data_dir>/<name>`, e.g. `data/fashion-mnist`.
pub fn dataset_dir(data_dir: &Path, name: DatasetName) -> PathBuf {
    data_dir.join(name.as_str())
}

/// Whether every file of `name` is in its folder under `data_dir` (raw or `.gz`); the
/// content is verified when it is loaded, not here.
pub fn present(data_dir: &Path, name: DatasetName) -> bool {
    let dir = dataset_dir(data_dir, name);
    files(name)
        .iter()
        .all(|f| dir.join(f.name).is_file() || dir.join(format!("{}.gz", f.name)).is_file())
}

/// Where datasets are read from and, optionally, downloaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The data folder; each dataset is in `<data_dir>/<dataset name>/`.
    pub data_dir: PathBuf,
    /// Base URLs tried in order for a missing file (`<mirror>/<file>.gz`); empty: no
    /// download.
    pub mirrors: Vec<String>,
    /// Whether a missing file may be downloaded at all.
    pub download: bool,
}

impl Source {
    /// Reads from `data_dir`, downloading missing files from the default mirrors.
    ///
    /// The mirrors are MNIST's ([`MNIST_MIRRORS`]); loading Fashion-MNIST with this
    /// unchanged list uses Fashion-MNIST's own defaults instead (see [`Source::mirrors_for`]).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Source {
            data_dir: data_dir.into(),
            mirrors: default_mirrors(DatasetName::Mnist),
            download: true,
        }
    }

    /// Reads from `data_dir` with the default mirrors of `name`, downloads on.
    pub fn for_dataset(name: DatasetName, data_dir: impl Into<PathBuf>) -> Self {
        Source {
            data_dir: data_dir.into(),
            mirrors: default_mirrors(name),
            download: true,
        }
    }

    /// Reads from `data_dir` only; a missing file is an error.
    pub fn offline(data_dir: impl Into<PathBuf>) -> Self {
        Source {
            data_dir: data_dir.into(),
            mirrors: Vec::new(),
            download: false,
        }
    }

    /// The mirrors used for `name`: [`Source::mirrors`], except that the MNIST defaults
    /// (as set by [`Source::new`]) stand for "the defaults" and become Fashion-MNIST's
    /// defaults when loading Fashion-MNIST. Empty when downloads are off.
    pub fn mirrors_for(&self, name: DatasetName) -> Vec<String> {
        if !self.download {
            return Vec::new();
        }
        if name != DatasetName::Mnist && self.mirrors == default_mirrors(DatasetName::Mnist) {
            return default_mirrors(name);
        }
        self.mirrors.clone()
    }
}

/// One split (train or test) of a dataset.
#[derive(Clone, PartialEq, Eq)]
pub struct Split {
    /// `len * channels * rows * cols` pixels, image after image, each channel after
    /// channel (CHW), each plane row-major; 0 is background.
    pub images: Vec<u8>,
    /// One label per image, in `0..10`.
    pub labels: Vec<u8>,
    pub len: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    /// The pixels of image `i` (`channels * rows * cols` bytes, CHW).
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.channels * self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
    }

    /// How many images of each class there are.
    pub fn label_counts(&self) -> [usize; NUM_CLASSES] {
        let mut counts = [0; NUM_CLASSES];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

impl fmt::Debug for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split")
            .field("len", &self.len)
            .field("channels", &self.channels)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

/// A loaded dataset: its two splits and its classes' names, by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub train: Split,
    pub test: Split,
    pub class_names: Vec<String>,
    /// The content address of an uploaded dataset's tensors (none for the built-in ones,
    /// which are pinned by their files' checksums).
    pub sha256: Option<String>,
}

impl Dataset {
    /// What the dataset gives a model.
    pub fn info(&self) -> DataInfo {
        DataInfo {
            channels: self.train.channels,
            height: self.train.rows,
            width: self.train.cols,
            class_names: self.class_names.clone(),
            train_len: self.train.len,
            test_len: self.test.len,
            sha256: self.sha256.clone(),
        }
    }
}

/// One mirror that could not provide a file, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFailure {
    pub url: String,
    pub error: String,
}

/// What can go wrong loading a dataset. Every message names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "{dataset} file {file} is missing: put it at {} (or uncompressed at {}); {}",
        .gz_path.display(), .raw_path.display(), missing_reason(.tried, *.download)
    )]
    Missing {
        dataset: &'static str,
        file: &'static str,
        /// Where the gzipped file goes (absolute when it could be made so).
        gz_path: PathBuf,
        /// Where the uncompressed file goes.
        raw_path: PathBuf,
        /// Whether downloads were on.
        download: bool,
        /// Each mirror tried, in order, with its error.
        tried: Vec<MirrorFailure>,
    },
    #[error(
        "checksum mismatch for {file} ({location}): expected SHA-256 {expected} of the \
         uncompressed content, got {actual}; the file is corrupt or not the {dataset} file, \
         delete it and fetch it again"
    )]
    Checksum {
        dataset: &'static str,
        file: &'static str,
        /// The path, or the URL for a download.
        location: String,
        expected: &'static str,
        actual: String,
    },
    #[error("{file} ({location}): {source}")]
    Idx {
        file: &'static str,
        location: String,
        #[source]
        source: IdxError,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: expected {expected} dimensions, found {dims:?}")]
    Shape {
        file: &'static str,
        expected: &'static str,
        dims: Vec<usize>,
    },
    #[error("{file}: label {label} at index {index} is out of range 0..=9")]
    LabelOutOfRange {
        file: &'static str,
        index: usize,
        label: u8,
    },
    #[error("{split} split: {images} images but {labels} labels")]
    CountMismatch {
        split: &'static str,
        images: usize,
        labels: usize,
    },
}

fn missing_reason(tried: &[MirrorFailure], download: bool) -> String {
    if !download {
        return format!(
            "downloads are off (turn them on, or point {DATA_DIR_ENV} at a folder that \
             holds the dataset)"
        );
    }
    if tried.is_empty() {
        return "downloads are on but no mirror is configured".to_string();
    }
    let each: Vec<String> = tried
        .iter()
        .map(|t| format!("{}: {}", t.url, t.error))
        .collect();
    format!("every mirror failed: {}", each.join("; "))
}

/// Loads a dataset from `source.data_dir`, downloading missing files when the source
/// allows it, and verifies it: each file's SHA-256 (of the uncompressed content), the
/// shapes, the label range and that image and label counts agree.
///
/// The four files are read in parallel (decompression and hashing dominate).
pub fn load(name: DatasetName, source: &Source) -> Result<Dataset, DataError> {
    let dir = dataset_dir(&source.data_dir, name);
    let mirrors = source.mirrors_for(name);
    let specs = files(name);
    let results: Vec<Result<Vec<u8>, DataError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| scope.spawn(|| obtain(name, spec, &dir, source.download, &mirrors)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut contents = Vec::with_capacity(4);
    for r in results {
        contents.push(r?);
    }
    let mut contents = contents.into_iter();
    let mut next = || contents.next().expect("four files");
    let train = split("train", &specs[0], next(), &specs[1], next())?;
    let test = split("test", &specs[2], next(), &specs[3], next())?;
    Ok(Dataset {
        train,
        test,
        class_names: name.info().class_names,
        sha256: None,
    })
}

/// Builds a split from the verified contents of its images and labels files.
fn split(
    which: &'static str,
    images_spec: &FileSpec,
    images: Vec<u8>,
    labels_spec: &FileSpec,
    labels: Vec<u8>,
) -> Result<Split, DataError> {
    let idx_err = |spec: &FileSpec| {
        let file = spec.name;
        move |source| DataError::Idx {
            file,
            location: "verified content".to_string(),
            source,
        }
    };
    let images = idx::parse_vec(images).map_err(idx_err(images_spec))?;
    let labels = idx::parse_vec(labels).map_err(idx_err(labels_spec))?;
    let &[len, rows, cols] = images.dims.as_slice() else {
        return Err(DataError::Shape {
            file: images_spec.name,
            expected: "3 (count, rows, cols)",
            dims: images.dims,
        });
    };
    let &[label_len] = labels.dims.as_slice() else {
        return Err(DataError::Shape {
            file: labels_spec.name,
            expected: "1 (count)",
            dims: labels.dims,
        });
    };
    if len != label_len {
        return Err(DataError::CountMismatch {
            split: which,
            images: len,
            labels: label_len,
        });
    }
    if let Some(index) = labels.data.iter().position(|&l| l as usize >= NUM_CLASSES) {
        return Err(DataError::LabelOutOfRange {
            file: labels_spec.name,
            index,
            label: labels.data[index],
        });
    }
    Ok(Split {
        images: images.data,
        labels: labels.data,
        len,
        channels: 1,
        rows,
        cols,
    })
}

/// Hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks the SHA-256 of a file's uncompressed content.
fn verify(
    dataset: DatasetName,
    spec: &FileSpec,
    location: impl fmt::Display,
    bytes: &[u8],
) -> Result<(), DataError> {
    let actual = sha256_hex(bytes);
    if actual == spec.sha256 {
        Ok(())
    } else {
        Err(DataError::Checksum {
            dataset: dataset.as_str(),
            file: spec.name,
            location: location.to_string(),
            expected: spec.sha256,
            actual,
        })
    }
}

/// The verified, uncompressed content of one file: from disk, else downloaded.
fn obtain(
    name: DatasetName,
    spec: &FileSpec,
    dir: &Path,
    download: bool,
    mirrors: &[String],
) -> Result<Vec<u8>, DataError> {
    let raw_path = dir.join(spec.name);
    let gz_path = dir.join(format!("{}.gz", spec.name));
    for path in [&raw_path, &gz_path] {
        if path.is_file() {
            let bytes = idx::read_bytes(path, spec.len).map_err(|source| DataError::Idx {
                file: spec.name,
                location: path.display().to_string(),
                source,
            })?;
            verify(name, spec, path.display(), &bytes)?;
            tracing::debug!(file = %path.display(), "verified");
            return Ok(bytes);
        }
    }

    let mut tried = Vec::new();
    if download && !mirrors.is_empty() {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build();
        for mirror in mirrors {
            let url = format!("{}/{}.gz", mirror.trim_end_matches('/'), spec.name);
            tracing::info!(%url, "downloading {} {}", name.as_str(), spec.name);
            match fetch(&agent, &url, name, spec, dir) {
                Ok(bytes) => return Ok(bytes),
                Err(error) => {
                    tracing::warn!(%url, %error, "mirror failed");
                    tried.push(MirrorFailure { url, error });
                }
            }
        }
    }
    Err(DataError::Missing {
        dataset: name.as_str(),
        file: spec.name,
        gz_path: std::path::absolute(&gz_path).unwrap_or(gz_path),
        raw_path: std::path::absolute(&raw_path).unwrap_or(raw_path),
        download,
        tried,
    })
}

/// Downloads one file from `url`, verifies its uncompressed content and only then keeps it
/// in `dir` (as `<file>.gz`, or `<file>` when the server already decompressed it).
fn fetch(
    agent: &ureq::Agent,
    url: &str,
    name: DatasetName,
    spec: &FileSpec,
    dir: &Path,
) -> Result<Vec<u8>, String> {
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => format!("HTTP {code} {}", r.status_text()),
        ureq::Error::Transport(t) => {
            // Its text starts with the URL, which the caller already shows.
            let text = t.to_string();
            match t.url().map(|u| format!("{u}: ")) {
                Some(prefix) => text.strip_prefix(&prefix).unwrap_or(&text).to_string(),
                None => text,
            }
        }
    })?;
    if let Some(len) = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        && len > MAX_DOWNLOAD_BYTES as u64
    {
        return Err(format!(
            "response of {len} bytes is over the limit of {MAX_DOWNLOAD_BYTES}"
        ));
    }
    let mut body = Vec::new();
    response
        .into_reader()
        .take(MAX_DOWNLOAD_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the response: {e}"))?;
    if body.len() > MAX_DOWNLOAD_BYTES {
        return Err(format!(
            "response is over the limit of {MAX_DOWNLOAD_BYTES} bytes"
        ));
    }
    let content =
        idx::decompressed_bytes(&body[..], spec.len).map_err(|e| format!("decompressing: {e}"))?;
    let actual = sha256_hex(&content);
    if actual != spec.sha256 {
        return Err(format!(
            "checksum mismatch: expected SHA-256 {} of the uncompressed {} {}, got {actual}",
            spec.sha256,
            name.as_str(),
            spec.name
        ));
    }

    let gzipped = body.starts_with(&[0x1f, 0x8b]);
    let keep = if gzipped { &body } else { &content };
    let target = if gzipped {
        dir.join(format!("{}.gz", spec.name))
    } else {
        dir.join(spec.name)
    };
    write_atomically(&target, keep).map_err(|e| e.to_string())?;
    tracing::info!(file = %target.display(), "downloaded and verified");
    Ok(content)
}

/// Writes `bytes` to a temporary file beside `target`, then renames it into place.
fn write_atomically(target: &Path, bytes: &[u8]) -> Result<(), DataError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = target.parent().unwrap_or(Path::new("."));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.part-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::Io {
            path: target.to_path_buf(),
            source,
        });
    }
    Ok(())
}
