//! The spec's `lr_schedule` and `early_stopping` as arithmetic.
//!
//! The rates are `torch.optim.lr_scheduler`'s, operation for operation in f64 (PyTorch
//! computes them in Python floats): the chained form each class's `get_lr` uses, the
//! closed form where `SequentialLR` restarts a schedule after the warmup, and
//! `ReduceLROnPlateau`'s bookkeeping. `tests/it/schedules.rs` compares every epoch's
//! rate with PyTorch's. Early stopping is Keras's `EarlyStopping.on_epoch_end`.
//!
//! Both are functions of the epochs' metrics only. A resumed run rebuilds them by
//! replaying its stored history ([`LrScheduler::replay`], [`early_stop`]), so it carries
//! on with the rate and the patience count an uninterrupted run would have had.

use super::metrics::EpochMetrics;
use crate::spec::{EarlyStopping, LrSchedule, Monitor};

/// A metric's value in an epoch's figures (`None` when the epoch does not have it).
pub fn metric(m: &EpochMetrics, monitor: Monitor) -> Option<f64> {
    match monitor {
        Monitor::ValLoss => m.val_loss,
        Monitor::ValAccuracy => m.val_accuracy,
        Monitor::TestLoss => m.test_loss,
        Monitor::TestAccuracy => m.test_accuracy,
        Monitor::TrainLoss => Some(m.train_loss),
        Monitor::TrainAccuracy => Some(m.train_accuracy),
    }
}

/// `ReduceLROnPlateau`'s state.
#[derive(Debug, Clone)]
struct Plateau {
    best: f64,
    bad_epochs: u32,
    cooldown_left: u32,
}

/// The learning rate of the next epoch, stepped after each one.
#[derive(Debug, Clone)]
pub struct LrScheduler {
    spec: Option<LrSchedule>,
    /// The optimizer's `learning_rate` (PyTorch's `base_lr`).
    base: f64,
    /// The rate the next epoch trains with (`param_group["lr"]`).
    lr: f64,
    /// Epochs stepped so far (PyTorch's `last_epoch` of the whole sequence).
    stepped: u32,
    plateau: Option<Plateau>,
}

impl LrScheduler {
    /// The scheduler before the first epoch.
    pub fn new(spec: Option<&LrSchedule>, base: f64) -> Self {
        let mut s = LrScheduler {
            spec: spec.cloned(),
            base,
            lr: base,
            stepped: 0,
            plateau: None,
        };
        match s.spec.as_ref().and_then(LrSchedule::linear_warmup) {
            // LinearLR's initial step: `lr * start_factor`.
            Some(w) => s.lr = base * w.start_factor,
            None => s.start_main(),
        }
        s
    }

    /// The scheduler after the epochs of `history`: what a resumed run continues with.
    pub fn replay(spec: Option<&LrSchedule>, base: f64, history: &[EpochMetrics]) -> Self {
        let mut s = LrScheduler::new(spec, base);
        for m in history {
            s.step(m);
        }
        s
    }

    /// The rate for the next epoch.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Epochs of warmup (0 without).
    fn warmup(&self) -> u32 {
        self.spec
            .as_ref()
            .and_then(LrSchedule::linear_warmup)
            .map_or(0, |w| w.epochs)
    }

    /// The main schedule at its epoch 0: `SequentialLR` calls `step(0)`, which takes the
    /// closed form where the class has one.
    fn start_main(&mut self) {
        let base = self.base;
        self.lr = match self.spec {
            Some(LrSchedule::Cosine { eta_min, .. }) => {
                eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * 0.0).cos()) / 2.0
            }
            // StepLR and ExponentialLR: `base_lr * gamma ** 0`.
            Some(LrSchedule::Step { gamma, .. } | LrSchedule::Exponential { gamma, .. }) => {
                base * gamma.powf(0.0)
            }
            _ => base,
        };
        if let Some(LrSchedule::ReduceOnPlateau { monitor, .. }) = self.spec {
            self.plateau = Some(Plateau {
                best: if monitor.higher_is_better() {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                },
                bad_epochs: 0,
                cooldown_left: 0,
            });
        }
    }

    /// Steps after an epoch whose figures are `m` (the plateau schedule reads its metric).
    pub fn step(&mut self, m: &EpochMetrics) {
        self.stepped += 1;
        let warmup = self.warmup();
        let Some(spec) = self.spec.clone() else {
            return;
        };
        if self.stepped < warmup || (warmup > 0 && matches!(spec, LrSchedule::Constant { .. })) {
            // LinearLR's chained form; after `total_iters` it keeps the rate. A constant
            // schedule is LinearLR alone, with no milestone.
            let w = spec.linear_warmup().expect("warmup > 0");
            let (start, end, total) = (w.start_factor, 1.0, f64::from(w.epochs));
            let e = f64::from(self.stepped);
            if self.stepped <= w.epochs {
                self.lr *= 1.0 + (end - start) / (total * start + (e - 1.0) * (end - start));
            }
            return;
        }
        if self.stepped == warmup && warmup > 0 {
            self.start_main();
            return;
        }
        // The main schedule's own epoch count (`last_epoch` after this step).
        let t = self.stepped - warmup;
        match spec {
            LrSchedule::Constant { .. } => {}
            LrSchedule::Step {
                step_size, gamma, ..
            } => {
                if t.is_multiple_of(step_size) {
                    self.lr *= gamma;
                }
            }
            LrSchedule::Exponential { gamma, .. } => self.lr *= gamma,
            LrSchedule::Cosine { t_max, eta_min, .. } => {
                use std::f64::consts::PI;
                let (t, tm) = (i64::from(t), i64::from(t_max));
                self.lr = if (t - 1 - tm).rem_euclid(2 * tm) == 0 {
                    self.lr + (self.base - eta_min) * (1.0 - (PI / tm as f64).cos()) / 2.0
                } else {
                    (1.0 + (PI * t as f64 / tm as f64).cos())
                        / (1.0 + (PI * (t - 1) as f64 / tm as f64).cos())
                        * (self.lr - eta_min)
                        + eta_min
                };
            }
            LrSchedule::ReduceOnPlateau {
                monitor,
                factor,
                patience,
                min_lr,
                threshold,
                cooldown,
                ..
            } => {
                let p = self.plateau.as_mut().expect("made by start_main");
                // A missing metric (validated away) counts as no improvement.
                let current = metric(m, monitor).unwrap_or(f64::NAN);
                let better = if monitor.higher_is_better() {
                    current > p.best * (threshold + 1.0)
                } else {
                    current < p.best * (1.0 - threshold)
                };
                if better {
                    p.best = current;
                    p.bad_epochs = 0;
                } else {
                    p.bad_epochs += 1;
                }
                if p.cooldown_left > 0 {
                    p.cooldown_left -= 1;
                    p.bad_epochs = 0;
                }
                if p.bad_epochs > patience {
                    let new = (self.lr * factor).max(min_lr);
                    // PyTorch's eps (1e-8): smaller changes are not made.
                    if self.lr - new > 1e-8 {
                        self.lr = new;
                    }
                    p.cooldown_left = cooldown;
                    p.bad_epochs = 0;
                }
            }
        }
    }
}

/// Where Keras's `EarlyStopping` stopped a run whose epochs so far are `history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyStop {
    /// The last epoch trained.
    pub epoch: u32,
    /// The epoch with the best monitored value (Keras's `best_epoch`, 1-based here).
    pub best_epoch: u32,
}

/// Keras's bookkeeping over `history`: the best epoch so far, and whether the last epoch
/// ended training (`stop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    pub best_epoch: Option<u32>,
    pub stop: bool,
}

/// Replays `EarlyStopping.on_epoch_end` over `history` (baseline none, start_from_epoch
/// 0). An epoch whose metric is missing is skipped, as Keras skips it.
pub fn patience(es: &EarlyStopping, history: &[EpochMetrics]) -> Patience {
    let up = es.monitor.higher_is_better();
    // Keras starts from `best = None`: the first epoch with the metric always improves.
    let mut best: Option<f64> = None;
    let mut best_epoch = None;
    let mut wait = 0u32;
    let mut stop = false;
    for (i, m) in history.iter().enumerate() {
        stop = false;
        let Some(current) = metric(m, es.monitor) else {
            continue;
        };
        wait += 1;
        // `monitor_op(current - min_delta, best)` with min_delta negated for `less`.
        let improved = match best {
            None => true,
            Some(b) if up => current - es.min_delta > b,
            Some(b) => current + es.min_delta < b,
        };
        if improved {
            best = Some(current);
            best_epoch = Some(m.epoch);
            wait = 0;
            continue;
        }
        // Keras: `if self.wait >= self.patience and epoch > 0` (its epochs count from 0).
        if wait >= es.patience && i > 0 {
            stop = true;
        }
    }
    Patience { best_epoch, stop }
}

/// Whether early stopping ends the run after the last epoch of `history`.
pub fn early_stop(es: Option<&EarlyStopping>, history: &[EpochMetrics]) -> Option<EarlyStop> {
    let es = es?;
    let p = patience(es, history);
    let last = history.last()?.epoch;
    p.stop.then(|| EarlyStop {
        epoch: last,
        best_epoch: p.best_epoch.unwrap_or(last),
    })
}

/// The epoch the `best` checkpoint names after the epochs of `history`: with early
/// stopping, Keras's best epoch of its metric; otherwise the lowest validation loss (test
/// loss without a split, training loss without either), the earliest of equals.
pub fn best_epoch(es: Option<&EarlyStopping>, history: &[EpochMetrics]) -> u32 {
    let last = history.last().map_or(0, |m| m.epoch);
    if let Some(es) = es {
        return patience(es, history).best_epoch.unwrap_or(last);
    }
    let key = |m: &EpochMetrics| m.val_loss.or(m.test_loss).unwrap_or(m.train_loss);
    let mut best: Option<&EpochMetrics> = None;
    for m in history {
        // A NaN loss is never better (PostgreSQL sorted it last when it chose).
        if best.is_none_or(|b| key(m) < key(b) || (key(b).is_nan() && !key(m).is_nan())) {
            best = Some(m);
        }
    }
    best.map_or(last, |m| m.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(val: &[f64]) -> Vec<EpochMetrics> {
        val.iter()
            .enumerate()
            .map(|(i, &v)| EpochMetrics {
                epoch: i as u32 + 1,
                train_loss: v,
                train_accuracy: 0.5,
                val_loss: Some(v),
                val_accuracy: None,
                test_loss: None,
                test_accuracy: None,
                train_seconds: 0.0,
                images_per_second: 0.0,
                learning_rate: None,
            })
            .collect()
    }

    #[test]
    fn patience_zero_stops_at_the_first_epoch_that_does_not_improve() {
        let es = EarlyStopping {
            monitor: Monitor::ValLoss,
            patience: 0,
            min_delta: 0.0,
            restore_best: false,
        };
        let h = epochs(&[1.0, 0.5, 0.6, 0.4]);
        assert_eq!(early_stop(Some(&es), &h[..2]), None);
        assert_eq!(
            early_stop(Some(&es), &h[..3]),
            Some(EarlyStop {
                epoch: 3,
                best_epoch: 2
            })
        );
    }

    #[test]
    fn step_schedule_multiplies_every_step_size_epochs() {
        let s = LrSchedule::Step {
            step_size: 2,
            gamma: 0.5,
            linear_warmup: None,
        };
        let h = epochs(&[1.0; 5]);
        let rates: Vec<f64> = (0..5)
            .map(|k| LrScheduler::replay(Some(&s), 0.1, &h[..k]).lr())
            .collect();
        assert_eq!(rates, [0.1, 0.1, 0.05, 0.05, 0.025]);
    }
}
