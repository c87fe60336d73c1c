//! One worker slot's loop and one job's life, on the supervisor's side.
//!
//! A slot claims an experiment, starts a job process for it ([`super::supervise`]) and
//! keeps, for as long as that process runs, everything that needs the database: the
//! heartbeat that renews the lease (its answer carries the cancel flag, and a cancel
//! NOTIFY short-cuts the wait), progress NOTIFYs, and every fenced write. When the
//! process has ended, the slot decides what its attempt comes to ([`decide`]) and writes
//! that.
//!
//! Everything a job does runs inside one `job` span (experiment id, attempt, account),
//! and so do the job process's own log lines, so every line logged for the job names it
//! and the fields are not repeated on each line.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument;

use super::WorkerConfig;
use super::supervise::{Control, Death, Report};
use super::wire::{JobOutcome, StopWhy};
use crate::shutdown::stopped;
use crate::store::listen::{Hub, Signal};
use crate::store::queue::{Claim, Ending};
use crate::store::{Store, StoreError};

/// Why training should stop between batches.
pub(super) const GO: u8 = 0;
pub(super) const CANCEL: u8 = 1;
pub(super) const SHUTDOWN: u8 = 2;
pub(super) const LOST: u8 = 3;

pub(super) struct Worker {
    pub store: Store,
    pub hub: Hub,
    pub cfg: Arc<WorkerConfig>,
    pub owner: String,
    /// Whether to claim experiments that ask for CUDA.
    pub cuda: bool,
}

/// What an attempt comes to once its process has ended.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    Finish(Ending),
    /// Back to the queue, unspent (a shutdown).
    HandBack,
    /// Nothing more to write: another worker holds the experiment now.
    Drop,
    /// Back to the queue as a rescue (counted against `max_rescues`): the process died
    /// of something that was not the job's doing.
    Rescue(String),
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
        let (control, outgoing) = Control::new();
        let control = Arc::new(control);

        // Heartbeat, cancel notifications and shutdown, until the job ends.
        let (done_tx, mut done_rx) = watch::channel(false);
        let watcher = {
            let (store, control, cfg) = (self.store.clone(), control.clone(), self.cfg.clone());
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
                            Ok(b) if b.cancel_requested => control.set(CANCEL),
                            Ok(_) => {}
                            Err(StoreError::LeaseLost) => control.set(LOST),
                            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                        },
                        s = signals.recv() => if let Ok(Signal::Cancel(c)) = s && c == id {
                            control.set(CANCEL);
                        },
                        _ = stopped(&mut shutdown), if !shutting_down => {
                            shutting_down = true;
                            control.set(SHUTDOWN);
                        }
                        _ = done_rx.changed() => return,
                    }
                }
            }.in_current_span())
        };

        let report = self.supervise(&claim, control.clone(), outgoing).await;
        let _ = done_tx.send(true);
        let _ = watcher.await;

        let why = control.why();
        let next = decide(&report, why, self.cfg.job_memory_bytes);
        match next {
            Next::Finish(e) => match self.retry(|| self.store.finish(id, attempt, &e)).await {
                Ok(()) => {
                    if let Ending::Failed(_) = e {
                        crate::telemetry::job_failed();
                    }
                    tracing::info!(ending = %e, "experiment ended")
                }
                Err(err) => tracing::warn!(error = %err, "could not record the ending"),
            },
            Next::HandBack => match self.retry(|| self.store.hand_back(id, attempt)).await {
                Ok(()) => tracing::info!("handed back on shutdown"),
                Err(e) => tracing::warn!(error = %e, "hand back failed"),
            },
            Next::Rescue(why) => match self.retry(|| self.store.release_lost(id, attempt)).await {
                Ok(()) => {
                    crate::telemetry::jobs_rescued(1);
                    tracing::warn!(cause = %why, "the job process died; the experiment goes back to the queue")
                }
                Err(e) => tracing::warn!(error = %e, cause = %why, "could not requeue a lost job"),
            },
            Next::Drop if why == LOST => tracing::warn!("lease lost; dropped the job"),
            Next::Drop => tracing::warn!("lease lost while storing; dropped the job"),
        }
    }

    /// Runs a fenced write, retrying with backoff while the database is unreachable
    /// (restarting, failing over) for as long as the lease could still hold; a write
    /// that never lands leaves the experiment to the lease rescue.
    pub(super) async fn retry<F, Fut>(&self, write: F) -> Result<(), StoreError>
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
}

impl Control {
    /// The stop reason, as last set.
    pub(super) fn why(&self) -> u8 {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sets the stop reason if none is set yet, and tells the job process.
    pub(super) fn set(&self, why: u8) {
        if self
            .stop
            .compare_exchange(GO, why, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let why = match why {
                CANCEL => StopWhy::Cancel,
                SHUTDOWN => StopWhy::Shutdown,
                _ => StopWhy::Lost,
            };
            self.send(super::wire::ToJob::Stop { why }, Vec::new());
        }
    }
}

/// What an attempt comes to, from what its process reported and how it ended.
pub(super) fn decide(r: &Report, why: u8, budget: u64) -> Next {
    use super::supervise::NotStored;
    if why == LOST || matches!(r.not_stored, Some(NotStored::LeaseLost)) {
        return Next::Drop;
    }
    match &r.outcome {
        Some(JobOutcome::Completed) => Next::Finish(Ending::Succeeded),
        Some(JobOutcome::EarlyStopped) => Next::Finish(Ending::EarlyStopped),
        Some(JobOutcome::TimeLimit { epochs }) if *epochs > 0 => Next::Finish(Ending::TimeLimit),
        Some(JobOutcome::TimeLimit { .. }) => Next::Finish(Ending::Failed(format!(
            "it reached its time limit of {} before an epoch ended",
            seconds(r.time_limit_secs.unwrap_or(0.0))
        ))),
        Some(JobOutcome::Failed { message }) => Next::Finish(Ending::Failed(message.clone())),
        Some(JobOutcome::Stopped) => match &r.not_stored {
            Some(NotStored::Failed(e)) => {
                Next::Finish(Ending::Failed(format!("storing the epoch failed: {e}")))
            }
            Some(NotStored::ShuttingDown) => Next::HandBack,
            _ if why == CANCEL => Next::Finish(Ending::Cancelled),
            _ => Next::HandBack,
        },
        None => match &r.death {
            Death::MemoryLimit => Next::Finish(Ending::Failed(format!(
                "its process exceeded its {} MiB memory limit while {}",
                thousands(budget >> 20),
                r.phase
            ))),
            Death::Other(_) if why == CANCEL => Next::Finish(Ending::Cancelled),
            Death::Other(d) => Next::Rescue(d.clone()),
        },
    }
}

/// `1024` as `1,024`.
pub(super) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn seconds(s: f64) -> String {
    if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{} min", s / 60.0)
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::super::supervise::NotStored;
    use super::super::wire::Phase;
    use super::*;

    fn report(outcome: Option<JobOutcome>, death: Death) -> Report {
        Report {
            outcome,
            not_stored: None,
            phase: Phase::PreparingData,
            death,
            time_limit_secs: Some(120.0),
        }
    }

    #[test]
    fn a_death_by_its_own_limit_is_final_and_says_where() {
        let r = report(None, Death::MemoryLimit);
        assert_eq!(
            decide(&r, GO, 1024 << 20),
            Next::Finish(Ending::Failed(
                "its process exceeded its 1,024 MiB memory limit while preparing the data".into()
            ))
        );
    }

    #[test]
    fn any_other_death_is_a_rescue_unless_cancelled_or_lost() {
        let r = report(None, Death::Other("killed by signal 9".into()));
        assert_eq!(
            decide(&r, GO, 1 << 30),
            Next::Rescue("killed by signal 9".into())
        );
        assert_eq!(
            decide(&r, SHUTDOWN, 1 << 30),
            Next::Rescue("killed by signal 9".into())
        );
        assert_eq!(decide(&r, CANCEL, 1 << 30), Next::Finish(Ending::Cancelled));
        assert_eq!(decide(&r, LOST, 1 << 30), Next::Drop);
    }

    #[test]
    fn a_stopped_job_ends_as_its_stop_reason_says() {
        let r = report(Some(JobOutcome::Stopped), Death::Other("exit 0".into()));
        assert_eq!(decide(&r, CANCEL, 1), Next::Finish(Ending::Cancelled));
        assert_eq!(decide(&r, SHUTDOWN, 1), Next::HandBack);
        let mut lost = report(Some(JobOutcome::Stopped), Death::Other("exit 0".into()));
        lost.not_stored = Some(NotStored::LeaseLost);
        assert_eq!(decide(&lost, GO, 1), Next::Drop);
    }

    #[test]
    fn a_time_limit_keeps_the_epochs_or_fails_without_one() {
        let r = report(
            Some(JobOutcome::TimeLimit { epochs: 2 }),
            Death::Other("exit 0".into()),
        );
        assert_eq!(decide(&r, GO, 1), Next::Finish(Ending::TimeLimit));
        let none = report(
            Some(JobOutcome::TimeLimit { epochs: 0 }),
            Death::Other("exit 0".into()),
        );
        assert_eq!(
            decide(&none, GO, 1),
            Next::Finish(Ending::Failed(
                "it reached its time limit of 2 min before an epoch ended".into()
            ))
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(1024), "1,024");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
