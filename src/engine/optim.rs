//! Optimizers that reproduce PyTorch 2.x's `torch.optim.SGD`, `Adam` and `AdamW`.
//!
//! candle-nn ships only plain SGD and AdamW: no momentum, no Nesterov, no Adam with L2
//! weight decay, and its optimizers keep their state private, so a resumed run would
//! restart the moments from zero. Here every update follows PyTorch's single-tensor code
//! (`_single_tensor_sgd`, `_single_tensor_adam`) operation by operation, with scalars
//! rounded to the tensor dtype where ATen rounds them, and the state is exposed under
//! PyTorch's state keys so a checkpoint can carry it.
//!
//! Two PyTorch details worth knowing:
//! - Adam counts steps per parameter (`state["step"]`): a parameter without a gradient is
//!   skipped and its bias corrections lag behind. The count is saved as `"{param}.step"`.
//! - SGD's momentum buffer starts as a copy of the first (weight-decayed) gradient, not as
//!   zeros. A parameter that never had one is saved with a zero buffer, which continues
//!   the same way (`0 * momentum + d_p = d_p`).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var, bail};

use crate::spec::OptimizerSpec;

/// Per-parameter state, as in PyTorch's `optimizer.state[p]`.
enum State {
    /// Plain SGD keeps nothing.
    None,
    /// SGD with momentum: `momentum_buffer`, absent until the first gradient.
    Momentum(Option<Tensor>),
    /// Adam/AdamW.
    Adam(AdamState),
}

struct AdamState {
    /// This parameter's own step count.
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

struct SgdHyper {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

struct AdamHyper {
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    /// AdamW: `param *= 1 - lr * weight_decay` instead of L2 in the gradient.
    decoupled: bool,
}

enum Rule {
    Sgd(SgdHyper),
    Adam(AdamHyper),
}

impl Rule {
    fn new(spec: &OptimizerSpec) -> Self {
        match *spec {
            OptimizerSpec::Sgd {
                learning_rate,
                momentum,
                nesterov,
                weight_decay,
            } => Rule::Sgd(SgdHyper {
                lr: learning_rate,
                momentum,
                nesterov,
                weight_decay,
            }),
            OptimizerSpec::Adam {
                learning_rate,
                betas,
                eps,
                weight_decay,
            } => Rule::Adam(AdamHyper {
                lr: learning_rate,
                betas,
                eps,
                weight_decay,
                decoupled: false,
            }),
            OptimizerSpec::Adamw {
                learning_rate,
                betas,
                eps,
                weight_decay,
            } => Rule::Adam(AdamHyper {
                lr: learning_rate,
                betas,
                eps,
                weight_decay,
                decoupled: true,
            }),
        }
    }

    fn initial_state(&self, var: &Var) -> Result<State> {
        Ok(match self {
            Rule::Sgd(h) if h.momentum != 0.0 => State::Momentum(None),
            Rule::Sgd(_) => State::None,
            // PyTorch creates these at a parameter's first gradient; zeros with step 0 are
            // the same thing.
            Rule::Adam(_) => State::Adam(AdamState {
                step: 0,
                exp_avg: var.zeros_like()?,
                exp_avg_sq: var.zeros_like()?,
            }),
        })
    }
}

struct Param {
    name: String,
    var: Var,
    state: State,
}

/// SGD, Adam or AdamW over named variables, updated in place with [`Var::set`].
pub struct Optimizer {
    rule: Rule,
    params: Vec<Param>,
    steps: u64,
}

impl Optimizer {
    /// `params`: (state-dict name, variable) pairs, e.g. ("conv1.weight", var).
    pub fn new(spec: &OptimizerSpec, params: Vec<(String, Var)>) -> Result<Self> {
        let rule = Rule::new(spec);
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            if out.iter().any(|p: &Param| p.name == name) {
                bail!("optimizer: parameter {name} is listed twice");
            }
            let state = rule.initial_state(&var)?;
            out.push(Param { name, var, state });
        }
        Ok(Self {
            rule,
            params: out,
            steps: 0,
        })
    }

    /// One update from the gradients of a backward pass. A parameter without a gradient in
    /// `grads` is left unchanged (as PyTorch skips params whose .grad is None).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            if p.var.elem_count() == 0 {
                continue;
            }
            let grad = grad.detach();
            let param = p.var.as_tensor().detach();
            let updated = match (&self.rule, &mut p.state) {
                (Rule::Sgd(h), State::None) => sgd(&param, grad, None, h)?,
                (Rule::Sgd(h), State::Momentum(buf)) => sgd(&param, grad, Some(buf), h)?,
                (Rule::Adam(h), State::Adam(s)) => adam(param, grad, s, h)?,
                _ => unreachable!("the state is made from the rule"),
            };
            p.var.set(&updated)?;
        }
        self.steps += 1;
        Ok(())
    }

    /// The rate of the steps from now on (a schedule's).
    pub fn set_learning_rate(&mut self, lr: f64) {
        match &mut self.rule {
            Rule::Sgd(h) => h.lr = lr,
            Rule::Adam(h) => h.lr = lr,
        }
    }

    /// Number of steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The optimizer state as named tensors for a checkpoint beside the weights, named after
    /// PyTorch's state keys: "{param}.momentum_buffer" (SGD with momentum), "{param}.step"
    /// (a 0-dim f32 count, as in PyTorch), "{param}.exp_avg" and "{param}.exp_avg_sq"
    /// (Adam/AdamW). Plain SGD has no tensors.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for p in &self.params {
            match &p.state {
                State::None => {}
                State::Momentum(buf) => {
                    let buf = match buf {
                        Some(b) => b.clone(),
                        None => p.var.zeros_like()?,
                    };
                    out.push((format!("{}.momentum_buffer", p.name), buf));
                }
                State::Adam(s) => {
                    let step = Tensor::new(s.step as f32, p.var.device())?;
                    out.push((format!("{}.step", p.name), step));
                    out.push((format!("{}.exp_avg", p.name), s.exp_avg.clone()));
                    out.push((format!("{}.exp_avg_sq", p.name), s.exp_avg_sq.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Restores what `state_tensors` and `steps` returned, so a resumed run continues exactly
    /// as if uninterrupted. Errors on a missing or mis-shaped tensor, naming it; nothing is
    /// changed then. Tensors of other names are ignored.
    pub fn load_state(&mut self, steps: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut states = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let like = |key: &str| -> Result<Tensor> {
                let name = format!("{}.{key}", p.name);
                let Some(t) = tensors.get(&name) else {
                    bail!("optimizer state has no tensor {name}")
                };
                if t.dims() != p.var.dims() || t.dtype() != p.var.dtype() {
                    bail!(
                        "optimizer state tensor {name} is {:?} {:?}, the parameter is {:?} {:?}",
                        t.dtype(),
                        t.dims(),
                        p.var.dtype(),
                        p.var.dims()
                    );
                }
                t.to_device(p.var.device())
            };
            states.push(match &p.state {
                State::None => State::None,
                State::Momentum(_) => State::Momentum(Some(like("momentum_buffer")?)),
                State::Adam(_) => {
                    let name = format!("{}.step", p.name);
                    let Some(t) = tensors.get(&name) else {
                        bail!("optimizer state has no tensor {name}")
                    };
                    let step = t.to_dtype(DType::F64)?.to_vec0::<f64>().map_err(|_| {
                        candle_core::Error::Msg(format!(
                            "optimizer state tensor {name} is not a scalar"
                        ))
                    })?;
                    if !(step >= 0.0 && step.fract() == 0.0) {
                        bail!("optimizer state tensor {name} is {step}, not a step count");
                    }
                    State::Adam(AdamState {
                        step: step as u64,
                        exp_avg: like("exp_avg")?,
                        exp_avg_sq: like("exp_avg_sq")?,
                    })
                }
            });
        }
        for (p, state) in self.params.iter_mut().zip(states) {
            p.state = state;
        }
        self.steps = steps;
        Ok(())
    }
}

/// `x * c` with `c` rounded to the tensor's dtype, as ATen's `mul(Scalar)` / `alpha=` do.
fn scale(x: &Tensor, c: f64) -> Result<Tensor> {
    x.affine(c, 0.0)
}

/// `x / c` as a true division (candle's `Tensor / f64` multiplies by `1 / c` instead).
fn div_scalar(x: &Tensor, c: f64) -> Result<Tensor> {
    x.broadcast_div(&Tensor::new(c, x.device())?.to_dtype(x.dtype())?)
}

/// `_single_tensor_sgd` with dampening 0. Returns the new parameter value.
fn sgd(
    param: &Tensor,
    grad: Tensor,
    buf: Option<&mut Option<Tensor>>,
    h: &SgdHyper,
) -> Result<Tensor> {
    let &SgdHyper {
        lr,
        momentum,
        nesterov,
        weight_decay,
    } = h;
    // grad = grad.add(param, alpha=weight_decay)
    let mut d_p = if weight_decay != 0.0 {
        (grad + scale(param, weight_decay)?)?
    } else {
        grad
    };
    if let Some(buf) = buf {
        let b = match buf.take() {
            // buf = grad.detach().clone()
            None => d_p.copy()?,
            // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            Some(b) => (scale(&b, momentum)? + &d_p)?,
        };
        d_p = if nesterov {
            (&d_p + scale(&b, momentum)?)?
        } else {
            b.clone()
        };
        *buf = Some(b);
    }
    // param.add_(grad, alpha=-lr)
    param + scale(&d_p, -lr)?
}

/// `_single_tensor_adam` (non-amsgrad, non-capturable). Returns the new parameter value.
fn adam(mut param: Tensor, mut grad: Tensor, s: &mut AdamState, h: &AdamHyper) -> Result<Tensor> {
    let [beta1, beta2] = h.betas;
    s.step += 1;
    if h.weight_decay != 0.0 {
        if h.decoupled {
            // param.mul_(1 - lr * weight_decay)
            param = scale(&param, 1.0 - h.lr * h.weight_decay)?;
        } else {
            // grad = grad.add(param, alpha=weight_decay)
            grad = (grad + scale(&param, h.weight_decay)?)?;
        }
    }
    // exp_avg.lerp_(grad, 1 - beta1), with ATen's two-sided formula (weight in f32).
    let w = (1.0 - beta1) as f32;
    let diff = (&grad - &s.exp_avg)?;
    s.exp_avg = if w.abs() < 0.5 {
        (&s.exp_avg + scale(&diff, w as f64)?)?
    } else {
        (&grad - scale(&diff, (1.0 - w) as f64)?)?
    };
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    s.exp_avg_sq = (scale(&s.exp_avg_sq, beta2)? + scale(&grad, 1.0 - beta2)?.mul(&grad)?)?;

    // Python floats (f64), as PyTorch computes them from the step count.
    let t = s.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(t);
    let bias_correction2 = 1.0 - beta2.powf(t);
    let step_size = h.lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.powf(0.5);

    // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    let denom = div_scalar(&s.exp_avg_sq.sqrt()?, bias_correction2_sqrt)?.affine(1.0, h.eps)?;
    // param.addcdiv_(exp_avg, denom, value=-step_size): param + (value * exp_avg) / denom
    param + (scale(&s.exp_avg, -step_size)? / denom)?
}
