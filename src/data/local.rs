//! A dataset on this machine (`"dataset": {"path": "..."}`), for `trainyard train` and
//! `trainyard datasets upload`: the same formats, read by the same decoder, as an upload.
//!
//! What the path is decides how it is read: a folder of class folders (packed into a
//! temporary tar first, so that the decoder sees exactly what an upload of it would), a
//! zip or tar(.gz) archive, a CSV, or an IDX images file whose labels file sits beside it
//! under the usual name (`train-images-idx3-ubyte` and `train-labels-idx1-ubyte`, each
//! maybe `.gz`), with the `t10k-` pair as the test split when it is there too.

use std::path::{Path, PathBuf};

use super::mnist::Dataset;
use super::upload::{self, Input, Options, UploadError};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    Unknown { path: PathBuf, reason: String },
    #[error("{}: {source}", .path.display())]
    Upload {
        path: PathBuf,
        #[source]
        source: UploadError,
    },
}

/// What a local path holds, as the decoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Folder,
    Archive,
    Csv,
    Idx {
        labels: PathBuf,
        test: Option<(PathBuf, PathBuf)>,
    },
}

/// The file beside `images` whose name has `images-idx3`/`images-idx4` replaced by
/// `labels-idx1` (either compression).
fn labels_of(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let base = name.strip_suffix(".gz").unwrap_or(name);
    let labels = base
        .replace("images-idx3", "labels-idx1")
        .replace("images-idx4", "labels-idx1");
    if labels == base {
        return None;
    }
    let dir = images.parent()?;
    [labels.clone(), format!("{labels}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// What `path` is.
pub fn kind(path: &Path) -> Result<Kind, LocalError> {
    let meta = std::fs::metadata(path).map_err(|source| LocalError::Io {
        path: path.into(),
        source,
    })?;
    if meta.is_dir() {
        return Ok(Kind::Folder);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if name.ends_with(".csv") {
        return Ok(Kind::Csv);
    }
    if name.contains("images-idx") {
        let labels = labels_of(path).ok_or_else(|| LocalError::Unknown {
            path: path.into(),
            reason: "no labels file beside it (the same name with labels-idx1)".into(),
        })?;
        // The test pair, raw or gzip whatever the training pair is.
        let test = name.starts_with("train-").then(|| {
            let dir = path.parent().unwrap_or(Path::new("."));
            let original = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let base = original.strip_suffix(".gz").unwrap_or(original);
            let t = base.replacen("train-", "t10k-", 1);
            [t.clone(), format!("{t}.gz")]
                .into_iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
                .and_then(|t| labels_of(&t).map(|l| (t, l)))
        });
        return Ok(Kind::Idx {
            labels,
            test: test.flatten(),
        });
    }
    Ok(Kind::Archive)
}

/// Reads the dataset at `path`.
pub fn load(path: &Path, opts: &Options) -> Result<Dataset, LocalError> {
    let io = |source| LocalError::Io {
        path: path.into(),
        source,
    };
    let kind = kind(path)?;
    // A folder is packed first; the tar lives until decoding is done.
    let packed = match kind {
        Kind::Folder => Some(pack(path).map_err(io)?),
        _ => None,
    };
    let input = match &kind {
        Kind::Folder => Input::Archive(packed.as_ref().expect("packed").path()),
        Kind::Archive => Input::Archive(path),
        Kind::Csv => Input::Csv {
            train: path,
            test: None,
        },
        Kind::Idx { labels, test } => Input::Idx {
            train_images: path,
            train_labels: labels,
            test_images: test.as_ref().map(|t| t.0.as_path()),
            test_labels: test.as_ref().map(|t| t.1.as_path()),
        },
    };
    let decoded = upload::decode(input, opts).map_err(|source| LocalError::Upload {
        path: path.into(),
        source,
    })?;
    let sha256 = Some(decoded.sha256());
    Ok(Dataset {
        train: decoded.train,
        test: decoded.test,
        class_names: decoded.class_names,
        sha256,
    })
}

/// The folder as an uncompressed tar in a temporary file (links are stored as links,
/// so the decoder refuses them as it would in an upload).
fn pack(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let file = tempfile::NamedTempFile::new()?;
    let mut tar = tar::Builder::new(file.reopen()?);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)?;
    tar.finish()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idx_images_file_finds_its_labels_and_test_pair() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let k = kind(&dir.path().join("train-images-idx3-ubyte.gz")).unwrap();
        assert_eq!(
            k,
            Kind::Idx {
                labels: dir.path().join("train-labels-idx1-ubyte.gz"),
                test: Some((
                    dir.path().join("t10k-images-idx3-ubyte"),
                    dir.path().join("t10k-labels-idx1-ubyte")
                )),
            }
        );
        assert_eq!(kind(dir.path()).unwrap(), Kind::Folder);
        std::fs::write(dir.path().join("x.csv"), b"").unwrap();
        assert_eq!(kind(&dir.path().join("x.csv")).unwrap(), Kind::Csv);
        let missing = kind(&dir.path().join("nope.zip")).unwrap_err();
        assert!(missing.to_string().contains("nope.zip"), "{missing}");
    }
}
