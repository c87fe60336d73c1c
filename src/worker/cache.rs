//! Prepared samples kept between jobs, as files, so that the next job on the same data
//! starts training at once.
//!
//! Loading a dataset (decompressing and checksumming its files) takes a few hundred
//! milliseconds and preparing it for a spec (resizing 70,000 images, converting them to
//! floats) about as long again, while a queued experiment should start within tens of
//! milliseconds of its submission. Each job runs in a process of its own that lives only
//! as long as the job, so what it prepared would die with it; instead the first job on a
//! dataset spec writes the prepared floats to a file, and every later job on the same
//! spec reads them back, which is a copy from the page cache. The files are shared by
//! every process of the machine and survive restarts; the oldest are deleted beyond the
//! budget.
//!
//! A file is written under a temporary name and renamed into place, so a reader sees a
//! whole file or none; two jobs that miss together both prepare, and the second rename
//! wins with identical bytes.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::prepare::{Prepared, Samples};
use crate::spec::{DataInfo, DatasetSpec};

/// Changes whenever the layout below does: old files are then simply not found.
const FORMAT: &str = "trainyard-prepared-1";

/// The header of a cache file; the samples follow it.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    shape: [usize; 3],
    info: DataInfo,
    train: usize,
    val: Option<usize>,
    test: usize,
}

/// The prepared samples of dataset specs, as files in one folder.
#[derive(Debug, Clone)]
pub struct PreparedCache {
    dir: PathBuf,
    budget: u64,
}

impl PreparedCache {
    /// Keeps up to `budget` bytes of files in `dir` (0: none).
    pub fn new(dir: impl Into<PathBuf>, budget: u64) -> Self {
        PreparedCache {
            dir: dir.into(),
            budget,
        }
    }

    /// The file of a dataset spec: a hash of its JSON, which names its source (a built-in
    /// name or an uploaded dataset's id, and ids are never reused) and everything that
    /// changes the samples.
    pub fn path(&self, spec: &DatasetSpec) -> PathBuf {
        let json = serde_json::to_vec(spec).expect("a dataset spec serialises");
        let mut h = Sha256::new();
        h.update(FORMAT.as_bytes());
        h.update(&json);
        self.dir.join(format!("{}.bin", hex::encode(h.finalize())))
    }

    /// Whether a dataset spec's samples are cached.
    pub fn contains(&self, spec: &DatasetSpec) -> bool {
        self.budget > 0 && self.path(spec).is_file()
    }

    /// The cached samples of `spec`, if any (a damaged file counts as none, and goes).
    pub fn get(&self, spec: &DatasetSpec) -> Option<Prepared> {
        if self.budget == 0 {
            return None;
        }
        let path = self.path(spec);
        let file = File::open(&path).ok()?;
        match read(file) {
            Ok(p) => {
                // Most recently used: the last to be evicted.
                if let Ok(f) = File::options().append(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Some(p)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping a damaged cache file");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Keeps `p` as the samples of `spec` when it fits the budget, then evicts the least
    /// recently used files beyond it. Failures are logged, never the job's.
    pub fn put(&self, spec: &DatasetSpec, p: &Prepared) {
        let bytes = prepared_bytes(p);
        if self.budget == 0 || bytes > self.budget {
            return;
        }
        if let Err(e) = self.write(spec, p) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not cache the prepared data");
            return;
        }
        if let Err(e) = self.evict() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not trim the data cache");
        }
    }

    fn write(&self, spec: &DatasetSpec, p: &Prepared) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path(spec);
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let header = Header {
            format: FORMAT.into(),
            shape: p.shape,
            info: p.info.clone(),
            train: p.train.len,
            val: p.val.as_ref().map(|v| v.len),
            test: p.test.len,
        };
        let json = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        w.write_all(&(json.len() as u32).to_le_bytes())?;
        w.write_all(&json)?;
        for s in [Some(&p.train), p.val.as_ref(), Some(&p.test)]
            .into_iter()
            .flatten()
        {
            for chunk in s.x.chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                w.write_all(&bytes)?;
            }
            w.write_all(&s.y)?;
        }
        w.flush()?;
        drop(w);
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Deletes the least recently used files until the rest fit the budget.
    fn evict(&self) -> std::io::Result<()> {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (_, len, path) in files {
            if total <= self.budget {
                break;
            }
            fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

fn read(file: File) -> std::io::Result<Prepared> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let expected = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    if n > 1 << 20 {
        return Err(bad("header too long"));
    }
    let mut json = vec![0u8; n];
    r.read_exact(&mut json)?;
    let h: Header = serde_json::from_slice(&json).map_err(std::io::Error::other)?;
    if h.format != FORMAT {
        return Err(bad("another format"));
    }
    let per = h.shape.iter().product::<usize>();
    let total = h.train + h.val.unwrap_or(0) + h.test;
    if (4 + n + total * (per * 4 + 1)) as u64 != expected {
        return Err(bad("the file's length does not match its header"));
    }
    let mut samples = |len: usize| -> std::io::Result<Samples> {
        let mut x = vec![0f32; len * per];
        let mut buf = vec![0u8; 1 << 18];
        for chunk in x.chunks_mut(1 << 16) {
            let b = &mut buf[..chunk.len() * 4];
            r.read_exact(b)?;
            for (v, q) in chunk.iter_mut().zip(b.chunks_exact(4)) {
                *v = f32::from_le_bytes([q[0], q[1], q[2], q[3]]);
            }
        }
        let mut y = vec![0u8; len];
        r.read_exact(&mut y)?;
        Ok(Samples { x, y, len })
    };
    let train = samples(h.train)?;
    let val = h.val.map(&mut samples).transpose()?;
    let test = samples(h.test)?;
    Ok(Prepared {
        train,
        val,
        test,
        shape: h.shape,
        info: h.info,
    })
}

/// Bytes of a cache file's samples.
pub fn prepared_bytes(p: &Prepared) -> u64 {
    let samples = |s: &Samples| (s.x.len() * 4 + s.y.len()) as u64;
    samples(&p.train) + p.val.as_ref().map_or(0, samples) + samples(&p.test)
}

/// The default folder: beside the other temporary files of this user.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("trainyard-prepared")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(seed: f32, val: bool) -> Prepared {
        let s = |n: usize, k: f32| Samples {
            x: (0..n * 12).map(|i| i as f32 * k - 0.5).collect(),
            y: (0..n).map(|i| (i % 10) as u8).collect(),
            len: n,
        };
        Prepared {
            train: s(5, seed),
            val: val.then(|| s(2, seed * 2.0)),
            test: s(3, seed * 3.0),
            shape: [3, 2, 2],
            info: DataInfo {
                channels: 3,
                height: 4,
                width: 4,
                class_names: (0..10).map(|i| i.to_string()).collect(),
                train_len: 7,
                test_len: 3,
                sha256: None,
            },
        }
    }

    fn spec(limit: usize) -> DatasetSpec {
        let mut s = crate::spec::from_value(serde_json::json!({"preset": "torch-cnn"}))
            .unwrap()
            .dataset;
        s.train_limit = Some(limit);
        s
    }

    fn same(a: &Prepared, b: &Prepared) -> bool {
        let eq = |x: &Samples, y: &Samples| {
            x.len == y.len
                && x.y == y.y
                && x.x
                    .iter()
                    .zip(&y.x)
                    .all(|(p, q)| p.to_bits() == q.to_bits())
        };
        eq(&a.train, &b.train)
            && eq(&a.test, &b.test)
            && a.val.is_some() == b.val.is_some()
            && a.val.iter().zip(&b.val).all(|(x, y)| eq(x, y))
            && a.shape == b.shape
            && a.info == b.info
    }

    #[test]
    fn samples_come_back_bit_for_bit_and_another_spec_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PreparedCache::new(dir.path(), 1 << 20);
        for val in [true, false] {
            let p = prepared(0.25, val);
            cache.put(&spec(100), &p);
            assert!(cache.contains(&spec(100)));
            assert!(same(&cache.get(&spec(100)).unwrap(), &p));
        }
        assert!(cache.get(&spec(101)).is_none());
    }

    #[test]
    fn the_least_recently_used_file_goes_beyond_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let probe = PreparedCache::new(dir.path(), 1 << 20);
        probe.put(&spec(1), &prepared(1.0, true));
        let one = fs::metadata(probe.path(&spec(1))).unwrap().len();
        // Room for two files and a half.
        let cache = PreparedCache::new(dir.path(), 2 * one + one / 2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&spec(2), &prepared(2.0, true));
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.get(&spec(1)).unwrap(); // 1 is now the most recent
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put(&spec(3), &prepared(3.0, true));
        assert!(cache.contains(&spec(1)));
        assert!(!cache.contains(&spec(2)));
        assert!(cache.contains(&spec(3)));
    }

    #[test]
    fn a_damaged_file_is_a_miss_and_is_removed_and_a_zero_budget_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PreparedCache::new(dir.path(), 1 << 20);
        cache.put(&spec(1), &prepared(1.0, false));
        let path = cache.path(&spec(1));
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(cache.get(&spec(1)).is_none());
        assert!(!path.exists());
        let none = PreparedCache::new(dir.path(), 0);
        none.put(&spec(2), &prepared(1.0, false));
        assert!(!none.contains(&spec(2)) && none.get(&spec(2)).is_none());
    }
}
