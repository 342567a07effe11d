//! What a kernel launch needs wherever it runs: the geometry and the packed argument list. The
//! CUDA backend passes [`KernelArgs::params`] to cuLaunchKernel (cudarc's `launch_kernel`) with
//! device addresses; the emulation passes the very same list, with host addresses, to the g++-built
//! launcher. Building a [`Launch`] is therefore shared code, tested on every run.

use std::ffi::c_void;

/// Grid and block dimensions and dynamic shared memory, field for field cudarc's `LaunchConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid_dim: (u32, u32, u32),
    pub block_dim: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

/// A device address (`CUdeviceptr`); in the emulation, a host address.
pub type DevicePtr = u64;

/// The address of a host slice's first element, for emulated launches.
pub fn host_ptr<T>(s: &[T]) -> DevicePtr {
    s.as_ptr() as DevicePtr
}

/// The address of a mutable host slice's first element, for emulated launches.
pub fn host_ptr_mut<T>(s: &mut [T]) -> DevicePtr {
    s.as_mut_ptr() as DevicePtr
}

/// Kernel arguments by value, in parameter order. Each value sits in its own 8-byte cell
/// (little-endian, so a 4-byte value occupies the cell's first bytes); [`KernelArgs::params`]
/// gives one pointer per argument, which is what cuLaunchKernel's `kernelParams` expects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelArgs {
    cells: Vec<u64>,
    sizes: Vec<usize>,
}

impl KernelArgs {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, bits: u64, size: usize) -> Self {
        self.cells.push(bits);
        self.sizes.push(size);
        self
    }

    /// A pointer parameter (`const float*`, `float*`, ...).
    pub fn ptr(self, p: DevicePtr) -> Self {
        self.push(p, 8)
    }
    pub fn i32(self, v: i32) -> Self {
        self.push(v as u32 as u64, 4)
    }
    pub fn u32(self, v: u32) -> Self {
        self.push(v as u64, 4)
    }
    pub fn i64(self, v: i64) -> Self {
        self.push(v as u64, 8)
    }
    pub fn f32(self, v: f32) -> Self {
        self.push(v.to_bits() as u64, 4)
    }
    pub fn f64(self, v: f64) -> Self {
        self.push(v.to_bits(), 8)
    }

    /// Byte size of every argument, for checking against the kernel's parameter list.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// One pointer per argument value, valid while `self` lives and is not modified.
    pub fn params(&mut self) -> Vec<*mut c_void> {
        self.cells
            .iter_mut()
            .map(|c| c as *mut u64 as *mut c_void)
            .collect()
    }
}

/// One kernel launch: the entry point, its geometry and its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub kernel: &'static str,
    pub config: LaunchConfig,
    pub args: KernelArgs,
}

/// Blocks of `threads` threads covering `n` items with one item per thread, capped for grid-stride
/// loops.
pub(crate) fn grid_1d(n: usize, threads: u32, max_blocks: u32) -> LaunchConfig {
    let blocks = n.div_ceil(threads as usize).clamp(1, max_blocks as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `v` as a kernel's `int`, or an error naming what overflowed.
pub(crate) fn to_i32(kernel: &'static str, what: &str, v: usize) -> crate::Result<i32> {
    i32::try_from(v).map_err(|_| crate::Error::Unsupported {
        kernel,
        reason: format!("{what} = {v} does not fit the kernel's 32-bit int"),
    })
}

/// `v` as a kernel's `long long`, or an error naming what overflowed.
pub(crate) fn to_i64(kernel: &'static str, what: &str, v: usize) -> crate::Result<i64> {
    i64::try_from(v).map_err(|_| crate::Error::Unsupported {
        kernel,
        reason: format!("{what} = {v} does not fit the kernel's 64-bit index"),
    })
}
