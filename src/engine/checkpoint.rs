//! Checkpoints: weights as a PyTorch-compatible safetensors file, optimizer state beside it.
//!
//! `epoch-N.safetensors` holds the state dict under PyTorch's names and layouts, so
//! `model.load_state_dict(safetensors.torch.load_file(path))` works on the equivalent
//! `nn.Module`; its metadata carries the resolved spec, the epoch and the metrics so far,
//! which makes a weights file self-describing (inference needs nothing else).
//! `epoch-N.optim.safetensors` holds the optimizer's state (momentum or Adam moments, step
//! count). Together with the seed-derived random streams (see [`super::rng`]) that is all
//! a run needs to resume at epoch N+1 exactly as if it had never stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

use super::EngineError;
use super::metrics::EpochMetrics;
use crate::spec::{DataInfo, ExperimentSpec};

const KEY_SPEC: &str = "trainyard.spec";
const KEY_EPOCH: &str = "trainyard.epoch";
const KEY_HISTORY: &str = "trainyard.metrics";
const KEY_STEPS: &str = "trainyard.optimizer_steps";
const KEY_DATA: &str = "trainyard.data";

/// One epoch's saved state.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub spec: ExperimentSpec,
    /// What the model was trained on: its images' shape and class names.
    pub data: DataInfo,
    pub epoch: u32,
    /// Metrics of every epoch up to and including `epoch`.
    pub history: Vec<EpochMetrics>,
    /// State dict on the CPU, in model order.
    pub weights: Vec<(String, Tensor)>,
    pub optimizer_steps: u64,
    pub optimizer: Vec<(String, Tensor)>,
}

fn serialize(
    tensors: &[(String, Tensor)],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>, EngineError> {
    let data = tensors.iter().map(|(k, t)| (k.as_str(), t));
    safetensors::serialize(data, Some(meta)).map_err(|e| EngineError::Checkpoint(e.to_string()))
}

fn metadata(bytes: &[u8]) -> Result<HashMap<String, String>, EngineError> {
    let (_, m) = SafeTensors::read_metadata(bytes)
        .map_err(|e| EngineError::Checkpoint(format!("not a safetensors file: {e}")))?;
    Ok(m.metadata().clone().unwrap_or_default())
}

fn field<'a>(m: &'a HashMap<String, String>, key: &str) -> Result<&'a str, EngineError> {
    m.get(key)
        .map(String::as_str)
        .ok_or_else(|| EngineError::Checkpoint(format!("metadata has no {key}")))
}

fn bad(e: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint(e.to_string())
}

impl Checkpoint {
    /// The weights file: state dict plus spec, epoch and metrics as metadata.
    pub fn weights_bytes(&self) -> Result<Vec<u8>, EngineError> {
        let meta = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (
                KEY_SPEC.to_string(),
                serde_json::to_string(&self.spec).map_err(bad)?,
            ),
            (
                KEY_DATA.to_string(),
                serde_json::to_string(&self.data).map_err(bad)?,
            ),
            (KEY_EPOCH.to_string(), self.epoch.to_string()),
            (
                KEY_HISTORY.to_string(),
                serde_json::to_string(&self.history).map_err(bad)?,
            ),
        ]);
        serialize(&self.weights, meta)
    }

    /// The optimizer file.
    pub fn optimizer_bytes(&self) -> Result<Vec<u8>, EngineError> {
        let meta = HashMap::from([
            (KEY_EPOCH.to_string(), self.epoch.to_string()),
            (KEY_STEPS.to_string(), self.optimizer_steps.to_string()),
        ]);
        serialize(&self.optimizer, meta)
    }

    /// Reads a weights file and, when given, its optimizer file.
    pub fn from_bytes(weights: &[u8], optimizer: Option<&[u8]>) -> Result<Self, EngineError> {
        let m = metadata(weights)?;
        let spec: ExperimentSpec = serde_json::from_str(field(&m, KEY_SPEC)?).map_err(bad)?;
        // Checkpoints written before uploaded datasets existed were all of a built-in one.
        let data: DataInfo = match (m.get(KEY_DATA), spec.dataset.built_in()) {
            (Some(d), _) => serde_json::from_str(d).map_err(bad)?,
            (None, Some(name)) => name.info(),
            (None, None) => {
                return Err(EngineError::Checkpoint(format!(
                    "metadata has no {KEY_DATA}"
                )));
            }
        };
        let epoch: u32 = field(&m, KEY_EPOCH)?.parse().map_err(bad)?;
        let history = serde_json::from_str(field(&m, KEY_HISTORY)?).map_err(bad)?;
        let mut weights: Vec<(String, Tensor)> =
            candle_core::safetensors::load_buffer(weights, &Device::Cpu)?
                .into_iter()
                .collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        let (optimizer_steps, optimizer) = match optimizer {
            Some(bytes) => {
                let om = metadata(bytes)?;
                let oe: u32 = field(&om, KEY_EPOCH)?.parse().map_err(bad)?;
                if oe != epoch {
                    return Err(EngineError::Checkpoint(format!(
                        "optimizer state is from epoch {oe}, weights from epoch {epoch}"
                    )));
                }
                let steps = field(&om, KEY_STEPS)?.parse().map_err(bad)?;
                let t = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
                (steps, t.into_iter().collect())
            }
            None => (0, Vec::new()),
        };
        Ok(Checkpoint {
            spec,
            data,
            epoch,
            history,
            weights,
            optimizer_steps,
            optimizer,
        })
    }

    pub fn weights_path(dir: &Path, epoch: u32) -> PathBuf {
        dir.join(format!("epoch-{epoch}.safetensors"))
    }

    pub fn optimizer_path(dir: &Path, epoch: u32) -> PathBuf {
        dir.join(format!("epoch-{epoch}.optim.safetensors"))
    }

    /// Writes both files into `dir` (atomically: temp file, then rename).
    pub fn save(&self, dir: &Path) -> Result<PathBuf, EngineError> {
        std::fs::create_dir_all(dir)?;
        let path = Self::weights_path(dir, self.epoch);
        write_atomic(
            &Self::optimizer_path(dir, self.epoch),
            &self.optimizer_bytes()?,
        )?;
        write_atomic(&path, &self.weights_bytes()?)?;
        Ok(path)
    }

    /// Reads a weights file, and the optimizer file beside it when present.
    pub fn load(weights_path: &Path) -> Result<Self, EngineError> {
        let w = std::fs::read(weights_path)?;
        let opt_path = weights_path
            .to_str()
            .and_then(|s| s.strip_suffix(".safetensors"))
            .map(|s| PathBuf::from(format!("{s}.optim.safetensors")));
        let o = match opt_path {
            Some(p) if p.exists() => Some(std::fs::read(p)?),
            _ => None,
        };
        Self::from_bytes(&w, o.as_deref())
    }

    /// The newest `epoch-N.safetensors` in `dir`.
    pub fn latest_in(dir: &Path) -> Result<Option<PathBuf>, EngineError> {
        let mut best: Option<(u32, PathBuf)> = None;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(n) = name
                .strip_prefix("epoch-")
                .and_then(|s| s.strip_suffix(".safetensors"))
                .and_then(|s| s.parse::<u32>().ok())
                && best.as_ref().is_none_or(|(b, _)| n > *b)
            {
                best = Some((n, path));
            }
        }
        Ok(best.map(|(_, p)| p))
    }

    /// Weights as a name -> tensor map.
    pub fn weight_map(&self) -> HashMap<String, Tensor> {
        self.weights.iter().cloned().collect()
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}
