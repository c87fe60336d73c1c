//! Seeded order and the stratified hold-out.
//!
//! The generator is SplitMix64, written out here rather than taken from `rand` or the
//! training engine: the order of a stored dataset is part of its content address, so it
//! must never change with a dependency's version or an engine refactor. SplitMix64 is a
//! dozen lines, passes BigCrush, and is specified by its constants alone.
//!
//! The hold-out is stratified (each class gives the same fraction) and keeps the
//! relative order of the samples in both splits, so that a shuffled class-folder upload
//! stays shuffled and an IDX/CSV upload keeps its file order, as `train_test_split`
//! users would expect for a test set that represents every class. `round(f * n)`
//! samples of a class of `n` are held out, at least one when `n >= 2` and never all:
//! a class with a single sample stays in train, where it is needed more.

use crate::data::mnist::Split;

/// SplitMix64 (Steele, Lea, Flood 2014), the seeding generator of `java.util.SplittableRandom`.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias (rejection sampling).
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        // The largest multiple of n that fits; draws at or above it are redrawn.
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Seeds derived from the user's one seed for independent uses, so that the hold-out of
/// a class-folder upload does not replay the draws of its shuffle.
pub(crate) const SHUFFLE_STREAM: u64 = 0x5348_5546_464c_4531; // "SHUFFLE1"
pub(crate) const HOLDOUT_STREAM: u64 = 0x484f_4c44_4f55_5431; // "HOLDOUT1"

/// How many of a class of `n` samples are held out.
fn held_out(n: usize, fraction: f64) -> usize {
    if n < 2 {
        return 0;
    }
    ((fraction * n as f64).round() as usize).clamp(1, n - 1)
}

/// Which samples go to test: for each class, `round(fraction * n_c)` of its samples
/// (see the module documentation), chosen by a generator seeded with `seed`.
pub fn holdout(labels: &[u8], fraction: f64, seed: u64) -> Vec<bool> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = SplitMix64::new(seed ^ HOLDOUT_STREAM);
    let mut is_test = vec![false; labels.len()];
    for members in &mut by_class {
        let k = held_out(members.len(), fraction);
        // A partial Fisher-Yates: the first k positions end up a uniform sample.
        for i in 0..k {
            let j = i + rng.below(members.len() - i);
            members.swap(i, j);
            is_test[members[i]] = true;
        }
    }
    is_test
}

/// Splits `all` into (train, test) by `is_test`, each keeping the original order.
///
/// Peak memory is `all` plus the test part: test samples are copied out, then train
/// samples are moved down in place (each moves to a lower or equal index, so nothing is
/// overwritten before it is read).
pub fn split_off(mut all: Split, is_test: &[bool]) -> (Split, Split) {
    let size = all.channels * all.rows * all.cols;
    let n_test = is_test.iter().filter(|&&t| t).count();
    let mut test = Split {
        images: Vec::with_capacity(n_test * size),
        labels: Vec::with_capacity(n_test),
        len: n_test,
        channels: all.channels,
        rows: all.rows,
        cols: all.cols,
    };
    let mut kept = 0;
    for (i, &t) in is_test.iter().enumerate() {
        if t {
            test.images
                .extend_from_slice(&all.images[i * size..(i + 1) * size]);
            test.labels.push(all.labels[i]);
        } else {
            if kept != i {
                all.images
                    .copy_within(i * size..(i + 1) * size, kept * size);
                all.labels[kept] = all.labels[i];
            }
            kept += 1;
        }
    }
    all.images.truncate(kept * size);
    all.images.shrink_to_fit();
    all.labels.truncate(kept);
    all.len = kept;
    (all, test)
}

/// The two splits of an upload: its own test split, or a stratified hold-out of
/// `opts.test_fraction` of the training samples, seeded by `opts.seed`.
pub fn test_split(
    train: Split,
    test: Option<Split>,
    opts: &super::Options,
) -> (Split, Split, super::TestSplit) {
    match test {
        Some(test) => (train, test, super::TestSplit::Uploaded),
        None => {
            let is_test = holdout(&train.labels, opts.test_fraction, opts.seed);
            let (train, test) = split_off(train, &is_test);
            let held = super::TestSplit::HeldOut {
                fraction: opts.test_fraction,
                seed: opts.seed,
            };
            (train, test, held)
        }
    }
}
