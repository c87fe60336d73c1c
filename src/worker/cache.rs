//! What a worker process keeps between jobs so that the next one starts training at once.
//!
//! Loading a dataset (decompressing and checksumming its files) takes a few hundred
//! milliseconds and preparing it for a spec (resizing 70,000 images, converting them to
//! floats) about as long again, while a queued experiment should start within tens of
//! milliseconds of its submission. So each process keeps every dataset it has loaded, and
//! the prepared samples of the dataset specs it trained most recently, within a memory
//! budget: a sweep over models and optimizers on the same data prepares it once.
//!
//! Each entry is computed once even when several workers ask for it together: the first
//! computes it while the others wait for its result instead of repeating the work.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::data::mnist::{self, Dataset, Source};
use crate::data::prepare::{Prepared, prepare};
use uuid::Uuid;

use crate::spec::{DataSource, DatasetSpec};

use super::WorkerConfig;

/// An entry, computed by whoever locks it first; the others wait on its lock.
type Slot<V> = Arc<Mutex<Option<Arc<V>>>>;

struct Entry<V> {
    slot: Slot<V>,
    last_used: u64,
    /// Bytes held, once computed.
    bytes: usize,
}

/// A memo of values by key: each computed once, the least recently used evicted beyond
/// `budget` bytes (a value larger than the whole budget is returned but not kept).
struct Memo<K, V> {
    entries: Mutex<(u64, HashMap<K, Entry<V>>)>,
    budget: usize,
}

impl<K: Eq + Hash + Clone, V> Memo<K, V> {
    fn new(budget: usize) -> Self {
        Memo {
            entries: Mutex::new((0, HashMap::new())),
            budget,
        }
    }

    /// The value of `key`, computing it with `make` if no one has; `hit` tells which.
    fn get_or_try<E>(
        &self,
        key: &K,
        size: impl Fn(&V) -> usize,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<(Arc<V>, bool), E> {
        let slot = {
            let mut guard = self.entries.lock().unwrap();
            let (clock, map) = &mut *guard;
            *clock += 1;
            let e = map.entry(key.clone()).or_insert_with(|| Entry {
                slot: Slot::default(),
                last_used: 0,
                bytes: 0,
            });
            e.last_used = *clock;
            e.slot.clone()
        };
        let mut value = slot.lock().unwrap();
        if let Some(v) = &*value {
            return Ok((v.clone(), true));
        }
        let v = match make() {
            Ok(v) => Arc::new(v),
            Err(e) => {
                drop(value);
                self.forget(key, &slot);
                return Err(e);
            }
        };
        *value = Some(v.clone());
        drop(value);
        self.admit(key, &slot, size(&v));
        Ok((v, false))
    }

    /// Drops `key` if it still names `slot` (a failed computation is not remembered).
    fn forget(&self, key: &K, slot: &Slot<V>) {
        let mut guard = self.entries.lock().unwrap();
        if guard.1.get(key).is_some_and(|e| Arc::ptr_eq(&e.slot, slot)) {
            guard.1.remove(key);
        }
    }

    /// Records the size of a computed entry, then evicts down to the budget.
    fn admit(&self, key: &K, slot: &Slot<V>, bytes: usize) {
        let mut guard = self.entries.lock().unwrap();
        let map = &mut guard.1;
        match map.get_mut(key) {
            Some(e) if Arc::ptr_eq(&e.slot, slot) => e.bytes = bytes,
            _ => return,
        }
        if bytes > self.budget {
            // Keeping it would flush everything else and still not fit.
            map.remove(key);
            return;
        }
        // The new entry is the most recently used, so it is never the one evicted.
        loop {
            let total: usize = map.values().map(|e| e.bytes).sum();
            if total <= self.budget {
                return;
            }
            // The least recently used computed entry; entries still being computed
            // (0 bytes so far) stay.
            let Some(victim) = map
                .iter()
                .filter(|(_, e)| e.bytes > 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            map.remove(&victim);
        }
    }

    #[cfg(test)]
    fn keys(&self) -> Vec<K> {
        self.entries.lock().unwrap().1.keys().cloned().collect()
    }
}

/// Datasets and prepared samples, shared by the workers of a process.
pub(crate) struct DataCache {
    /// By source: a built-in name, or an uploaded dataset's id (ids are never reused,
    /// and an uploaded dataset never changes).
    datasets: Memo<DataSource, Dataset>,
    /// By the dataset spec's JSON (its floats have no `Hash`).
    prepared: Memo<String, Prepared>,
}

/// Blocking: an uploaded dataset's tensors, by id (the worker reads them from the store).
pub(crate) type LoadUploaded<'a> = &'a dyn Fn(Uuid) -> Result<Dataset, String>;

impl DataCache {
    /// Keeps prepared samples up to `prepared_budget` bytes (0: none).
    pub(crate) fn new(prepared_budget: usize) -> Self {
        DataCache {
            datasets: Memo::new(usize::MAX),
            prepared: Memo::new(prepared_budget),
        }
    }

    /// Blocking: a dataset, loaded (and verified) the first time it is asked for.
    pub(crate) fn dataset(
        &self,
        source: &DataSource,
        cfg: &WorkerConfig,
        uploaded: LoadUploaded<'_>,
    ) -> Result<Arc<Dataset>, String> {
        let load = || match source {
            DataSource::BuiltIn(name) => {
                let mut s = Source::for_dataset(*name, cfg.data_dir.clone());
                s.download = cfg.download;
                mnist::load(*name, &s).map_err(|e| e.to_string())
            }
            DataSource::Uploaded(id) => uploaded(*id),
            DataSource::Path(p) => Err(format!(
                "a worker does not read local files ({p}): upload the data and name it by id"
            )),
        };
        let size = |d: &Dataset| d.train.images.len() + d.test.images.len();
        Ok(self.datasets.get_or_try(source, size, load)?.0)
    }

    /// Blocking: the samples of a dataset spec, prepared the first time it is asked for
    /// while they stay within the budget. `true` when they were already prepared.
    pub(crate) fn prepared(
        &self,
        spec: &DatasetSpec,
        cfg: &WorkerConfig,
        uploaded: LoadUploaded<'_>,
    ) -> Result<(Arc<Prepared>, bool), String> {
        let key = serde_json::to_string(spec).map_err(|e| e.to_string())?;
        self.prepared.get_or_try(&key, prepared_bytes, || {
            Ok(prepare(&*self.dataset(&spec.source, cfg, uploaded)?, spec))
        })
    }
}

fn prepared_bytes(p: &Prepared) -> usize {
    let samples = |s: &crate::data::prepare::Samples| s.x.len() * 4 + s.y.len();
    samples(&p.train) + p.val.as_ref().map_or(0, samples) + samples(&p.test)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A memo of byte vectors whose size is their length.
    fn memo(budget: usize) -> Memo<&'static str, Vec<u8>> {
        Memo::new(budget)
    }

    fn get(
        m: &Memo<&'static str, Vec<u8>>,
        key: &'static str,
        len: usize,
        made: &AtomicUsize,
    ) -> (Arc<Vec<u8>>, bool) {
        m.get_or_try(&key, Vec::len, || {
            made.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(vec![0; len])
        })
        .unwrap()
    }

    #[test]
    fn a_value_is_computed_once_and_then_shared() {
        let (m, made) = (memo(100), AtomicUsize::new(0));
        let (a, hit_a) = get(&m, "a", 10, &made);
        let (b, hit_b) = get(&m, "a", 10, &made);
        assert_eq!((hit_a, hit_b), (false, true));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(made.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_least_recently_used_goes_first_beyond_the_budget() {
        let (m, made) = (memo(25), AtomicUsize::new(0));
        get(&m, "a", 10, &made);
        get(&m, "b", 10, &made);
        get(&m, "a", 10, &made); // a is now the most recent
        get(&m, "c", 10, &made); // 30 bytes: b goes
        let mut keys = m.keys();
        keys.sort();
        assert_eq!(keys, ["a", "c"]);
        // Larger than the whole budget: returned, not kept, and nothing evicted for it.
        let (big, _) = get(&m, "big", 100, &made);
        assert_eq!(big.len(), 100);
        let (_, hit) = get(&m, "big", 100, &made);
        assert!(!hit, "an entry over the budget is not kept");
        let mut keys = m.keys();
        keys.sort();
        assert_eq!(keys, ["a", "c"]);
    }

    #[test]
    fn a_zero_budget_keeps_nothing_and_failures_are_not_remembered() {
        let (m, made) = (memo(0), AtomicUsize::new(0));
        get(&m, "a", 1, &made);
        assert!(!get(&m, "a", 1, &made).1);
        assert_eq!(made.load(Ordering::SeqCst), 2);
        let failed = m.get_or_try(&"x", Vec::len, || Err::<Vec<u8>, _>("no"));
        assert_eq!(failed.unwrap_err(), "no");
        assert!(m.keys().is_empty());
    }

    #[test]
    fn concurrent_askers_wait_for_one_computation() {
        let (m, made) = (memo(100), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    m.get_or_try(&"slow", Vec::len, || {
                        made.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok::<_, ()>(vec![1; 3])
                    })
                    .unwrap()
                });
            }
        });
        assert_eq!(made.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_second_job_on_the_same_data_skips_loading_and_preparing() {
        let cfg = WorkerConfig {
            data_dir: std::env::var_os("TRAINYARD_DATA_DIR")
                .map(Into::into)
                .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data").into()),
            download: false,
            ..WorkerConfig::default()
        };
        let cache = DataCache::new(64 << 20);
        let spec: crate::spec::ExperimentSpec =
            crate::spec::from_value(serde_json::json!({"preset": "torch-cnn"})).unwrap();
        let mut small = spec.dataset.clone();
        small.train_limit = Some(300);
        small.test_limit = Some(100);
        let none = |_| Err("no uploads here".to_string());
        let (a, hit_a) = cache.prepared(&small, &cfg, &none).unwrap();
        let (b, hit_b) = cache.prepared(&small, &cfg, &none).unwrap();
        assert_eq!((hit_a, hit_b), (false, true));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.train.len, 300);
        // Another spec of the same dataset is prepared anew, from the loaded dataset.
        let mut other = small.clone();
        other.resize = None;
        let (c, hit_c) = cache.prepared(&other, &cfg, &none).unwrap();
        assert!(!hit_c);
        assert_eq!(c.shape, [1, 28, 28]);
        assert_eq!(c.train.x.len(), 300 * 28 * 28);
        let d1 = cache.dataset(&small.source, &cfg, &none).unwrap();
        let d2 = cache.dataset(&small.source, &cfg, &none).unwrap();
        assert!(Arc::ptr_eq(&d1, &d2));
    }
}
