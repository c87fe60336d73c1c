//! The job process: `trainyard job`, started by a supervisor for one attempt of one
//! experiment, never by hand.
//!
//! Why a process and not a thread: a job asks for as much memory as its spec implies,
//! and an allocation the machine cannot give aborts the whole process. In a process of
//! its own, the job alone dies, within a memory budget the kernel enforces (an rlimit set
//! before this program starts, and a memory cgroup where one could be made), and the
//! supervisor reports why. The supervisor keeps the lease, the heartbeat and every write;
//! this process holds no database connection and learns everything from its stdin.
//!
//! Its stdout carries [`wire`](super::wire) frames only: at start it moves the pipe to a
//! private descriptor and points descriptor 1 at stderr, so a stray print from a library
//! lands in the log instead of corrupting a frame. Its stderr is the supervisor's, and
//! its log lines carry the same `job` span fields as the supervisor's.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::cache::PreparedCache;
use super::limits;
use super::wire::{self, Frame, FromJob, JobInput, JobOutcome, Phase, StopWhy, ToJob};
use crate::data::mnist::{self, Dataset, Source, Split};
use crate::data::prepare::prepare;
use crate::engine::{BatchProgress, Checkpoint, EngineError, Observer, Outcome, Trainer, device};
use crate::spec::DataSource;

/// Why training should stop between batches: 0 while it should not. Set by the reader
/// thread (a [`ToJob::Stop`]) and by the SIGTERM handler.
static STOP: AtomicU8 = AtomicU8::new(0);
const SHUTDOWN: u8 = 2;

/// Exit status when the supervisor went away (its end of stdin closed).
pub const EXIT_ORPHANED: i32 = 70;

/// Runs the job the supervisor sends on stdin; returns the process's exit status.
pub fn main() -> i32 {
    limits::enter_job_process();
    let out = match frames_out() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("trainyard job: cannot set up its pipes: {e}");
            return 1;
        }
    };
    let mut out = Out {
        w: BufWriter::with_capacity(1 << 16, out),
    };
    let mut stdin = BufReader::new(std::io::stdin());
    let start = match wire::read::<ToJob>(&mut stdin) {
        Ok(Some(Frame {
            msg: ToJob::Start(input),
            blobs,
        })) => (*input, blobs),
        Ok(Some(_)) | Ok(None) => {
            eprintln!("trainyard job: the supervisor sent no job");
            return 1;
        }
        Err(e) => {
            eprintln!("trainyard job: reading the job: {e}");
            return 1;
        }
    };
    let (input, blobs) = start;
    on_sigterm_stop();
    // Everything after the first message: stops flip STOP, answers go to the main thread.
    let (replies_tx, replies) = mpsc::channel();
    std::thread::spawn(move || read_replies(stdin, replies_tx));

    let span = tracing::info_span!(
        "job",
        experiment_id = %input.id,
        attempt = input.attempt,
        account = %input.account,
    );
    let _entered = span.enter();
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&input, blobs, &mut out, &replies)
    })) {
        Ok(o) => o,
        Err(p) => JobOutcome::Failed {
            message: format!("internal error while training: {}", panic_text(&p)),
        },
    };
    match out.send(&FromJob::Ended { outcome }, &[]) {
        Ok(()) => 0,
        Err(_) => EXIT_ORPHANED,
    }
}

/// The frame writer: the pipe that was stdout.
struct Out {
    w: BufWriter<File>,
}

impl Out {
    fn send(&mut self, msg: &FromJob, blobs: &[&[u8]]) -> std::io::Result<()> {
        wire::write(&mut self.w, msg, blobs)
    }

    fn phase(&mut self, phase: Phase) {
        let _ = self.send(&FromJob::Phase { phase }, &[]);
    }
}

/// Moves stdout (the frame pipe) to a private descriptor and points 1 at stderr.
fn frames_out() -> std::io::Result<File> {
    // SAFETY: dup and dup2 on descriptors this process owns; the new descriptor is owned
    // by the returned File alone.
    unsafe {
        let fd = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(fd))
    }
}

extern "C" fn sigterm(_: libc::c_int) {
    let _ = STOP.compare_exchange(0, SHUTDOWN, Ordering::SeqCst, Ordering::SeqCst);
}

/// A SIGTERM sent to the job itself (rather than to its supervisor, which forwards it as
/// a [`ToJob::Stop`]) stops it at the next batch as a shutdown.
fn on_sigterm_stop() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, sigterm as *const () as libc::sighandler_t);
    }
}

/// The reader thread: a stop sets [`STOP`]; everything else goes to the main thread. The
/// end of stdin means the supervisor is gone, and so is the point of this job.
fn read_replies(mut stdin: BufReader<std::io::Stdin>, tx: mpsc::Sender<Frame<ToJob>>) {
    loop {
        match wire::read::<ToJob>(&mut stdin) {
            Ok(Some(Frame {
                msg: ToJob::Stop { why },
                ..
            })) => {
                let code = match why {
                    StopWhy::Cancel => 1,
                    StopWhy::Shutdown => SHUTDOWN,
                    StopWhy::Lost => 3,
                };
                let _ = STOP.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
            }
            Ok(Some(f)) => {
                if tx.send(f).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                tracing::warn!("the supervisor is gone; the job exits");
                std::process::exit(EXIT_ORPHANED);
            }
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Sets up and trains; every failure becomes the outcome's message.
fn run(
    input: &JobInput,
    blobs: Vec<Vec<u8>>,
    out: &mut Out,
    replies: &mpsc::Receiver<Frame<ToJob>>,
) -> JobOutcome {
    match train(input, blobs, out, replies) {
        Ok(o) => o,
        Err(message) => JobOutcome::Failed { message },
    }
}

fn train(
    input: &JobInput,
    blobs: Vec<Vec<u8>>,
    out: &mut Out,
    replies: &mpsc::Receiver<Frame<ToJob>>,
) -> Result<JobOutcome, String> {
    let t0 = Instant::now();
    let spec =
        crate::spec::from_value(input.spec.clone()).map_err(|e| format!("invalid spec: {e}"))?;
    let mut blobs = blobs.into_iter();
    let resume = if input.resume {
        let (w, o) = (blobs.next(), blobs.next());
        let (Some(w), Some(o)) = (w, o) else {
            return Err("no checkpoint to resume from".into());
        };
        Some(Checkpoint::from_bytes(&w, Some(&o)).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let warm = if input.warm {
        let w = blobs.next().ok_or("warm start: no weights arrived")?;
        Some(Checkpoint::from_bytes(&w, None).map_err(|e| format!("warm start: {e}"))?)
    } else {
        None
    };

    let cache = PreparedCache::new(&input.cache_dir, input.cache_bytes);
    let (prepared, cached) = match cache.get(&spec.dataset) {
        Some(p) => (p, true),
        None => {
            out.phase(Phase::LoadingData);
            let data = load(input, &spec.dataset.source, out, replies)?;
            out.phase(Phase::PreparingData);
            let p = prepare(&data, &spec.dataset);
            drop(data);
            cache.put(&spec.dataset, &p);
            (p, false)
        }
    };
    let t_data = t0.elapsed();
    out.phase(Phase::BuildingModel);
    // Planned against the data as loaded: an uploaded dataset's shape and classes are its
    // own.
    let summary = crate::spec::validate_for(&spec, prepared.info.shape())
        .map_err(|e| format!("invalid spec: {e}"))?;
    let device = device::select(spec.device).map_err(|e| e.to_string())?;
    // The trainer takes the samples: on the CPU its tensors are their buffers.
    let mut trainer =
        Trainer::from_prepared(&spec, &summary, prepared, &device).map_err(|e| e.to_string())?;
    if let Some(ck) = &resume {
        trainer.resume(ck).map_err(|e| e.to_string())?;
    }
    if let Some(w) = &warm {
        trainer
            .load_weights(&w.weight_map())
            .map_err(|e| format!("warm start: {e}"))?;
    }
    let first_epoch = resume
        .as_ref()
        .and_then(|c| c.history.last())
        .map_or(0, |m| m.epoch)
        + 1;
    drop((resume, warm));
    // Which code trains it, and why when it is not the fused CPU kernels: the first thing
    // to know when an experiment trains slower than expected.
    let path = trainer.path();
    tracing::info!(
        engine = path.name(),
        engine_reason = path.reason(),
        data_cached = cached,
        data_ms = ms(t_data),
        model_ms = ms(t0.elapsed() - t_data),
        "set up"
    );
    out.phase(Phase::Training { epoch: first_epoch });
    let mut obs = JobObserver {
        out,
        replies,
        engine: path.name(),
        data_cached: cached,
        started: None,
        time_limit: input.time_limit_secs.map(Duration::from_secs_f64),
        epoch_began: None,
        time_up: false,
        last_progress: None,
    };
    let outcome = trainer.run(&mut obs);
    let time_up = obs.time_up;
    Ok(match outcome {
        Ok(Outcome::Completed { .. }) => JobOutcome::Completed,
        Ok(Outcome::EarlyStopped { .. }) => JobOutcome::EarlyStopped,
        Ok(Outcome::Stopped { epochs_done }) if time_up => JobOutcome::TimeLimit {
            epochs: epochs_done,
        },
        Ok(Outcome::Stopped { .. }) | Err(EngineError::Observer(_)) => JobOutcome::Stopped,
        Err(e) => JobOutcome::Failed {
            message: e.to_string(),
        },
    })
}

/// A dataset by its source: a built-in one from the data folder, an uploaded one from
/// the supervisor (which reads it from the store).
fn load(
    input: &JobInput,
    source: &DataSource,
    out: &mut Out,
    replies: &mpsc::Receiver<Frame<ToJob>>,
) -> Result<Dataset, String> {
    match source {
        DataSource::BuiltIn(name) => {
            let mut s = Source::for_dataset(*name, input.data_dir.clone());
            s.download = input.download;
            mnist::load(*name, &s).map_err(|e| e.to_string())
        }
        DataSource::Uploaded(id) => {
            out.send(&FromJob::NeedDataset { id: *id }, &[])
                .map_err(|e| e.to_string())?;
            let f = loop {
                match replies.recv() {
                    Ok(Frame {
                        msg: ToJob::Dataset(d),
                        blobs,
                    }) => break (*d, blobs),
                    Ok(_) => continue,
                    Err(_) => return Err("the supervisor is gone".into()),
                }
            };
            uploaded(f.0, f.1)
        }
        DataSource::Path(p) => Err(format!(
            "a worker does not read local files ({p}): upload the data and name it by id"
        )),
    }
}

fn uploaded(d: wire::UploadedData, blobs: Vec<Vec<u8>>) -> Result<Dataset, String> {
    if let Some(e) = d.error {
        return Err(e);
    }
    let [train_images, train_labels, test_images, test_labels]: [Vec<u8>; 4] = blobs
        .try_into()
        .map_err(|_| "the dataset arrived incomplete".to_string())?;
    let split = |images, labels, len| Split {
        images,
        labels,
        len,
        channels: d.channels,
        rows: d.height,
        cols: d.width,
    };
    Ok(Dataset {
        train: split(train_images, train_labels, d.train_len),
        test: split(test_images, test_labels, d.test_len),
        class_names: d.class_names,
        sha256: Some(d.sha256),
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Why an epoch was not stored: the supervisor knows; the job only stops.
#[derive(Debug, thiserror::Error)]
#[error("the epoch was not stored")]
struct NotStored;

/// The engine's observer inside a job process: everything goes to the supervisor.
struct JobObserver<'a> {
    out: &'a mut Out,
    replies: &'a mpsc::Receiver<Frame<ToJob>>,
    engine: &'static str,
    data_cached: bool,
    /// When the first batch began.
    started: Option<Instant>,
    time_limit: Option<Duration>,
    /// When the current epoch began, to judge whether the next one fits the time limit.
    epoch_began: Option<Instant>,
    /// The time limit stopped the run.
    time_up: bool,
    last_progress: Option<Instant>,
}

impl Observer for JobObserver<'_> {
    fn on_batch(&mut self, p: &BatchProgress) {
        // The supervisor sends at most ten a second; fewer frames here cost less.
        let due = self
            .last_progress
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(50));
        if p.batch == p.batches || due {
            self.last_progress = Some(Instant::now());
            let msg = FromJob::Progress(wire::Progress {
                epoch: p.epoch,
                epochs: p.epochs,
                batch: p.batch,
                batches: p.batches,
                loss: p.loss,
                at: Utc::now(),
            });
            let _ = self.out.send(&msg, &[]);
        }
    }

    fn on_epoch(&mut self, ckpt: &Checkpoint) -> Result<(), EngineError> {
        let epoch = ckpt.history.last().map_or(0, |m| m.epoch);
        self.out.phase(Phase::SavingCheckpoint { epoch });
        let e = super::record::new_epoch(ckpt)?;
        let msg = FromJob::Epoch {
            metrics: e.metrics,
            best_epoch: e.best_epoch,
        };
        let sent = self.out.send(&msg, &[&e.weights, &e.optimizer]);
        drop((e.weights, e.optimizer));
        sent.map_err(|_| EngineError::Observer(Box::new(NotStored)))?;
        let stored = loop {
            match self.replies.recv() {
                Ok(Frame {
                    msg: ToJob::Stored { ok },
                    ..
                }) => break ok,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        if !stored {
            return Err(EngineError::Observer(Box::new(NotStored)));
        }
        self.out.phase(Phase::Training { epoch: epoch + 1 });
        // Stop at this boundary when the next epoch, as long as this one, would end past
        // the time limit.
        if let (Some(limit), Some(t0), Some(began)) =
            (self.time_limit, self.started, self.epoch_began)
            && t0.elapsed() + began.elapsed() > limit
        {
            self.time_up = true;
        }
        self.epoch_began = Some(Instant::now());
        Ok(())
    }

    /// Asked before every batch: the first call is the moment the first batch begins.
    fn should_stop(&mut self) -> bool {
        if self.started.is_none() {
            let now = Instant::now();
            self.started = Some(now);
            self.epoch_began = Some(now);
            let msg = FromJob::TrainingStarted {
                at: Utc::now(),
                engine: self.engine.to_string(),
                data_cached: self.data_cached,
            };
            let _ = self.out.send(&msg, &[]);
        }
        if let (Some(limit), Some(t0)) = (self.time_limit, self.started)
            && t0.elapsed() >= limit
        {
            self.time_up = true;
        }
        self.time_up || STOP.load(Ordering::SeqCst) != 0
    }
}
