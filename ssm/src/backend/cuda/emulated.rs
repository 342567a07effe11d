//! The emulated engine: "device" memory is host memory, kernels run through the CPU emulation of
//! `ssm-kernels` (blocks in turn, threads as fibers under a seeded random schedule) and matrix
//! products through the column-major reference of gemm.rs.

use std::alloc::{Layout, alloc, dealloc};
use std::sync::atomic::{AtomicU64, Ordering};

use ssm_kernels::emu::{self, Schedule};
use ssm_kernels::{DevicePtr, Launch};

use crate::error::{Error, Result};

/// Alignment of emulated allocations, as cudaMalloc guarantees at least this much.
const ALIGN: usize = 256;

/// Multiprocessors the emulated device reports: few, so that the small shapes of the tests take
/// the launch paths meant for a GPU that one batch does not fill (the split scan).
pub const SM_COUNT: usize = 2;

#[derive(Default)]
pub struct Emulated {
    launches: AtomicU64,
}

impl Emulated {
    /// `bytes` of host memory, or an error when the host has none to give, as cuMemAlloc
    /// reports an exhausted GPU.
    pub fn malloc(&self, bytes: usize) -> Result<DevicePtr> {
        let out_of_memory = || Error::Device {
            device: "cuda-emu".into(),
            reason: format!("out of memory allocating {bytes} bytes"),
        };
        let layout = Layout::from_size_align(bytes, ALIGN).map_err(|_| out_of_memory())?;
        // SAFETY: size classes are never zero bytes.
        let p = unsafe { alloc(layout) };
        if p.is_null() {
            return Err(out_of_memory());
        }
        Ok(p as DevicePtr)
    }

    pub fn free(&self, ptr: DevicePtr, bytes: usize) {
        let layout = Layout::from_size_align(bytes, ALIGN).expect("as in malloc");
        // SAFETY: `ptr` came from `malloc` with this size.
        unsafe { dealloc(ptr as *mut u8, layout) };
    }

    /// Runs the launch now; each launch draws its schedule from a counter, so a run is
    /// reproducible while different launches see different interleavings.
    pub fn launch(&self, launch: &Launch) -> Result<()> {
        let seed = self.launches.fetch_add(1, Ordering::Relaxed);
        // SAFETY: callers plan launches over live buffers of this engine (host memory).
        unsafe { emu::launch(launch, Schedule::Random(seed)) }.map_err(|e| Error::Device {
            device: "cuda-emu".into(),
            reason: e.to_string(),
        })
    }
}

/// Copies `len` floats between host addresses.
///
/// # Safety
/// Both ranges must be valid and must not overlap.
pub unsafe fn copy(src: DevicePtr, dst: DevicePtr, len: usize) {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::copy_nonoverlapping(src as *const f32, dst as *mut f32, len) };
}
