//! Large buffers on transparent huge pages.
//!
//! A dense layer's weights are read a row of the product at a time, rows a page apart
//! (keras-cnn's 9216 x 1024 weights: every row is its own 4 KB page), so a step walks
//! thousands of pages and the TLB misses add up. Where the kernel offers transparent huge
//! pages only on request (`madvise` mode, the common default), the buffers of a few
//! megabytes and more ask for them before their first write. Elsewhere, or when the
//! kernel says no, they are ordinary memory: this is a hint, never a requirement.

/// Bytes from which a buffer asks for huge pages.
const HUGE_FROM: usize = 4 << 20;

/// A zeroed buffer of `len` floats, on huge pages where the kernel gives them.
///
/// # Panics
/// When the memory cannot be had. A spec can ask for more than the machine has; a panic
/// fails that experiment (the worker catches it), where `vec!` would abort the process.
pub fn zeroed(len: usize) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<f32>(len)
        .unwrap_or_else(|_| panic!("a buffer of {len} floats is larger than memory can be"));
    // Zeroed memory comes from calloc, which maps large blocks fresh and untouched, so
    // the advice below applies from their first write.
    // SAFETY: the layout is non-zero in size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
    if p.is_null() {
        panic!("out of memory for a buffer of {} MiB", (len * 4) >> 20);
    }
    // SAFETY: allocated by the global allocator with this layout, all `len` floats zero.
    let v = unsafe { Vec::from_raw_parts(p, len, len) };
    advise(&v);
    v
}

/// A copy of `src` in a buffer from [`zeroed`].
pub fn copied(src: &[f32]) -> Vec<f32> {
    let mut v = zeroed(src.len());
    v.copy_from_slice(src);
    v
}

#[cfg(target_os = "linux")]
fn advise(v: &[f32]) {
    const HUGE: usize = 2 << 20;
    let bytes = std::mem::size_of_val(v);
    if bytes < HUGE_FROM {
        return;
    }
    let start = v.as_ptr() as usize;
    let (lo, hi) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
    if hi > lo {
        // SAFETY: madvise only advises on this process's own mapping of the buffer, whose
        // whole 2 MB pages lie in [lo, hi); it changes no contents.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_: &[f32]) {}
