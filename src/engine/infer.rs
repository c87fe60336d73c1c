//! Inference from a checkpoint: images in, class probabilities out.
//!
//! A weights file carries its spec, so it alone says how to preprocess: the images are
//! taken as 28x28 grayscale u8 (MNIST's format: white digit on black), then go through the
//! spec's own resize and normalisation, exactly as the training data did.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::EngineError;
use super::checkpoint::Checkpoint;
use super::model::Model;
use super::trainer::probabilities;
use crate::data::prepare::Preprocess;
use crate::spec::{ExperimentSpec, validate};

/// Side of the images a model's dataset is made of (before the spec's own resize).
pub const SOURCE_SIDE: usize = 28;

/// A loaded model, ready to classify.
pub struct Predictor {
    model: Model,
    pre: Preprocess,
    spec: ExperimentSpec,
    epoch: u32,
    device: Device,
}

impl Predictor {
    /// Builds the model of a checkpoint's spec and loads its weights.
    pub fn new(ckpt: &Checkpoint, device: &Device) -> Result<Self, EngineError> {
        let summary = validate(&ckpt.spec)?;
        let mut model = Model::new(&ckpt.spec, &summary, device)?;
        let weights: HashMap<String, Tensor> = ckpt.weight_map();
        model.load_state_dict(&weights)?;
        Ok(Predictor {
            model,
            pre: Preprocess::new(&ckpt.spec.dataset, SOURCE_SIDE, SOURCE_SIDE),
            spec: ckpt.spec.clone(),
            epoch: ckpt.epoch,
            device: device.clone(),
        })
    }

    pub fn spec(&self) -> &ExperimentSpec {
        &self.spec
    }

    /// The epoch whose weights answer.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Class probabilities for each of `n` 28x28 u8 images laid end to end.
    pub fn predict(&mut self, images: &[u8]) -> Result<Vec<Vec<f32>>, EngineError> {
        let px = SOURCE_SIDE * SOURCE_SIDE;
        if images.is_empty() || !images.len().is_multiple_of(px) {
            return Err(EngineError::Input(format!(
                "expected whole {SOURCE_SIDE}x{SOURCE_SIDE} images, got {} bytes",
                images.len()
            )));
        }
        let n = images.len() / px;
        let mut x = Vec::new();
        self.pre.extend(images, &mut x);
        let (h, w) = self.pre.output_size();
        let x = Tensor::from_vec(x, (n, 1, h, w), &self.device)?;
        let f = self.model.forward(&x, false, None)?;
        Ok(probabilities(&f)?.to_vec2::<f32>()?)
    }
}

/// Index of the largest probability.
pub fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}
