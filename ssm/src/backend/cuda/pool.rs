//! The caching allocator of a device: freed blocks go to a free list per size class and are handed
//! out again, so that a training step, which asks for the same sizes every time, stops allocating
//! from the driver after its first step.

use std::collections::HashMap;

use ssm_kernels::DevicePtr;

use super::MemoryStats;

/// The allocation size for a request of `bytes`: a multiple of 256 bytes, and above 64 KiB
/// rounded up to one of 16 steps per power of two, so that at most 1/16 is wasted while slightly
/// different requests (sequence lengths of an eval sweep) share blocks.
pub fn size_class(bytes: usize) -> usize {
    let bytes = bytes.max(1).next_multiple_of(256);
    if bytes <= 1 << 16 {
        return bytes;
    }
    let step = (bytes.next_power_of_two() / 32).max(256);
    bytes.next_multiple_of(step)
}

#[derive(Default)]
pub struct Pool {
    free: HashMap<usize, Vec<DevicePtr>>,
    in_use: usize,
    peak: usize,
    cached: usize,
}

impl Pool {
    /// A cached block of exactly `bytes` (a size class), if one is free.
    pub fn take(&mut self, bytes: usize) -> Option<DevicePtr> {
        let ptr = self.free.get_mut(&bytes)?.pop()?;
        self.cached -= bytes;
        Some(ptr)
    }

    /// Counts a block of `bytes` as in use (taken from the cache or newly allocated).
    pub fn note_alloc(&mut self, bytes: usize) {
        self.in_use += bytes;
        self.peak = self.peak.max(self.in_use);
    }

    /// Takes back a block that is no longer in use.
    pub fn give_back(&mut self, ptr: DevicePtr, bytes: usize) {
        self.in_use -= bytes;
        self.cached += bytes;
        self.free.entry(bytes).or_default().push(ptr);
    }

    /// Empties the cache, returning its blocks with their sizes for the driver to free.
    pub fn drain(&mut self) -> Vec<(DevicePtr, usize)> {
        self.cached = 0;
        self.free
            .drain()
            .flat_map(|(bytes, ptrs)| ptrs.into_iter().map(move |p| (p, bytes)))
            .collect()
    }

    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            in_use: self.in_use,
            peak: self.peak,
            cached: self.cached,
        }
    }

    pub fn reset_peak(&mut self) {
        self.peak = self.in_use;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_by_at_most_a_sixteenth() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(4), 256);
        assert_eq!(size_class(257), 512);
        assert_eq!(size_class(65536), 65536);
        for bytes in [65537, 100_000, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && c.is_multiple_of(256), "{bytes} -> {c}");
            assert!((c - bytes) * 16 <= bytes, "{bytes} -> {c} wastes too much");
        }
        assert_eq!(size_class(1_000_000), size_class(1_000_001));
    }

    #[test]
    fn blocks_are_reused_by_size_class_and_counted() {
        let mut p = Pool::default();
        assert_eq!(p.take(512), None);
        p.note_alloc(512);
        p.note_alloc(1024);
        p.give_back(0x1000, 512);
        assert_eq!(
            p.stats(),
            MemoryStats {
                in_use: 1024,
                peak: 1536,
                cached: 512
            }
        );
        assert_eq!(p.take(1024), None);
        assert_eq!(p.take(512), Some(0x1000));
        p.note_alloc(512);
        p.give_back(0x1000, 512);
        p.reset_peak();
        assert_eq!(p.stats().peak, 1024);
        assert_eq!(p.drain(), vec![(0x1000, 512)]);
        assert_eq!(p.stats().cached, 0);
    }
}
