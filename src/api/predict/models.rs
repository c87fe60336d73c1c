//! Which model answers a request, and the loaded models themselves.
//!
//! Loading a model means reading megabytes of weights from PostgreSQL and building it, so
//! models are cached per (experiment, epoch); concurrent first requests share one load.
//! Each cached model owns a [`Batcher`] and is shared as an `Arc` with no lock around it:
//! the predictor's forward takes `&self`.
//!
//! Resolving `best`, `last` or an epoch number costs two queries. Once an experiment has
//! ended (succeeded, failed or cancelled) its checkpoints never change: nothing moves a
//! terminal experiment back to the queue, and checkpoints are only pruned while it trains.
//! So for an ended experiment the resolved epoch is remembered and later requests touch
//! the database not at all; a queued or running one is resolved afresh every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use uuid::Uuid;

use super::batch::{self, BatchConfig, BatchStats, Batcher, Counters, Incoming, IncomingGuard};
use crate::api::error::ApiError;
use crate::engine::infer::Predictor;
use crate::engine::{Checkpoint, device};
use crate::store::checkpoints::Which;
use crate::store::{Scope, Store, StoreError};

/// Models kept loaded.
const CACHE_SIZE: usize = 16;
/// Resolved checkpoints of ended experiments kept (cleared when full).
const RESOLVED_SIZE: usize = 4096;

/// A loaded model and the queue in front of it.
pub struct Served {
    pub predictor: Arc<Predictor>,
    pub batcher: Batcher,
}

type Slot = Arc<OnceCell<Arc<Served>>>;
type Key = (Uuid, i32);

/// Loaded models by (experiment, epoch), the oldest loaded evicted first.
pub struct ModelCache {
    cfg: BatchConfig,
    slots: Mutex<Slots>,
    /// The resolved epoch of an ended experiment, with the account it belongs to.
    resolved: Mutex<HashMap<(Uuid, WhichKey), (i32, Uuid)>>,
    incoming: Arc<Incoming>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Slots {
    map: HashMap<Key, Slot>,
    order: Vec<Key>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WhichKey {
    Epoch(i32),
    Best,
    Last,
    Served,
}

impl From<Which> for WhichKey {
    fn from(w: Which) -> Self {
        match w {
            Which::Epoch(n) => WhichKey::Epoch(n),
            Which::Best => WhichKey::Best,
            Which::Last => WhichKey::Last,
            Which::Served => WhichKey::Served,
        }
    }
}

impl Default for ModelCache {
    fn default() -> Self {
        ModelCache::new(BatchConfig::default())
    }
}

impl ModelCache {
    pub fn new(cfg: BatchConfig) -> Self {
        ModelCache {
            cfg,
            slots: Mutex::default(),
            resolved: Mutex::default(),
            incoming: Arc::default(),
            counters: Arc::default(),
        }
    }

    pub fn config(&self) -> BatchConfig {
        self.cfg
    }

    /// Batching counters since the server started.
    pub fn stats(&self) -> BatchStats {
        self.counters.snapshot()
    }

    /// Marks a request as on its way to a batch (see [`Incoming`]).
    pub fn incoming(&self) -> IncomingGuard {
        self.incoming.enter()
    }

    /// The epoch that answers for `which`, with the API's errors for a missing one.
    /// Another account's experiment is unknown to `scope`, cached or not.
    pub async fn resolve(
        &self,
        store: &Store,
        scope: Scope,
        id: Uuid,
        which: Which,
    ) -> Result<i32, ApiError> {
        let key = (id, WhichKey::from(which));
        if let Some(&(epoch, account)) = self.resolved.lock().unwrap().get(&key) {
            return if scope.sees(account) {
                Ok(epoch)
            } else {
                Err(ApiError::NotFound("experiment"))
            };
        }
        let exp = store.experiment_in(scope, id).await?;
        let epoch = store
            .resolve_checkpoint(id, which)
            .await?
            .ok_or_else(|| crate::api::checkpoints::missing(&exp, which))?;
        // Read before the checkpoint: if it had ended by then, the checkpoint is final.
        if exp.status.is_terminal() {
            let mut r = self.resolved.lock().unwrap();
            if r.len() >= RESOLVED_SIZE {
                r.clear();
            }
            r.insert(key, (epoch, exp.account_id));
        }
        Ok(epoch)
    }

    /// The model for (experiment, epoch), loading it on first use.
    pub async fn get(&self, store: &Store, id: Uuid, epoch: i32) -> Result<Arc<Served>, ApiError> {
        let slot = self.slot((id, epoch));
        let served = slot
            .get_or_try_init(|| async {
                let bytes = store.checkpoint_weights(id, epoch).await?;
                let p = tokio::task::spawn_blocking(move || -> Result<Predictor, String> {
                    let ck = Checkpoint::from_bytes(&bytes, None).map_err(|e| e.to_string())?;
                    let dev =
                        device::select(crate::spec::DeviceSpec::Cpu).map_err(|e| e.to_string())?;
                    Predictor::new(&ck, &dev).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| StoreError::Corrupt(e.to_string()))?
                .map_err(StoreError::Corrupt)?;
                let predictor = Arc::new(p);
                let batcher = Batcher::start(
                    predictor.clone() as Arc<dyn batch::Classify>,
                    self.cfg,
                    self.incoming.clone(),
                    self.counters.clone(),
                );
                Ok::<_, StoreError>(Arc::new(Served { predictor, batcher }))
            })
            .await?;
        Ok(served.clone())
    }

    /// Drops what this process remembers of a deleted experiment: its loaded models
    /// and resolved epochs. (Another `serve` process forgets it when its cache turns
    /// over; until then it may still answer from a model it had loaded.)
    pub fn forget(&self, id: Uuid) {
        self.resolved.lock().unwrap().retain(|k, _| k.0 != id);
        let mut s = self.slots.lock().unwrap();
        s.map.retain(|k, _| k.0 != id);
        s.order.retain(|k| k.0 != id);
    }

    fn slot(&self, key: Key) -> Slot {
        let mut s = self.slots.lock().unwrap();
        if let Some(slot) = s.map.get(&key) {
            return slot.clone();
        }
        if s.order.len() >= CACHE_SIZE {
            let old = s.order.remove(0);
            s.map.remove(&old);
        }
        s.order.push(key);
        s.map.entry(key).or_default().clone()
    }
}
