//! `trainyard datasets upload PATH`: sends a local dataset to a service's `POST /datasets`.
//!
//! The file goes as it is, streamed with a progress bar, so that the service decodes the
//! same bytes `trainyard train` would read (`"dataset": {"path"}`): a zip or tar(.gz) as
//! an archive, a CSV as `text/csv`. A folder of class folders is packed into a temporary
//! tar first, and an IDX pair (with its `t10k-` pair when it is there) goes as a
//! multipart body built in a temporary file, so nothing is held in memory either way.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::local::{self, Kind};

#[derive(Debug, Args)]
pub struct DatasetsArgs {
    #[command(subcommand)]
    pub command: DatasetsCommand,
}

#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// Upload a class-folder folder or archive, an IDX images file (labels beside it) or a CSV.
    Upload(UploadArgs),
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The dataset: a folder of class folders, a zip or tar(.gz), a CSV, or an IDX images
    /// file such as train-images-idx3-ubyte.gz.
    pub path: PathBuf,
    /// What to call it (default: the file's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Resize every image to HxW (or N): needed for images of mixed or large sizes.
    #[arg(long)]
    pub size: Option<String>,
    /// 1 (grayscale) or 3 (RGB); default: 3 if any image is in colour.
    #[arg(long)]
    pub channels: Option<u8>,
    /// Without a test split, hold out this fraction of each class.
    #[arg(long)]
    pub test_fraction: Option<f64>,
    /// Seed of the hold-out and of the sample order.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub remote: super::remote::Remote,
}

pub fn run(a: DatasetsArgs) -> anyhow::Result<()> {
    match a.command {
        DatasetsCommand::Upload(u) => upload(u),
    }
}

/// What to send: a file and its media type (a temporary one lives until it is sent).
struct Body {
    path: PathBuf,
    media_type: String,
    _temp: Option<tempfile::NamedTempFile>,
}

fn body_of(path: &Path) -> anyhow::Result<Body> {
    let plain = |media: &str| Body {
        path: path.to_path_buf(),
        media_type: media.to_string(),
        _temp: None,
    };
    Ok(match local::kind(path)? {
        Kind::Archive => plain("application/octet-stream"),
        Kind::Csv => plain("text/csv"),
        Kind::Folder => {
            let temp = tempfile::NamedTempFile::new()?;
            let mut tar = tar::Builder::new(temp.reopen()?);
            tar.follow_symlinks(false);
            tar.append_dir_all(".", path)
                .with_context(|| format!("packing {}", path.display()))?;
            tar.finish()?;
            Body {
                path: temp.path().to_path_buf(),
                media_type: "application/x-tar".into(),
                _temp: Some(temp),
            }
        }
        Kind::Idx { labels, test } => {
            let mut parts = vec![
                ("train_images", path.to_path_buf()),
                ("train_labels", labels),
            ];
            if let Some((ti, tl)) = test {
                parts.push(("test_images", ti));
                parts.push(("test_labels", tl));
            }
            let boundary = format!("trainyard-{:016x}", rand_u64());
            let temp = tempfile::NamedTempFile::new()?;
            let mut out = std::io::BufWriter::new(temp.reopen()?);
            for (role, p) in &parts {
                let file = p.file_name().and_then(|n| n.to_str()).unwrap_or(role);
                write!(
                    out,
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{role}\"; \
                     filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )?;
                std::io::copy(
                    &mut std::fs::File::open(p).with_context(|| p.display().to_string())?,
                    &mut out,
                )?;
                out.write_all(b"\r\n")?;
            }
            write!(out, "--{boundary}--\r\n")?;
            out.flush()?;
            drop(out);
            Body {
                path: temp.path().to_path_buf(),
                media_type: format!("multipart/form-data; boundary={boundary}"),
                _temp: Some(temp),
            }
        }
    })
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS has randomness");
    u64::from_le_bytes(b)
}

/// A reader that moves a progress bar.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// The options the service would refuse, refused here before anything is sent (the
/// service answers a bad option before it reads the body, which a client still sending
/// would see only as a broken connection).
fn check_options(a: &UploadArgs) -> anyhow::Result<()> {
    if let Some(s) = &a.size
        && crate::api::datasets::parse_size(s).is_none()
    {
        anyhow::bail!("--size {s}: must be HxW or N, each side 1 to 256 (e.g. 28x28)");
    }
    if let Some(c) = a.channels
        && c != 1
        && c != 3
    {
        anyhow::bail!("--channels {c}: must be 1 or 3");
    }
    if let Some(f) = a.test_fraction
        && !(f > 0.0 && f < 1.0)
    {
        anyhow::bail!("--test-fraction {f}: must be strictly between 0 and 1");
    }
    Ok(())
}

fn upload(a: UploadArgs) -> anyhow::Result<()> {
    check_options(&a)?;
    let body = body_of(&a.path)?;
    let len = std::fs::metadata(&body.path)?.len();
    let mut query = vec![];
    let name = a.name.clone().or_else(|| {
        a.path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
    });
    if let Some(n) = &name {
        query.push(("name", n.clone()));
    }
    if let Some(s) = &a.size {
        query.push(("size", s.clone()));
    }
    if let Some(c) = a.channels {
        query.push(("channels", c.to_string()));
    }
    if let Some(f) = a.test_fraction {
        query.push(("test_fraction", f.to_string()));
    }
    if let Some(s) = a.seed {
        query.push(("seed", s.to_string()));
    }
    let url = a.remote.url("/datasets");
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .build();
    let mut req = agent
        .post(&url)
        .set("Content-Type", &body.media_type)
        .set("Content-Length", &len.to_string());
    for (k, v) in &query {
        req = req.query(k, v);
    }
    req = a.remote.authorize(req);
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("a valid template"),
    );
    let reader = Counting {
        inner: std::fs::File::open(&body.path)?,
        bar: bar.clone(),
    };
    let started = std::time::Instant::now();
    let res = req.send(reader);
    bar.finish_and_clear();
    match res {
        Ok(r) => {
            let v: serde_json::Value = serde_json::from_reader(r.into_reader())?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}: {} ({} classes, {} training and {} test images of {}x{}x{}), sha256 {}",
                v["id"].as_str().unwrap_or("?"),
                v["name"].as_str().unwrap_or("?"),
                v["class_names"].as_array().map_or(0, Vec::len),
                v["train_samples"],
                v["test_samples"],
                v["channels"],
                v["height"],
                v["width"],
                v["sha256"].as_str().unwrap_or("?"),
            );
            println!(
                "uploaded {:.1} MB in {secs:.1} s; train on it with \"dataset\": {{\"id\": {}}}",
                len as f64 / 1e6,
                v["id"]
            );
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => Err(a.remote.refusal(&url, code, r)),
        Err(e) => anyhow::bail!("{url}: {e}"),
    }
}
