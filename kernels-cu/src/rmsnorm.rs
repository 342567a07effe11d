//! Launches of cu/rmsnorm.cu: RMSNorm over the last dimension of x (m, d), as `ssm::ops::norm`.

use crate::Result;
use crate::launch::{DevicePtr, KernelArgs, Launch, LaunchConfig, to_i32};
use crate::reduce::sum_rows_into;

const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 132 * 4;

fn blocks(m: usize) -> usize {
    m.clamp(1, MAX_BLOCKS)
}

fn config(m: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(m) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Floats of workspace the backward needs: one row of dw partials per block.
pub fn bwd_workspace_len(m: usize, d: usize) -> usize {
    blocks(m) * d
}

/// y (m, d) = x · rstd · w and rstd (m,) for the backward.
pub fn rmsnorm_fwd(
    x: DevicePtr,
    w: DevicePtr,
    y: DevicePtr,
    rstd: DevicePtr,
    m: usize,
    d: usize,
    eps: f32,
) -> Result<Launch> {
    const K: &str = "rmsnorm_fwd_f32";
    to_i32(K, "m * d", m * d)?;
    let args = KernelArgs::new()
        .ptr(x)
        .ptr(w)
        .ptr(y)
        .ptr(rstd)
        .i32(m as i32)
        .i32(d as i32)
        .f32(eps);
    Ok(Launch {
        kernel: K,
        config: config(m),
        args,
    })
}

/// Accumulates dx (m, d) and dw (d,); `workspace` holds `bwd_workspace_len(m, d)` floats.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(
    dy: DevicePtr,
    x: DevicePtr,
    w: DevicePtr,
    rstd: DevicePtr,
    dx: DevicePtr,
    dw: DevicePtr,
    workspace: DevicePtr,
    m: usize,
    d: usize,
) -> Result<Vec<Launch>> {
    const K: &str = "rmsnorm_bwd_f32";
    to_i32(K, "m * d", m * d)?;
    let args = KernelArgs::new()
        .ptr(dy)
        .ptr(x)
        .ptr(w)
        .ptr(rstd)
        .ptr(dx)
        .ptr(workspace)
        .i32(m as i32)
        .i32(d as i32);
    Ok(vec![
        Launch {
            kernel: K,
            config: config(m),
            args,
        },
        sum_rows_into(workspace, blocks(m), d, dw)?,
    ])
}
