//! Engine-level helpers for the tests that train in-process: a trainer for a spec on
//! the test MNIST, an observer that keeps each epoch's checkpoint as the service stores
//! it, and the comparisons a resumed or repeated run is checked with.

#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device};
use trainyard::data::prepare::prepare;
use trainyard::engine::{Checkpoint, EngineError, EpochMetrics, Observer, Trainer};
use trainyard::spec::{self, ExperimentSpec};

/// A trainer of a validated spec on the CPU, with the test MNIST.
pub fn trainer(spec: &ExperimentSpec) -> Trainer {
    let plan = spec::validate(spec).unwrap();
    let data = prepare(super::mnist(), &spec.dataset);
    Trainer::new(spec, &plan, &data, &Device::Cpu).unwrap()
}

/// The f32 tensors of the trainer's current weights, by name.
pub fn weights(t: &Trainer) -> HashMap<String, Vec<f32>> {
    t.checkpoint()
        .unwrap()
        .weights
        .iter()
        .filter(|(_, w)| w.dtype() == DType::F32)
        .map(|(k, w)| (k.clone(), w.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// The history without the wall-clock fields, which differ between identical runs.
pub fn untimed(t: &Trainer) -> Vec<EpochMetrics> {
    t.history().iter().map(|m| m.without_timing()).collect()
}

/// Every epoch's checkpoint, serialised when it is made (as the service stores it: the
/// tensors of a checkpoint share the live model's storage).
#[derive(Default)]
pub struct Keep(pub Vec<(Vec<u8>, Vec<u8>)>);

impl Observer for Keep {
    fn on_epoch(&mut self, c: &Checkpoint) -> Result<(), EngineError> {
        self.0.push((c.weights_bytes()?, c.optimizer_bytes()?));
        Ok(())
    }
}

impl Keep {
    /// Epoch `n`'s checkpoint (1-based), read back with its optimizer state.
    pub fn epoch(&self, n: usize) -> Checkpoint {
        let (w, o) = &self.0[n - 1];
        Checkpoint::from_bytes(w, Some(o)).unwrap()
    }
}
