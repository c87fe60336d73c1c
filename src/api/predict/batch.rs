//! Dynamic batching: concurrent requests for one model share a forward pass.
//!
//! A forward pass over 64 images costs far less than 64 passes over one: the weights are
//! read once, and the matrix products are large enough for the SIMD kernels and both
//! cores. So each loaded model has one batcher task. It takes the first queued request,
//! then keeps gathering until the batch holds `max_batch` images or `window` has passed,
//! and runs the batch on a blocking thread (never on the async runtime). While that runs,
//! new requests queue and form the next batch, so under load batches fill by themselves.
//!
//! Waiting costs latency, and is pointless when no other request can join: the handler
//! counts requests on their way in (see [`Incoming`]), and a batch with an empty queue
//! and nobody on the way runs at once. A lone client never waits for the window.
//!
//! Images are decoded and checked before they are queued, so one request's bad image never
//! reaches a batch. If the forward fails or panics, every request in the batch gets the
//! error; a reply channel is never left hanging, because a dropped sender wakes its waiter.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::engine::infer::Predictor;

/// What a batcher runs. A request brings u8 images ([`Classify::image_len`] bytes each,
/// `/predict`'s decoded images), which the pass preprocesses with [`Classify::prepare`],
/// or images already preprocessed ([`Classify::input_len`] floats each, the Open Inference
/// Protocol's `FP32` tensors). Either way a forward pass runs over floats, and both kinds
/// of request share it: one probability row per image out.
pub trait Classify: Send + Sync + 'static {
    /// Bytes of one u8 image.
    fn image_len(&self) -> usize;
    /// Floats of one preprocessed image.
    fn input_len(&self) -> usize;
    /// Appends the preprocessed floats of whole u8 images to `dst`.
    fn prepare(&self, images: &[u8], dst: &mut Vec<f32>) -> Result<(), String>;
    /// Probabilities for whole preprocessed images.
    fn classify(&self, x: &[f32]) -> Result<Vec<Vec<f32>>, String>;
}

impl Classify for Predictor {
    fn image_len(&self) -> usize {
        Predictor::image_len(self)
    }

    fn input_len(&self) -> usize {
        Predictor::input_len(self)
    }

    fn prepare(&self, images: &[u8], dst: &mut Vec<f32>) -> Result<(), String> {
        Predictor::prepare(self, images, dst).map_err(|e| e.to_string())
    }

    fn classify(&self, x: &[f32]) -> Result<Vec<Vec<f32>>, String> {
        self.predict_prepared(x).map_err(|e| e.to_string())
    }
}

/// How requests are gathered into batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Longest a batch waits for more requests after its first one.
    pub window: Duration,
    /// Most images in one forward pass (a larger request is split into passes this big).
    pub max_batch: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            window: Duration::from_micros(1000),
            max_batch: 64,
        }
    }
}

/// Batching counters over all models, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    passes: AtomicU64,
    images: AtomicU64,
    requests: AtomicU64,
    largest: AtomicUsize,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Forward passes run.
    pub passes: u64,
    /// Images classified.
    pub images: u64,
    /// Requests answered (a request whose images span passes counts once).
    pub requests: u64,
    /// The most images in one forward pass.
    pub largest: usize,
}

impl Counters {
    pub fn snapshot(&self) -> BatchStats {
        BatchStats {
            passes: self.passes.load(Ordering::Relaxed),
            images: self.images.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
        }
    }
}

/// Requests that have passed the handler's checks but are not queued yet: the ones a
/// batch may still gain by waiting. Held as a guard; dropping it (queued or failed)
/// takes the request off the count.
#[derive(Debug, Default)]
pub struct Incoming(AtomicUsize);

pub struct IncomingGuard(Arc<Incoming>);

impl Incoming {
    pub fn enter(self: &Arc<Self>) -> IncomingGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        IncomingGuard(self.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

impl Drop for IncomingGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a batch gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("the model is no longer being served")]
    Closed,
    #[error("inference failed: {0}")]
    Failed(String),
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, BatchError>>;

/// A request's whole images, end to end.
enum Input {
    /// u8 images, to preprocess.
    Pixels(Vec<u8>),
    /// Images already preprocessed.
    Prepared(Vec<f32>),
}

struct Job {
    input: Input,
    /// How many.
    images: usize,
    reply: Reply,
}

impl Job {
    fn images(&self) -> usize {
        self.images
    }
}

/// The queue in front of one model's batcher task. The task ends when this is dropped.
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    /// Bytes of one u8 image of its model.
    image_len: usize,
    /// Floats of one preprocessed image of its model.
    input_len: usize,
}

impl Batcher {
    /// Starts the batcher task for `predictor` (on the current runtime).
    pub fn start(
        predictor: Arc<dyn Classify>,
        cfg: BatchConfig,
        incoming: Arc<Incoming>,
        counters: Arc<Counters>,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(cfg.max_batch.max(16) * 4);
        let (image_len, input_len) = (predictor.image_len(), predictor.input_len());
        tokio::spawn(run(rx, predictor, cfg, incoming, counters));
        Batcher {
            tx,
            image_len,
            input_len,
        }
    }

    /// Queues whole u8 images (at least one, each of the model's size) and waits for
    /// their probabilities. The guard is released once the request is queued.
    pub async fn predict(
        &self,
        pixels: Vec<u8>,
        guard: IncomingGuard,
    ) -> Result<Vec<Vec<f32>>, BatchError> {
        debug_assert!(!pixels.is_empty() && pixels.len().is_multiple_of(self.image_len));
        let images = pixels.len() / self.image_len;
        self.queue(Input::Pixels(pixels), images, guard).await
    }

    /// Queues whole preprocessed images (at least one, each of the model's input size)
    /// and waits for their probabilities, as [`Batcher::predict`] does.
    pub async fn predict_prepared(
        &self,
        x: Vec<f32>,
        guard: IncomingGuard,
    ) -> Result<Vec<Vec<f32>>, BatchError> {
        debug_assert!(!x.is_empty() && x.len().is_multiple_of(self.input_len));
        let images = x.len() / self.input_len;
        self.queue(Input::Prepared(x), images, guard).await
    }

    async fn queue(
        &self,
        input: Input,
        images: usize,
        guard: IncomingGuard,
    ) -> Result<Vec<Vec<f32>>, BatchError> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Job {
                input,
                images,
                reply,
            })
            .await;
        drop(guard);
        sent.map_err(|_| BatchError::Closed)?;
        rx.await.unwrap_or_else(|_| {
            Err(BatchError::Failed(
                "the inference batch stopped unexpectedly".into(),
            ))
        })
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    predictor: Arc<dyn Classify>,
    cfg: BatchConfig,
    incoming: Arc<Incoming>,
    counters: Arc<Counters>,
) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let deadline = Instant::now() + cfg.window;
        let mut images = first.images();
        let mut jobs = vec![first];
        while images < cfg.max_batch {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if !incoming.any() => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            let Some(job) = next else { break };
            if images + job.images() > cfg.max_batch {
                carried = Some(job);
                break;
            }
            images += job.images();
            jobs.push(job);
        }
        let (p, c) = (predictor.clone(), counters.clone());
        let max = cfg.max_batch;
        // The blocking closure answers every job itself; if it panics, the replies are
        // dropped with it and each waiter is told the batch stopped.
        let _ = tokio::task::spawn_blocking(move || run_batch(&*p, jobs, max, &c)).await;
    }
}

/// Preprocesses the jobs' u8 images, runs every image in forward passes of at most `max`
/// images and answers each job.
fn run_batch(predictor: &dyn Classify, jobs: Vec<Job>, max: usize, counters: &Counters) {
    let len = predictor.input_len();
    let (all, mut failure) = inputs(predictor, &jobs);
    let mut probs = Vec::with_capacity(all.len() / len);
    for chunk in all.chunks(max * len) {
        if failure.is_some() {
            break;
        }
        let n = chunk.len() / len;
        match predictor.classify(chunk) {
            Ok(p) if p.len() == n => probs.extend(p),
            Ok(p) => {
                failure = Some(BatchError::Failed(format!(
                    "{} answers for {n} images",
                    p.len()
                )));
                break;
            }
            Err(e) => {
                failure = Some(BatchError::Failed(e));
                break;
            }
        }
        counters.passes.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::predict_batch(n);
        counters.largest.fetch_max(n, Ordering::Relaxed);
    }
    if failure.is_none() {
        counters
            .images
            .fetch_add(probs.len() as u64, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
    }
    let mut probs = probs.into_iter();
    for job in jobs {
        let answer = match &failure {
            Some(e) => Err(e.clone()),
            None => Ok(probs.by_ref().take(job.images()).collect()),
        };
        let _ = job.reply.send(answer);
    }
}

/// The jobs' images as one run of preprocessed floats (a lone job of floats as it is),
/// or why they could not be preprocessed.
fn inputs<'a>(predictor: &dyn Classify, jobs: &'a [Job]) -> (Cow<'a, [f32]>, Option<BatchError>) {
    if let [
        Job {
            input: Input::Prepared(x),
            ..
        },
    ] = jobs
    {
        return (Cow::Borrowed(x), None);
    }
    let images: usize = jobs.iter().map(Job::images).sum();
    let mut all = Vec::with_capacity(images * predictor.input_len());
    for job in jobs {
        match &job.input {
            Input::Pixels(px) => {
                if let Err(e) = predictor.prepare(px, &mut all) {
                    return (Cow::Owned(Vec::new()), Some(BatchError::Failed(e)));
                }
            }
            Input::Prepared(x) => all.extend_from_slice(x),
        }
    }
    (Cow::Owned(all), None)
}

#[cfg(test)]
mod tests;
