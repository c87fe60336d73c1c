//! Per-thread scratch memory for the convolution kernels.
//!
//! A convolution needs column buffers of up to a few megabytes per sample. Allocating
//! them per call (or per rayon split, which is per few samples) meant zeroing tens of
//! megabytes a step that are overwritten at once; each thread now keeps one buffer and
//! reuses it (up to [`KEEP`]). Its contents between calls are whatever the last user left.

use std::cell::Cell;

use super::mem;

thread_local! {
    static POOL: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer, at least `len` floats of unspecified
/// contents. A nested call (none is made today) gets a buffer of its own.
pub fn with<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut v = POOL.take();
    if v.len() < len {
        v = mem::zeroed(len);
    }
    let r = f(&mut v[..len]);
    // A spec with huge columns would otherwise leave every compute thread holding its
    // buffer for the life of the process.
    if v.len() <= KEEP {
        POOL.set(v);
    }
    r
}

/// Largest buffer (floats) kept between calls: 256 MiB.
const KEEP: usize = 64 << 20;

#[cfg(test)]
mod tests {
    #[test]
    fn the_buffer_is_reused_and_grows_when_asked_for_more() {
        let first = super::with(10, |b| {
            b.fill(7.0);
            b.as_ptr() as usize
        });
        let (again, seen) = super::with(5, |b| (b.as_ptr() as usize, b[4]));
        assert_eq!((again, seen), (first, 7.0));
        assert_eq!(super::with(1000, |b| b.len()), 1000);
    }
}
