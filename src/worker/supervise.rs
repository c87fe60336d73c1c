//! Running one attempt in a job process: start it, answer it, store what it produces,
//! and learn how it ended.
//!
//! Two threads per job talk to the process: one writes frames to its stdin from a channel
//! (the start, stops, answers), one reads its stdout and, at the end of the stream, reaps
//! it with `wait4` for its exit status and peak memory. Everything else runs here, on the
//! runtime, where the store is.

use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant};

use chrono::SecondsFormat;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::cgroup::JobCgroup;
use super::job::{GO, LOST, SHUTDOWN, Worker};
use super::limits::{EXIT_MEMORY_LIMIT, LimitBy};
use super::process::{self, Ended, Launch};
use super::wire::{
    self, Frame, FromJob, JobInput, JobOutcome, Phase, Progress, ToJob, UploadedData,
};
use crate::store::queue::{Claim, NewEpoch};
use crate::store::{Store, StoreError};

/// A frame for the job process.
type Outgoing = (ToJob, Vec<Vec<u8>>);

/// The stop reason of a job, and the way to its process's stdin.
pub(super) struct Control {
    pub(super) stop: Arc<AtomicU8>,
    tx: std::sync::mpsc::Sender<Outgoing>,
}

impl Control {
    pub(super) fn new() -> (Control, std::sync::mpsc::Receiver<Outgoing>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicU8::new(GO));
        (Control { stop, tx }, rx)
    }

    pub(super) fn send(&self, msg: ToJob, blobs: Vec<Vec<u8>>) {
        // The writer is gone only once the process is: nothing left to tell it.
        let _ = self.tx.send((msg, blobs));
    }
}

/// Why an epoch was not stored.
#[derive(Debug)]
pub(super) enum NotStored {
    LeaseLost,
    /// Shutting down while the database is unreachable: back to the queue.
    ShuttingDown,
    Failed(String),
}

/// How a job process died, when it did not say how its run ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Death {
    /// By its own memory limit: its allocation was refused, or its cgroup's OOM killer.
    MemoryLimit,
    Other(String),
}

/// What came of a job process.
#[derive(Debug)]
pub(super) struct Report {
    /// How the run ended, as the job said (none when it died first).
    pub outcome: Option<JobOutcome>,
    pub not_stored: Option<NotStored>,
    /// What it was doing last.
    pub phase: Phase,
    pub death: Death,
    pub time_limit_secs: Option<f64>,
}

impl Report {
    fn lost(why: String) -> Report {
        Report {
            outcome: None,
            not_stored: None,
            phase: Phase::Starting,
            death: Death::Other(why),
            time_limit_secs: None,
        }
    }
}

impl Worker {
    /// Runs the claimed attempt in a process of its own, to its end.
    pub(super) async fn supervise(
        &self,
        claim: &Claim,
        control: Arc<Control>,
        outgoing: std::sync::mpsc::Receiver<Outgoing>,
    ) -> Report {
        let (id, attempt) = (claim.id, claim.attempt);
        let (input, blobs, keep_all) = match self.input(claim).await {
            Ok(x) => x,
            Err(JobInputError::Failed(message)) => {
                return Report {
                    outcome: Some(JobOutcome::Failed { message }),
                    ..Report::lost(String::new())
                };
            }
            Err(JobInputError::Store(e)) => {
                return Report::lost(format!("could not read its checkpoint: {e}"));
            }
        };
        let time_limit_secs = input.time_limit_secs;
        control.send(ToJob::Start(Box::new(input)), blobs);

        let cgroup = self.cfg.cgroup_base.as_ref().and_then(|base| {
            JobCgroup::create(
                base,
                &format!("job-{id}-{attempt}"),
                self.cfg.job_memory_bytes,
            )
            .map_err(|e| tracing::warn!(error = %e, "no memory cgroup for this job"))
            .ok()
        });
        let launch = Launch {
            program: self.cfg.job_program.clone(),
            args: if self.cfg.log_json {
                vec!["--log-json".into(), "job".into()]
            } else {
                vec!["job".into()]
            },
            rlimit_data: (self.cfg.limit_by != LimitBy::Cgroup)
                .then_some(self.cfg.job_memory_bytes),
            cgroup_procs: cgroup.as_ref().map(JobCgroup::procs),
            nice: super::COMPUTE_NICE,
        };
        let started = match tokio::task::spawn_blocking(move || process::spawn(launch)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Report::lost(format!("could not start a job process: {e}")),
            Err(e) => return Report::lost(format!("could not start a job process: {e}")),
        };
        let pid = started.pid;
        tracing::info!(pid, "job process started");

        // The writer thread: frames from `control` to stdin, until the process is gone.
        let mut stdin = std::io::BufWriter::with_capacity(1 << 16, started.stdin);
        std::thread::spawn(move || {
            for (msg, blobs) in outgoing {
                let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
                if wire::write(&mut stdin, &msg, &refs).is_err() {
                    return;
                }
            }
        });
        // The reader thread: frames from stdout, then the process's end.
        let (frames_tx, mut frames) = mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = oneshot::channel();
        let mut stdout = std::io::BufReader::with_capacity(1 << 16, started.stdout);
        std::thread::spawn(move || {
            loop {
                match wire::read::<FromJob>(&mut stdout) {
                    Ok(Some(f)) => {
                        if frames_tx.send(f).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable frame from the job process; stopping it");
                        process::signal(pid, libc::SIGKILL);
                        break;
                    }
                }
            }
            drop(frames_tx);
            let _ = ended_tx.send(process::wait(pid));
        });

        let (progress_tx, progress_rx) = mpsc::channel(16);
        let progress = tokio::spawn(
            forward_progress(
                self.store.clone(),
                id,
                attempt,
                control.clone(),
                progress_rx,
            )
            .in_current_span(),
        );
        let mut report = Report {
            outcome: None,
            not_stored: None,
            phase: Phase::Starting,
            death: Death::Other(String::new()),
            time_limit_secs,
        };
        while let Some(Frame { msg, blobs }) = frames.recv().await {
            match msg {
                FromJob::Phase { phase } => report.phase = phase,
                FromJob::NeedDataset { id: dataset } => {
                    let (d, b) = self.uploaded(dataset).await;
                    control.send(ToJob::Dataset(Box::new(d)), b);
                }
                FromJob::TrainingStarted {
                    at,
                    engine,
                    data_cached,
                } => {
                    tracing::info!(engine, data_cached, "training started");
                    if let Err(e) = self.store.mark_training_started(id, attempt, at).await {
                        tracing::warn!(error = %e, "could not record the training start");
                    }
                }
                FromJob::Progress(p) => {
                    // Dropped when the forwarder is behind: progress is a hint.
                    let _ = progress_tx.try_send(p);
                }
                FromJob::Epoch {
                    metrics,
                    best_epoch,
                } => {
                    crate::telemetry::epoch_trained(
                        metrics.train_seconds,
                        metrics.images_per_second,
                    );
                    let [weights, optimizer]: [Vec<u8>; 2] = match blobs.try_into() {
                        Ok(b) => b,
                        Err(_) => {
                            control.send(ToJob::Stored { ok: false }, Vec::new());
                            report.not_stored = Some(NotStored::Failed(
                                "an epoch arrived without its checkpoint".into(),
                            ));
                            continue;
                        }
                    };
                    let epoch = NewEpoch {
                        metrics,
                        weights,
                        optimizer,
                        best_epoch,
                    };
                    let r = self
                        .store_epoch(id, attempt, &epoch, keep_all, &control)
                        .await;
                    control.send(ToJob::Stored { ok: r.is_ok() }, Vec::new());
                    if let Err(n) = r {
                        report.not_stored = Some(n);
                    }
                }
                FromJob::Ended { outcome } => report.outcome = Some(outcome),
            }
        }
        drop(progress_tx);
        let _ = progress.await;
        // A job that stopped answering frames but is still running is stopped here.
        let ended = ended_rx
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the reader thread is gone")));
        report.death = death(&ended, cgroup.as_ref());
        let peak_mib = |b: u64| (b as f64 / (1 << 20) as f64 * 10.0).round() / 10.0;
        match &ended {
            Ok(Ended { status, max_rss }) => tracing::info!(
                pid,
                exit = %status,
                peak_rss_mib = peak_mib(*max_rss),
                cgroup_peak_mib = cgroup.as_ref().and_then(JobCgroup::peak).map(peak_mib),
                "job process ended"
            ),
            Err(e) => tracing::warn!(pid, error = %e, "could not reap the job process"),
        }
        report
    }

    /// The job's input and attachments: the spec (with the operator's device), the
    /// checkpoint it resumes from, a warm start's weights.
    async fn input(&self, claim: &Claim) -> Result<(JobInput, Vec<Vec<u8>>, bool), JobInputError> {
        let mut spec = crate::spec::from_value(claim.spec.clone())
            .map_err(|e| JobInputError::Failed(format!("invalid spec: {e}")))?;
        if let Some(d) = self.cfg.device {
            spec.device = d;
        }
        let mut blobs = Vec::new();
        let resume = claim.epochs_done > 0;
        if resume {
            let (w, o) = self
                .store
                .resume_point(claim.id)
                .await
                .map_err(JobInputError::Store)?
                .ok_or_else(|| JobInputError::Failed("no checkpoint to resume from".into()))?;
            blobs.extend([w, o]);
        }
        // A warm start's weights, unless resuming (the checkpoint has weights of its own).
        let warm = match (&spec.warm_start, resume) {
            (Some(ws), false) => {
                blobs.push(self.warm_start_weights(ws).await?);
                true
            }
            _ => false,
        };
        let time_limit_secs = Some(spec.time_limit.map_or(self.cfg.max_time_limit_secs, |t| {
            t.min(self.cfg.max_time_limit_secs)
        }));
        let input = JobInput {
            id: claim.id,
            attempt: claim.attempt,
            account: claim.account.clone(),
            spec: serde_json::to_value(&spec)
                .map_err(|e| JobInputError::Failed(format!("invalid spec: {e}")))?,
            resume,
            warm,
            data_dir: self.cfg.data_dir.clone(),
            download: self.cfg.download,
            cache_dir: self.cfg.prepared_cache_dir.clone(),
            cache_bytes: self.cfg.prepared_cache_bytes as u64,
            time_limit_secs,
        };
        Ok((input, blobs, spec.keep_all_checkpoints))
    }

    /// The checkpoint a warm start names (resolved to an epoch when it was submitted).
    async fn warm_start_weights(
        &self,
        ws: &crate::spec::WarmStart,
    ) -> Result<Vec<u8>, JobInputError> {
        let crate::spec::CheckpointRef::Epoch(epoch) = ws.checkpoint else {
            return Err(JobInputError::Failed(
                "warm start: the checkpoint was not resolved to an epoch at submission".into(),
            ));
        };
        self.store
            .checkpoint_weights(ws.experiment, epoch as i32)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => JobInputError::Failed(format!(
                    "warm start: experiment {} no longer has the checkpoint of epoch {epoch}",
                    ws.experiment
                )),
                e => JobInputError::Failed(format!("warm start: {e}")),
            })
    }

    /// An uploaded dataset's tensors for a job process that asked for them.
    async fn uploaded(&self, id: uuid::Uuid) -> (UploadedData, Vec<Vec<u8>>) {
        let failed = |error: String| UploadedData {
            error: Some(error),
            channels: 0,
            height: 0,
            width: 0,
            train_len: 0,
            test_len: 0,
            class_names: Vec::new(),
            sha256: String::new(),
        };
        let t = match self.store.dataset_tensors(id).await {
            Ok(t) => t,
            Err(e) => return (failed(format!("loading dataset {id}: {e}")), Vec::new()),
        };
        let class_names = match serde_json::from_value(t.class_names.clone()) {
            Ok(c) => c,
            Err(e) => {
                return (
                    failed(format!("dataset {id}: class names: {e}")),
                    Vec::new(),
                );
            }
        };
        (
            UploadedData {
                error: None,
                channels: t.channels as usize,
                height: t.height as usize,
                width: t.width as usize,
                train_len: t.train_len as usize,
                test_len: t.test_len as usize,
                class_names,
                sha256: t.sha256,
            },
            vec![t.train_images, t.train_labels, t.test_images, t.test_labels],
        )
    }

    /// Stores an epoch. A database outage (a restart, a failover) must not cost the run:
    /// it retries with backoff until the epoch is stored or the lease is known to be lost
    /// (recording an epoch twice is harmless: the second is a no-op). A shutdown
    /// meanwhile gives up and leaves the experiment to be handed back or rescued.
    async fn store_epoch(
        &self,
        id: uuid::Uuid,
        attempt: i32,
        epoch: &NewEpoch,
        keep_all: bool,
        control: &Control,
    ) -> Result<(), NotStored> {
        let mut wait = Duration::from_millis(100);
        loop {
            let r = self.store.record_epoch(id, attempt, epoch, keep_all).await;
            let stop = control.why();
            match r {
                Ok(()) => return Ok(()),
                Err(StoreError::LeaseLost) => return Err(NotStored::LeaseLost),
                Err(_) if stop == LOST => return Err(NotStored::LeaseLost),
                Err(e) if e.is_transient() && stop == SHUTDOWN => {
                    tracing::warn!(error = %e, "storing the epoch failed while shutting down");
                    return Err(NotStored::ShuttingDown);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "storing the epoch failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(NotStored::Failed(e.to_string())),
            }
        }
    }
}

enum JobInputError {
    /// The job cannot run (its own fault).
    Failed(String),
    /// The store could not be read: not the job's fault.
    Store(StoreError),
}

/// How the process died, when it did not say how its run ended.
fn death(ended: &std::io::Result<Ended>, cgroup: Option<&JobCgroup>) -> Death {
    use std::os::unix::process::ExitStatusExt;
    let Ok(Ended { status, .. }) = ended else {
        return Death::Other("its process could not be reaped".into());
    };
    if status.code() == Some(EXIT_MEMORY_LIMIT) {
        return Death::MemoryLimit;
    }
    if status.signal() == Some(libc::SIGKILL) && cgroup.is_some_and(|c| c.oom_kills() > 0) {
        return Death::MemoryLimit;
    }
    Death::Other(format!("its process ended with {status}"))
}

/// Sends progress NOTIFYs, at most ten a second (fenced: nothing goes out once the
/// attempt lost its lease, which also tells the job to stop).
async fn forward_progress(
    store: Store,
    id: uuid::Uuid,
    attempt: i32,
    control: Arc<Control>,
    mut rx: mpsc::Receiver<Progress>,
) {
    let mut last = Instant::now() - Duration::from_secs(1);
    while let Some(p) = rx.recv().await {
        if p.batch != p.batches && last.elapsed() < Duration::from_millis(100) {
            continue;
        }
        last = Instant::now();
        let payload = serde_json::json!({
            "experiment_id": id, "epoch": p.epoch, "epochs": p.epochs,
            "batch": p.batch, "batches": p.batches, "loss": p.loss,
            "at": p.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        });
        if let Err(StoreError::LeaseLost) = store
            .notify_progress(id, attempt, &payload.to_string())
            .await
        {
            control.set(LOST);
        }
    }
}
