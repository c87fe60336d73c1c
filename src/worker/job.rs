//! One worker's loop and one job's life.
//!
//! Everything a job does runs inside one `job` span (experiment id, attempt, account):
//! its async part, the tasks it spawns and the blocking training thread all enter it, so
//! every line logged for the job names it, whichever thread wrote it, and the fields are
//! not repeated on each line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::WorkerConfig;
use super::cache::DataCache;
use crate::data::mnist::{Dataset, Split};
use crate::engine::{BatchProgress, Checkpoint, EngineError, Observer, Outcome, Trainer, device};
use crate::shutdown::stopped;
use crate::store::listen::{Hub, Signal};
use crate::store::queue::{Claim, Ending};
use crate::store::{Store, StoreError};

/// Why training should stop between batches.
const GO: u8 = 0;
const CANCEL: u8 = 1;
const SHUTDOWN: u8 = 2;
const LOST: u8 = 3;

pub(super) struct Worker {
    pub store: Store,
    pub hub: Hub,
    pub cfg: Arc<WorkerConfig>,
    pub data: Arc<DataCache>,
    pub owner: String,
    /// Whether to claim experiments that ask for CUDA.
    pub cuda: bool,
}

impl Worker {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        while !*shutdown.borrow() {
            // Register for the wake-up before looking, so a NOTIFY in between is not lost.
            let notified = self.hub.jobs().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self
                .store
                .claim(&self.owner, self.cfg.lease_secs, self.cuda)
                .await
            {
                Ok(Some(claim)) => {
                    crate::telemetry::job_claimed();
                    backoff = Duration::from_millis(200);
                    self.run_job(claim, shutdown.clone()).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    // The database is unreachable: back off, but look again at once when
                    // the LISTEN connection is back (the hub then wakes every waiter).
                    tracing::warn!(error = %e, "claim failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = notified => {}
                        _ = stopped(&mut shutdown) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_secs_f64(self.cfg.poll_secs)) => {}
                _ = stopped(&mut shutdown) => {}
            }
        }
    }

    async fn run_job(&self, claim: Claim, shutdown: watch::Receiver<bool>) {
        let span = tracing::info_span!(
            "job",
            experiment_id = %claim.id,
            attempt = claim.attempt,
            account = %claim.account,
        );
        self.job(claim, shutdown).instrument(span).await
    }

    /// The job's life, inside its span.
    async fn job(&self, claim: Claim, mut shutdown: watch::Receiver<bool>) {
        let (id, attempt) = (claim.id, claim.attempt);
        tracing::info!(owner = %self.owner, "claimed experiment");
        let stop = Arc::new(AtomicU8::new(GO));
        let set = |s: &AtomicU8, why: u8| {
            let _ = s.compare_exchange(GO, why, Ordering::SeqCst, Ordering::SeqCst);
        };

        // Heartbeat, cancel notifications and shutdown, until the job ends.
        let (done_tx, mut done_rx) = watch::channel(false);
        let watcher = {
            let (store, stop, cfg) = (self.store.clone(), stop.clone(), self.cfg.clone());
            let mut signals = self.hub.subscribe();
            tokio::spawn(async move {
                let mut beat = tokio::time::interval(Duration::from_secs_f64(cfg.heartbeat_secs));
                beat.tick().await;
                // Once seen, the shutdown stays true: stop polling it (it would be ready
                // on every turn of the loop and spin until the job ends).
                let mut shutting_down = false;
                loop {
                    tokio::select! {
                        _ = beat.tick() => match store.heartbeat(id, attempt, cfg.lease_secs).await {
                            Ok(b) if b.cancel_requested => set(&stop, CANCEL),
                            Ok(_) => {}
                            Err(StoreError::LeaseLost) => set(&stop, LOST),
                            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                        },
                        s = signals.recv() => if let Ok(Signal::Cancel(c)) = s && c == id {
                            set(&stop, CANCEL);
                        },
                        _ = stopped(&mut shutdown), if !shutting_down => {
                            shutting_down = true;
                            set(&stop, SHUTDOWN);
                        }
                        _ = done_rx.changed() => return,
                    }
                }
            }.in_current_span())
        };

        // Progress goes out as NOTIFYs, at most ten a second.
        let (progress_tx, progress_rx) = mpsc::channel::<(BatchProgress, DateTime<Utc>)>(16);
        let progress = tokio::spawn(
            forward_progress(self.store.clone(), id, attempt, stop.clone(), progress_rx)
                .in_current_span(),
        );

        let result = self.train(&claim, stop.clone(), progress_tx).await;
        let _ = done_tx.send(true);
        let _ = watcher.await;
        let _ = progress.await;

        let why = stop.load(Ordering::SeqCst);
        let ending = match (result, why) {
            (_, LOST) => None,
            (Err(JobError::LeaseLost), _) => None,
            (Ok(Outcome::Completed { .. }), _) => Some(Ending::Succeeded),
            (Ok(Outcome::EarlyStopped { .. }), _) => Some(Ending::EarlyStopped),
            (Ok(Outcome::Stopped { .. }), CANCEL) => Some(Ending::Cancelled),
            (Ok(Outcome::Stopped { .. }) | Err(JobError::Interrupted), _) => {
                match self.retry(|| self.store.hand_back(id, attempt)).await {
                    Ok(()) => tracing::info!("handed back on shutdown"),
                    Err(e) => tracing::warn!(error = %e, "hand back failed"),
                }
                None
            }
            (Err(JobError::Failed(msg)), _) => Some(Ending::Failed(msg)),
        };
        match ending {
            Some(e) => match self.retry(|| self.store.finish(id, attempt, &e)).await {
                Ok(()) => {
                    if let Ending::Failed(_) = e {
                        crate::telemetry::job_failed();
                    }
                    tracing::info!(ending = %e, "experiment ended")
                }
                Err(err) => tracing::warn!(error = %err, "could not record the ending"),
            },
            None if why == LOST => tracing::warn!("lease lost; dropped the job"),
            None => {}
        }
    }

    /// Runs a fenced write, retrying with backoff while the database is unreachable
    /// (restarting, failing over) for as long as the lease could still hold; a write
    /// that never lands leaves the experiment to the lease rescue.
    async fn retry<F, Fut>(&self, write: F) -> Result<(), StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.lease_secs + 10.0);
        let mut wait = Duration::from_millis(100);
        loop {
            match write().await {
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "database unreachable; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                r => return r,
            }
        }
    }

    /// Prepares and trains on a blocking thread.
    /// The checkpoint a warm start names (resolved to an epoch when it was submitted).
    async fn warm_start_weights(
        &self,
        ws: &crate::spec::WarmStart,
    ) -> Result<Checkpoint, JobError> {
        let crate::spec::CheckpointRef::Epoch(epoch) = ws.checkpoint else {
            return Err(JobError::Failed(
                "warm start: the checkpoint was not resolved to an epoch at submission".into(),
            ));
        };
        let w = self
            .store
            .checkpoint_weights(ws.experiment, epoch as i32)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => JobError::Failed(format!(
                    "warm start: experiment {} no longer has the checkpoint of epoch {epoch}",
                    ws.experiment
                )),
                e => JobError::Failed(format!("warm start: {e}")),
            })?;
        Checkpoint::from_bytes(&w, None).map_err(|e| JobError::Failed(format!("warm start: {e}")))
    }

    async fn train(
        &self,
        claim: &Claim,
        stop: Arc<AtomicU8>,
        progress: mpsc::Sender<(BatchProgress, DateTime<Utc>)>,
    ) -> Result<Outcome, JobError> {
        let (id, attempt) = (claim.id, claim.attempt);
        let mut spec = crate::spec::from_value(claim.spec.clone())
            .map_err(|e| JobError::Failed(format!("invalid spec: {e}")))?;
        if let Some(d) = self.cfg.device {
            spec.device = d;
        }
        let resume = if claim.epochs_done > 0 {
            let (w, o) = self
                .store
                .resume_point(id)
                .await
                .map_err(|e| JobError::Failed(e.to_string()))?
                .ok_or_else(|| JobError::Failed("no checkpoint to resume from".into()))?;
            Some(
                Checkpoint::from_bytes(&w, Some(&o))
                    .map_err(|e| JobError::Failed(e.to_string()))?,
            )
        } else {
            None
        };
        // A warm start's weights, unless resuming (the checkpoint has weights of its own).
        let warm = match (&spec.warm_start, &resume) {
            (Some(ws), None) => Some(self.warm_start_weights(ws).await?),
            _ => None,
        };
        let (store, cfg, data) = (self.store.clone(), self.cfg.clone(), self.data.clone());
        let handle = Handle::current();
        let span = tracing::Span::current();
        let task = tokio::task::spawn_blocking(move || -> Result<Outcome, JobError> {
            let _job = span.entered();
            let failed = |e: EngineError| JobError::Failed(e.to_string());
            let t0 = Instant::now();
            let uploaded = |id| load_uploaded(&store, &handle, id);
            let (prepared, cached) = data
                .prepared(&spec.dataset, &cfg, &uploaded)
                .map_err(JobError::Failed)?;
            let t_data = t0.elapsed();
            // Planned against the data as loaded: an uploaded dataset's shape and classes
            // are its own.
            let summary = crate::spec::validate_for(&spec, prepared.info.shape())
                .map_err(|e| JobError::Failed(format!("invalid spec: {e}")))?;
            let device = device::select(spec.device).map_err(failed)?;
            let mut trainer = Trainer::new(&spec, &summary, &prepared, &device).map_err(failed)?;
            drop(prepared);
            if let Some(ck) = &resume {
                trainer.resume(ck).map_err(failed)?;
            }
            if let Some(w) = &warm {
                trainer
                    .load_weights(&w.weight_map())
                    .map_err(|e| JobError::Failed(format!("warm start: {e}")))?;
            }
            // Which code trains it, and why when it is not the fused CPU kernels: the
            // first thing to know when an experiment trains slower than expected.
            let path = trainer.path();
            tracing::info!(
                engine = path.name(),
                engine_reason = path.reason(),
                data_cached = cached,
                data_ms = ms(t_data),
                model_ms = ms(t0.elapsed() - t_data),
                "set up"
            );
            let mut obs = JobObserver {
                store,
                handle,
                id,
                attempt,
                keep_all: spec.keep_all_checkpoints,
                stop,
                progress,
                started: None,
            };
            let outcome = trainer.run(&mut obs);
            // The start is stored before the ending, whose fenced write would refuse it.
            if let Some(started) = obs.started.take() {
                let _ = obs.handle.block_on(started);
            }
            match outcome {
                Err(EngineError::Observer(e)) => Err(match e.downcast::<NotStored>() {
                    Ok(n) => match *n {
                        NotStored::LeaseLost => JobError::LeaseLost,
                        NotStored::ShuttingDown(_) => JobError::Interrupted,
                        n @ NotStored::Failed(_) => JobError::Failed(n.to_string()),
                    },
                    Err(e) => JobError::Failed(e.to_string()),
                }),
                r => r.map_err(failed),
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(JobError::Failed(format!(
                "internal error while training: {e}"
            ))),
        }
    }
}

/// Blocking: an uploaded dataset's tensors from the store, as a dataset.
fn load_uploaded(store: &Store, handle: &Handle, id: uuid::Uuid) -> Result<Dataset, String> {
    let t = handle
        .block_on(store.dataset_tensors(id))
        .map_err(|e| format!("loading dataset {id}: {e}"))?;
    let class_names = serde_json::from_value(t.class_names.clone())
        .map_err(|e| format!("dataset {id}: class names: {e}"))?;
    let (channels, rows, cols) = (t.channels as usize, t.height as usize, t.width as usize);
    let split = |images, labels, len: i32| Split {
        images,
        labels,
        len: len as usize,
        channels,
        rows,
        cols,
    };
    Ok(Dataset {
        train: split(t.train_images, t.train_labels, t.train_len),
        test: split(t.test_images, t.test_labels, t.test_len),
        class_names,
        sha256: Some(t.sha256),
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

enum JobError {
    LeaseLost,
    /// Shutting down while an epoch could not be stored (the database is unreachable):
    /// not the experiment's fault, so it goes back to the queue rather than failing.
    Interrupted,
    Failed(String),
}

/// Why an epoch was not stored: the observer's error, which stops the run and comes back
/// through the engine as [`EngineError::Observer`].
#[derive(Debug, thiserror::Error)]
enum NotStored {
    #[error("the lease was lost")]
    LeaseLost,
    /// Shutting down while the database is unreachable.
    #[error("storing the epoch failed while shutting down: {0}")]
    ShuttingDown(StoreError),
    #[error("storing the epoch failed: {0}")]
    Failed(StoreError),
}

impl From<NotStored> for EngineError {
    fn from(n: NotStored) -> Self {
        EngineError::Observer(Box::new(n))
    }
}

/// The engine's observer inside a worker.
struct JobObserver {
    store: Store,
    handle: Handle,
    id: uuid::Uuid,
    attempt: i32,
    keep_all: bool,
    stop: Arc<AtomicU8>,
    progress: mpsc::Sender<(BatchProgress, DateTime<Utc>)>,
    /// Storing `training_started_at`, once the first batch begins.
    started: Option<tokio::task::JoinHandle<()>>,
}

impl JobObserver {
    /// Stores when training began, off the training thread so the batch need not wait.
    fn training_started(&mut self) {
        let (store, id, attempt, at) = (self.store.clone(), self.id, self.attempt, Utc::now());
        self.started = Some(
            self.handle.spawn(
                async move {
                    if let Err(e) = store.mark_training_started(id, attempt, at).await {
                        tracing::warn!(error = %e, "could not record the training start");
                    }
                }
                .in_current_span(),
            ),
        );
    }
}

impl Observer for JobObserver {
    fn on_batch(&mut self, p: &BatchProgress) {
        // Dropped when the forwarder is behind: progress is a hint, epochs are durable.
        let _ = self.progress.try_send((p.clone(), Utc::now()));
    }

    fn on_epoch(&mut self, ckpt: &Checkpoint) -> Result<(), EngineError> {
        if let Some(m) = ckpt.history.last() {
            crate::telemetry::epoch_trained(m.train_seconds, m.images_per_second);
        }
        // A database outage (a restart, a failover) must not cost the run: retry with
        // backoff until the epoch is stored or the lease is known to be lost (recording
        // an epoch twice is harmless: the second is a no-op). A shutdown meanwhile gives
        // up and leaves the experiment to be handed back or rescued.
        let epoch = super::record::new_epoch(ckpt)?;
        let mut wait = Duration::from_millis(100);
        loop {
            let r = self.handle.block_on(self.store.record_epoch(
                self.id,
                self.attempt,
                &epoch,
                self.keep_all,
            ));
            let stop = self.stop.load(Ordering::SeqCst);
            match r {
                Ok(()) => return Ok(()),
                Err(StoreError::LeaseLost) => return Err(NotStored::LeaseLost.into()),
                Err(_) if stop == LOST => return Err(NotStored::LeaseLost.into()),
                Err(e) if e.is_transient() && stop == SHUTDOWN => {
                    return Err(NotStored::ShuttingDown(e).into());
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "storing the epoch failed; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(NotStored::Failed(e).into()),
            }
        }
    }

    /// The engine asks before every batch, so the first call is the moment the first
    /// batch of this attempt begins: data prepared, model built, checkpoint loaded.
    fn should_stop(&mut self) -> bool {
        if self.started.is_none() {
            self.training_started();
        }
        self.stop.load(Ordering::SeqCst) != GO
    }
}

/// Sends progress NOTIFYs (fenced: nothing goes out once the attempt lost its lease,
/// which also tells the job to stop).
async fn forward_progress(
    store: Store,
    id: uuid::Uuid,
    attempt: i32,
    stop: Arc<AtomicU8>,
    mut rx: mpsc::Receiver<(BatchProgress, DateTime<Utc>)>,
) {
    let mut last = Instant::now() - Duration::from_secs(1);
    while let Some((p, at)) = rx.recv().await {
        if p.batch != p.batches && last.elapsed() < Duration::from_millis(100) {
            continue;
        }
        last = Instant::now();
        let payload = serde_json::json!({
            "experiment_id": id, "epoch": p.epoch, "epochs": p.epochs,
            "batch": p.batch, "batches": p.batches, "loss": p.loss,
            "at": at.to_rfc3339_opts(SecondsFormat::Micros, true),
        });
        if let Err(StoreError::LeaseLost) = store
            .notify_progress(id, attempt, &payload.to_string())
            .await
        {
            let _ = stop.compare_exchange(GO, LOST, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}
