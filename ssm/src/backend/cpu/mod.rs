//! What the CPU kernels of the op families (`crate::ops::<family>::cpu`) share: the split of work
//! among the rayon threads, mutable row blocks and a shared output buffer for parallel tasks, the
//! in-order sum of per-part partials, and `multiversion!`.
//!
//! Determinism: work is split into a fixed number of contiguous parts that depends only on the
//! problem size and the thread count, and floating-point reductions across parts are summed in
//! part order, so the same inputs and thread count give bit-identical results.

use std::ops::Range;

/// Defines `$dispatch` with the signature of `$inner` (an `#[inline(always)]` kernel), which runs
/// `$inner` compiled for AVX-512, for AVX2 with FMA, or for the baseline, whichever the CPU has:
/// the tile loops vectorize to the widest registers available without a global target-cpu.
macro_rules! multiversion {
    ($dispatch:ident => $inner:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        #[allow(clippy::too_many_arguments)]
        unsafe fn $dispatch<T: Float>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<T: Float>($($arg: $ty),*) {
                    unsafe { $inner($($arg),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: Float>($($arg: $ty),*) {
                    unsafe { $inner($($arg),*) }
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            unsafe { $inner($($arg),*) }
        }
    };
}
pub(crate) use multiversion;

/// Threads of the current rayon pool.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads()
}

/// `0..n` cut into at most `parts` contiguous, near-equal, non-empty ranges.
pub(crate) fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|p| (n * p / parts)..(n * (p + 1) / parts))
        .filter(|r| !r.is_empty())
        .collect()
}

/// How many parts to cut `rows` rows of `work_per_row` flops into: one per thread, but never so
/// many that a part has less than ~64k flops of work.
pub(crate) fn parts_for(rows: usize, work_per_row: usize) -> usize {
    let total = rows.saturating_mul(work_per_row.max(1));
    threads().min(total / 65_536 + 1).min(rows.max(1))
}

/// Mutable blocks of `cols`-wide rows of `data`, one per range of `parts` (which must be
/// contiguous and start at 0), paired with their row range.
pub(crate) fn row_blocks_mut<'a, T>(
    data: &'a mut [T],
    parts: &[Range<usize>],
    cols: usize,
) -> Vec<(Range<usize>, &'a mut [T])> {
    let mut rest = data;
    let mut out = Vec::with_capacity(parts.len());
    for r in parts {
        let (head, tail) = rest.split_at_mut(r.len() * cols);
        out.push((r.clone(), head));
        rest = tail;
    }
    out
}

/// Sums per-part partial results `(parts, len)` in part order into `out` (accumulating).
pub(crate) fn reduce_parts_into<T: crate::float::Float>(partials: &[T], len: usize, out: &mut [T]) {
    for part in partials.chunks_exact(len) {
        for (o, p) in out.iter_mut().zip(part) {
            *o += *p;
        }
    }
}

/// A mutable buffer that parallel tasks share to write disjoint parts of it, when the parts are
/// not contiguous blocks (a tile of channels across all time steps, a head's rows).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T> {
    pub(crate) ptr: *mut T,
    pub(crate) len: usize,
}
// SAFETY: only used to reach elements that exactly one task owns (see the call sites).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        SharedMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// SAFETY: no other live reference reaches `start..start + len` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(
            start + len <= self.len,
            "shared buffer: {start}+{len} out of bounds {}",
            self.len
        );
        // SAFETY: in bounds (checked above) and exclusive (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}
