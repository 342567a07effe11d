//! Launches kernels on the CPU through the emulation that build.rs compiles from cu/ (see
//! emu/cuda_emu.h): blocks one at a time, the threads of a block as fibers under a seeded random
//! schedule, or as OS threads for ThreadSanitizer.

use std::ffi::{c_char, c_int, c_void};

use crate::launch::Launch;
use crate::{Error, Result};

/// How the threads of a block interleave between synchronization points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Random order, drawn from this seed (and the block index).
    Random(u64),
    /// Always the lowest runnable thread index first.
    InOrder,
    /// One OS thread per CUDA thread, for ThreadSanitizer (build with `SSM_EMU_TSAN=1`): real
    /// concurrency, so that TSan sees every unsynchronized pair of accesses.
    Threads,
}

/// The emulation's launch configuration (`emu::LaunchConfig` in emu/cuda_emu.h).
#[repr(C)]
struct RawConfig {
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    schedule: i32,
    seed: u64,
}

type LaunchFn =
    unsafe extern "C" fn(*const RawConfig, *const *mut c_void, *mut c_char, usize) -> c_int;
type SignatureFn = unsafe extern "C" fn(*mut usize, c_int) -> c_int;

struct EmulatedKernel {
    name: &'static str,
    launch: LaunchFn,
    signature: SignatureFn,
}

include!(concat!(env!("OUT_DIR"), "/emulated.rs"));

/// Names of every kernel the emulation can run.
pub fn kernels() -> impl Iterator<Item = &'static str> {
    EMULATED.iter().map(|k| k.name)
}

/// The byte sizes of a kernel's parameters, in order.
pub fn signature(kernel: &str) -> Result<Vec<usize>> {
    let k = find(kernel)?;
    let mut sizes = [0usize; 64];
    // SAFETY: the callee writes at most `cap` sizes into the buffer.
    let n = unsafe { (k.signature)(sizes.as_mut_ptr(), sizes.len() as c_int) } as usize;
    Ok(sizes[..n.min(sizes.len())].to_vec())
}

fn find(kernel: &str) -> Result<&'static EmulatedKernel> {
    EMULATED
        .iter()
        .find(|k| k.name == kernel)
        .ok_or_else(|| Error::Launch {
            kernel: kernel.to_string(),
            message: "no such kernel in the emulation".into(),
        })
}

/// Runs `launch` on the CPU. Launches are serialized (shared memory is a global of the
/// emulation), so tests may call this from several threads.
///
/// # Safety
/// Every pointer argument must be a host address valid for everything the kernel reads and
/// writes through it, as a device pointer would have to be for a real launch.
pub unsafe fn launch(launch: &Launch, schedule: Schedule) -> Result<()> {
    let k = find(launch.kernel)?;
    let expected = signature(launch.kernel)?;
    if expected != launch.args.sizes() {
        return Err(Error::Launch {
            kernel: launch.kernel.to_string(),
            message: format!(
                "argument sizes {:?} do not match the kernel's parameters {expected:?}",
                launch.args.sizes()
            ),
        });
    }
    let (mode, seed) = match schedule {
        Schedule::Random(seed) => (0, seed),
        Schedule::InOrder => (1, 0),
        Schedule::Threads => (2, 0),
    };
    let c = launch.config;
    let raw = RawConfig {
        grid: [c.grid_dim.0, c.grid_dim.1, c.grid_dim.2],
        block: [c.block_dim.0, c.block_dim.1, c.block_dim.2],
        shared_bytes: c.shared_mem_bytes,
        schedule: mode,
        seed,
    };
    let mut args = launch.args.clone();
    let params = args.params();
    let mut err = [0u8; 1024];
    // SAFETY: `raw` and `params` outlive the call; the argument count and sizes match the
    // kernel's parameters (checked above); the caller vouches for the pointers inside them.
    let rc = unsafe { (k.launch)(&raw, params.as_ptr(), err.as_mut_ptr().cast(), err.len()) };
    if rc == 0 {
        return Ok(());
    }
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    Err(Error::Launch {
        kernel: launch.kernel.to_string(),
        message: String::from_utf8_lossy(&err[..end]).into_owned(),
    })
}
