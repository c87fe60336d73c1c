//! What a supervisor and its job process say to each other over the child's pipes.
//!
//! The job process holds no database connection, so everything it learns (the spec, the
//! checkpoint to resume, an uploaded dataset) arrives as a message on its stdin, and
//! everything it produces (progress, each epoch with its checkpoint, how it ended) leaves
//! as a message on its stdout. Each message is one frame: a little-endian `u32` length and
//! that many bytes of JSON, then a `u32` count of binary attachments, each a `u64` length
//! and its bytes. Checkpoints and tensors travel as attachments, never as JSON numbers.
//!
//! Both sides are the same binary, so the two enums below are the whole protocol: a
//! change to either changes both ends at once.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::store::queue::EpochRecord;

/// Frames larger than this are refused (a corrupt length, not a real message).
const MAX_JSON: u32 = 64 << 20;

/// Supervisor to job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToJob {
    /// The first message: what to train. Attachments: the resume checkpoint's weights
    /// and optimizer state when `resume`, then the warm start's weights when `warm`.
    Start(Box<JobInput>),
    /// Stop at the next batch, for this reason.
    Stop { why: StopWhy },
    /// The answer to [`FromJob::Epoch`]: whether it was stored. When it was not, the
    /// supervisor knows why; the job stops.
    Stored { ok: bool },
    /// The answer to [`FromJob::NeedDataset`]. Attachments: train images, train labels,
    /// test images, test labels (absent when `error` says why it could not be loaded).
    Dataset(Box<UploadedData>),
}

/// Why a job is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopWhy {
    Cancel,
    Shutdown,
    Lost,
}

/// Everything a job process needs, besides attachments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInput {
    pub id: Uuid,
    pub attempt: i32,
    pub account: String,
    /// The spec as stored, with the operator's device override applied.
    pub spec: serde_json::Value,
    pub resume: bool,
    pub warm: bool,
    pub data_dir: std::path::PathBuf,
    pub download: bool,
    /// Where prepared samples are kept between jobs (see `worker::cache`).
    pub cache_dir: std::path::PathBuf,
    pub cache_bytes: u64,
    /// Seconds of training after which the job stops at an epoch boundary.
    pub time_limit_secs: Option<f64>,
}

/// An uploaded dataset's tensors (the attachments) and what they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadedData {
    pub error: Option<String>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub train_len: usize,
    pub test_len: usize,
    pub class_names: Vec<String>,
    pub sha256: String,
}

/// Job to supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromJob {
    /// What the job is doing now; a death by its memory limit is reported with the last.
    Phase {
        phase: Phase,
    },
    /// The prepared samples are not cached and the dataset is an uploaded one: send it.
    NeedDataset {
        id: Uuid,
    },
    /// Data prepared, model built: the first batch begins.
    TrainingStarted {
        at: chrono::DateTime<chrono::Utc>,
        engine: String,
        data_cached: bool,
    },
    Progress(Progress),
    /// An epoch ended. Attachments: its weights, its optimizer state (safetensors).
    /// The job waits for [`ToJob::Stored`].
    Epoch {
        metrics: EpochRecord,
        best_epoch: u32,
    },
    /// The run ended (the job exits next).
    Ended {
        outcome: JobOutcome,
    },
}

/// Progress within an epoch, when it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub batch: usize,
    pub batches: usize,
    pub loss: f64,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// What a job is doing, for the reason of a death by its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Phase {
    Starting,
    LoadingData,
    PreparingData,
    BuildingModel,
    Training { epoch: u32 },
    SavingCheckpoint { epoch: u32 },
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Starting => f.write_str("starting"),
            Phase::LoadingData => f.write_str("loading the data"),
            Phase::PreparingData => f.write_str("preparing the data"),
            Phase::BuildingModel => f.write_str("building the model"),
            Phase::Training { epoch } => write!(f, "training epoch {epoch}"),
            Phase::SavingCheckpoint { epoch } => {
                write!(f, "saving the checkpoint of epoch {epoch}")
            }
        }
    }
}

/// How a job's run ended, as the job saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobOutcome {
    Completed,
    EarlyStopped,
    /// Stopped between batches as told ([`ToJob::Stop`]) or because an epoch was not
    /// stored; the supervisor knows which.
    Stopped,
    /// Its `time_limit` ended it after `epochs` epochs.
    TimeLimit {
        epochs: u32,
    },
    Failed {
        message: String,
    },
}

/// A message and its attachments.
#[derive(Debug)]
pub struct Frame<T> {
    pub msg: T,
    pub blobs: Vec<Vec<u8>>,
}

/// Writes one frame and flushes it.
pub fn write<T: Serialize>(w: &mut impl Write, msg: &T, blobs: &[&[u8]]) -> io::Result<()> {
    let json = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut head = Vec::with_capacity(8 + json.len() + 8 * blobs.len());
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&json);
    head.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    for b in blobs {
        w.write_all(&(b.len() as u64).to_le_bytes())?;
        w.write_all(b)?;
    }
    w.flush()
}

/// Reads one frame; `None` at a clean end of the stream (the other side closed it).
pub fn read<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<Frame<T>>> {
    let mut len = [0u8; 4];
    // The end of the stream is clean only before a frame's first byte.
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let n = u32::from_le_bytes(len);
    if n > MAX_JSON {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {n} bytes"),
        ));
    }
    let mut json = vec![0u8; n as usize];
    r.read_exact(&mut json)?;
    let msg = serde_json::from_slice(&json).map_err(io::Error::other)?;
    r.read_exact(&mut len)?;
    let count = u32::from_le_bytes(len);
    let mut blobs = Vec::with_capacity(count.min(16) as usize);
    for _ in 0..count {
        let mut l = [0u8; 8];
        r.read_exact(&mut l)?;
        let l = usize::try_from(u64::from_le_bytes(l)).map_err(io::Error::other)?;
        let mut b = Vec::new();
        // Grows as the bytes arrive: a corrupt length fails at the end of the stream
        // instead of reserving it up front.
        r.by_ref().take(l as u64).read_to_end(&mut b)?;
        if b.len() != l {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        blobs.push(b);
    }
    Ok(Some(Frame { msg, blobs }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_with_its_attachments_and_the_end_is_clean() {
        let mut buf = Vec::new();
        let msg = FromJob::Phase {
            phase: Phase::Training { epoch: 3 },
        };
        write(&mut buf, &msg, &[b"weights", b""]).unwrap();
        write(&mut buf, &ToJob::Stored { ok: true }, &[]).unwrap();
        let mut r = &buf[..];
        let f: Frame<FromJob> = read(&mut r).unwrap().unwrap();
        assert!(matches!(
            f.msg,
            FromJob::Phase {
                phase: Phase::Training { epoch: 3 }
            }
        ));
        assert_eq!(f.blobs, vec![b"weights".to_vec(), Vec::new()]);
        let g: Frame<ToJob> = read(&mut r).unwrap().unwrap();
        assert!(matches!(g.msg, ToJob::Stored { ok: true }));
        assert!(read::<ToJob>(&mut r).unwrap().is_none());
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_an_end() {
        let mut buf = Vec::new();
        write(&mut buf, &ToJob::Stored { ok: false }, &[b"abcdef"]).unwrap();
        for cut in [2, 6, buf.len() - 3] {
            let mut r = &buf[..cut];
            assert!(read::<ToJob>(&mut r).is_err(), "cut at {cut}");
        }
    }
}
