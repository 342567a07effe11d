//! Launches of cu/elementwise.cu: SiLU, softplus, the gate `x * silu(z)` and `y += x`, forward and
//! backward, over `n` contiguous elements (any layout). Backward launches add into their outputs.

use crate::Result;
use crate::launch::{DevicePtr, KernelArgs, Launch, grid_1d, to_i32};

const THREADS: u32 = 256;
/// Enough blocks to fill an H200 (132 SMs) several times over; larger inputs use grid-stride loops.
const MAX_BLOCKS: u32 = 132 * 16;

fn launch(kernel: &'static str, n: usize, ptrs: &[DevicePtr]) -> Result<Launch> {
    let args = ptrs
        .iter()
        .fold(KernelArgs::new(), |a, &p| a.ptr(p))
        .i32(to_i32(kernel, "n", n)?);
    Ok(Launch {
        kernel,
        config: grid_1d(n, THREADS, MAX_BLOCKS),
        args,
    })
}

/// y (n) = silu(x (n)).
pub fn silu_fwd(x: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("silu_fwd_f32", n, &[x, y])
}

/// dx (n) += dy · silu'(x).
pub fn silu_bwd(x: DevicePtr, dy: DevicePtr, dx: DevicePtr, n: usize) -> Result<Launch> {
    launch("silu_bwd_f32", n, &[x, dy, dx])
}

/// y (n) = softplus(x (n)), x itself above 20.
pub fn softplus_fwd(x: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("softplus_fwd_f32", n, &[x, y])
}

/// dx (n) += dy · sigmoid(x).
pub fn softplus_bwd(x: DevicePtr, dy: DevicePtr, dx: DevicePtr, n: usize) -> Result<Launch> {
    launch("softplus_bwd_f32", n, &[x, dy, dx])
}

/// y (n) = x · silu(z).
pub fn gate_fwd(x: DevicePtr, z: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("gate_fwd_f32", n, &[x, z, y])
}

/// dx (n) += dy · silu(z); dz (n) += dy · x · silu'(z).
pub fn gate_bwd(
    x: DevicePtr,
    z: DevicePtr,
    dy: DevicePtr,
    dx: DevicePtr,
    dz: DevicePtr,
    n: usize,
) -> Result<Launch> {
    launch("gate_bwd_f32", n, &[x, z, dy, dx, dz])
}

/// y (n) += x (n).
pub fn add_into(x: DevicePtr, y: DevicePtr, n: usize) -> Result<Launch> {
    launch("add_into_f32", n, &[x, y])
}
