//! SGD, Adam and AdamW updated in place, with the same per-element arithmetic as
//! `engine::optim` (PyTorch's single-tensor code, operation by operation, scalars rounded
//! to f32 where ATen rounds them), so both paths give the same numbers. In place matters:
//! keras-cnn's dense layer has 9.4M weights, and a new tensor per step cost ~30 ms.

use rayon::prelude::*;

use crate::spec::OptimizerSpec;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

/// One parameter's optimizer state.
pub enum Slot {
    None,
    Momentum(Vec<f32>),
    Adam {
        step: u64,
        m: Vec<f32>,
        v: Vec<f32>,
    },
    /// Frozen (`warm_start.freeze`): never updated, no state.
    Frozen,
}

pub struct Optim {
    spec: OptimizerSpec,
    pub slots: Vec<Slot>,
    pub steps: u64,
}

impl Optim {
    /// No optimizer: an inference network's.
    pub fn none() -> Self {
        Optim {
            spec: OptimizerSpec::Sgd {
                learning_rate: 0.0,
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.0,
            },
            slots: Vec::new(),
            steps: 0,
        }
    }

    /// Zeroed state for parameters of the given lengths (a zero momentum buffer continues
    /// exactly as PyTorch's absent one: `0 * momentum + d_p = d_p`).
    pub fn new(spec: &OptimizerSpec, lens: &[usize]) -> Self {
        let slots = lens
            .iter()
            .map(|&n| match spec {
                OptimizerSpec::Sgd { momentum, .. } if *momentum != 0.0 => {
                    Slot::Momentum(vec![0.0; n])
                }
                OptimizerSpec::Sgd { .. } => Slot::None,
                _ => Slot::Adam {
                    step: 0,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                },
            })
            .collect();
        Optim {
            spec: spec.clone(),
            slots,
            steps: 0,
        }
    }

    /// Leaves parameter `i` as it is from now on.
    pub fn freeze(&mut self, i: usize) {
        self.slots[i] = Slot::Frozen;
    }

    /// The rate of the steps from now on (a schedule's).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.spec.set_learning_rate(lr);
    }

    /// Updates every parameter from its gradient, except those marked `done` (updated by
    /// their layer already).
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], done: &[bool]) {
        for (((p, g), slot), &done) in params.iter_mut().zip(grads).zip(&mut self.slots).zip(done) {
            if done || matches!(slot, Slot::Frozen) {
                continue;
            }
            match (&self.spec, slot) {
                (
                    &OptimizerSpec::Sgd {
                        learning_rate,
                        momentum,
                        nesterov,
                        weight_decay,
                    },
                    slot,
                ) => {
                    let lr = -learning_rate as f32;
                    let wd = weight_decay as f32;
                    let mom = momentum as f32;
                    match slot {
                        Slot::Momentum(buf) => p
                            .par_chunks_mut(CHUNK)
                            .zip(g.par_chunks(CHUNK))
                            .zip(buf.par_chunks_mut(CHUNK))
                            .for_each(|((p, g), b)| {
                                for ((p, &g), b) in p.iter_mut().zip(g).zip(b) {
                                    let d = if wd != 0.0 { g + *p * wd } else { g };
                                    *b = *b * mom + d;
                                    let d = if nesterov { d + *b * mom } else { *b };
                                    *p += d * lr;
                                }
                            }),
                        _ => p
                            .par_chunks_mut(CHUNK)
                            .zip(g.par_chunks(CHUNK))
                            .for_each(|(p, g)| {
                                for (p, &g) in p.iter_mut().zip(g) {
                                    let d = if wd != 0.0 { g + *p * wd } else { g };
                                    *p += d * lr;
                                }
                            }),
                    }
                }
                (
                    &OptimizerSpec::Adam {
                        learning_rate,
                        betas,
                        eps,
                        weight_decay,
                    }
                    | &OptimizerSpec::Adamw {
                        learning_rate,
                        betas,
                        eps,
                        weight_decay,
                    },
                    Slot::Adam { step, m, v },
                ) => {
                    let decoupled = matches!(self.spec, OptimizerSpec::Adamw { .. });
                    let h = (learning_rate, betas, eps, weight_decay, decoupled);
                    adam(p, g, step, m, v, h)
                }
                _ => unreachable!("slots are made from the spec"),
            }
        }
        self.steps += 1;
    }
}

/// `(lr, betas, eps, weight_decay, decoupled)`: AdamW when decoupled.
type AdamHyper = (f64, [f64; 2], f64, f64, bool);

fn adam(
    p: &mut [f32],
    g: &[f32],
    step: &mut u64,
    m: &mut [f32],
    v: &mut [f32],
    (lr, [beta1, beta2], eps, weight_decay, decoupled): AdamHyper,
) {
    *step += 1;
    let t = *step as f64;
    let step_size = lr / (1.0 - beta1.powf(t));
    let bc2_sqrt = (1.0 - beta2.powf(t)).powf(0.5) as f32;
    let neg_step = -step_size as f32;
    let decay = (1.0 - lr * weight_decay) as f32;
    let wd = weight_decay as f32;
    let w = (1.0 - beta1) as f32;
    let one_minus_w = (1.0 - w) as f64 as f32;
    let b2 = beta2 as f32;
    let one_minus_b2 = (1.0 - beta2) as f32;
    let eps = eps as f32;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                let mut g = g;
                if weight_decay != 0.0 {
                    if decoupled {
                        *p *= decay;
                    } else {
                        g += *p * wd;
                    }
                }
                // exp_avg.lerp_(grad, 1 - beta1), ATen's two-sided formula.
                let diff = g - *m;
                *m = if w.abs() < 0.5 {
                    *m + diff * w
                } else {
                    g - diff * one_minus_w
                };
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                *v = *v * b2 + (g * one_minus_b2) * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p += (*m * neg_step) / denom;
            }
        });
}
